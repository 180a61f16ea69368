"""CNN on random images with random labels: pure throughput, convergence not applicable."""
from __future__ import annotations

import numpy as np

from bench.params import Param
from bench.workloads.common import (Data, classifier_head, conv_bn, dense_block, model_augmentation, model_options,
                                    spatial_dropout)

NAME = "synthetic_cnn"
DESCRIPTION = "4-conv CNN on synthetic 32x32x3 images with random labels (throughput only)"
KIND = "image"
ARCH = "cnn"
DEFAULT_TARGET = None
ACCURACY_MEANINGFUL = False
# width: filters of the first conv (then 2x, 4x, 4x); FLOPs per image grow as width^2 while the
# bytes per image fed to the device stay 12 KiB: a wider model keeps a GPU busy instead of waiting
# for the host (width 32: ~76 MFLOP per training image; 256: ~4.6 GFLOP).
MODEL = {"width": Param(32, low=4, high=1024, kind=int)}


def load(seed: int, max_train_samples: int | None = None, **model) -> Data:
    o = model_options(MODEL, model, f"{NAME}.model")
    n = max_train_samples or 4096
    rng = np.random.default_rng(seed)
    x = rng.random((n + 512, 32, 32, 3), dtype=np.float32)
    y = rng.integers(0, 10, size=n + 512).astype("int32")
    return Data(x[:n], y[:n], x[n:], y[n:], num_classes=10, kind=KIND, model=o)


def build(recipe, data: Data):
    import keras

    w = (data.model or {}).get("width", MODEL["width"].default)
    inputs = keras.Input(shape=data.input_shape, name="image")
    x = model_augmentation(inputs, KIND, recipe)
    for i, filters in enumerate((w, 2 * w, 4 * w, 4 * w)):
        x = spatial_dropout(conv_bn(x, filters, recipe, f"c{i}", strides=2 if i else 1), recipe, f"c{i}")
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    x = dense_block(x, 256, recipe, name="fc")
    return keras.Model(inputs, classifier_head(x, data.num_classes, recipe), name=NAME)
