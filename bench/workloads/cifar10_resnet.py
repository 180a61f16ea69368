"""ResNet-20 (He et al. 2016, CIFAR variant) on CIFAR-10.

keras.datasets.cifar10 verifies a hash of the whole archive, so the data is read here from the
CIFAR-10 *binary* format (cifar-10-batches-bin/{data_batch_1..5,test_batch}.bin: one label byte +
3072 channel-major pixel bytes per record), looked up in $REGBENCH_DATA_DIR, then
$KERAS_HOME/datasets/. Without those files it falls back to keras.datasets.cifar10 (download).
"""
from __future__ import annotations

import os
import pathlib

import numpy as np

from bench.workloads.common import Data, classifier_head, conv_bn, model_augmentation, subsample

NAME = "cifar10_resnet20"
DESCRIPTION = "ResNet-20 on CIFAR-10 (32x32x3, 10 classes)"
KIND = "image"
DEFAULT_TARGET = 0.70
CONVERGENCE = True
RECORD_BYTES = 1 + 32 * 32 * 3


def _bin_dir() -> pathlib.Path | None:
    from keras.src.backend.config import keras_home

    for base in (os.environ.get("REGBENCH_DATA_DIR"), os.path.join(keras_home(), "datasets")):
        if base and (pathlib.Path(base) / "cifar-10-batches-bin" / "test_batch.bin").exists():
            return pathlib.Path(base) / "cifar-10-batches-bin"
    return None


def read_bin(path: pathlib.Path) -> tuple[np.ndarray, np.ndarray]:
    raw = np.fromfile(path, dtype=np.uint8)
    if raw.size % RECORD_BYTES:
        raise ValueError(f"{path}: size {raw.size} is not a multiple of the {RECORD_BYTES}-byte CIFAR-10 record")
    rec = raw.reshape(-1, RECORD_BYTES)
    return rec[:, 1:].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), rec[:, 0].astype("int32")


def load(seed: int, max_train_samples: int | None = None) -> Data:
    folder = _bin_dir()
    if folder is not None:
        parts = [read_bin(p) for p in sorted(folder.glob("data_batch_*.bin"))]
        x_tr, y_tr = np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
        x_va, y_va = read_bin(folder / "test_batch.bin")
    else:
        import keras

        (x_tr, y_tr), (x_va, y_va) = keras.datasets.cifar10.load_data()
        y_tr, y_va = y_tr.ravel().astype("int32"), y_va.ravel().astype("int32")
    x_tr, y_tr = subsample(x_tr, y_tr, max_train_samples, seed)
    prep = lambda x: x.astype("float32") / 255.0  # noqa: E731
    return Data(prep(x_tr), y_tr, prep(x_va), y_va, num_classes=10, kind=KIND)


def build(recipe, data: Data):
    import keras

    inputs = keras.Input(shape=data.input_shape, name="image")
    x = model_augmentation(inputs, KIND, recipe)
    x = conv_bn(x, 16, recipe, "stem")
    for stage, filters in enumerate((16, 32, 64)):
        for block in range(3):
            strides = 2 if stage > 0 and block == 0 else 1
            name = f"s{stage}b{block}"
            y = conv_bn(x, filters, recipe, f"{name}a", strides=strides)
            y = conv_bn(y, filters, recipe, f"{name}b", relu=False)
            if strides != 1 or x.shape[-1] != filters:
                x = conv_bn(x, filters, recipe, f"{name}proj", strides=strides, kernel=1, relu=False)
            x = keras.layers.Activation("relu", name=f"{name}_out")(keras.layers.Add(name=f"{name}_add")([x, y]))
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    if recipe.dropout_rate:
        x = keras.layers.Dropout(recipe.dropout_rate, name="gap_dropout")(x)
    return keras.Model(inputs, classifier_head(x, data.num_classes, recipe), name=NAME)
