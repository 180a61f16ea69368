"""ResNet-20 (He et al. 2016, CIFAR variant) on CIFAR-10.

The data is the CIFAR-10 *binary* format (cifar-10-batches-bin/{data_batch_1..5,test_batch}.bin),
staged and verified by bench/data.py (`regbench data fetch cifar10_resnet20`) in
$REGBENCH_DATA_DIR or $KERAS_HOME/datasets/; a trial only reads it.
"""
from __future__ import annotations

from bench.workloads.common import (Data, classifier_head, conv_bn, drop_path, model_augmentation, spatial_dropout,
                                    subsample)

NAME = "cifar10_resnet20"
DESCRIPTION = "ResNet-20 on CIFAR-10 (32x32x3, 10 classes)"
KIND = "image"
ARCH = "resnet"
DATASET = "cifar10"
DEFAULT_TARGET = 0.70
ACCURACY_MEANINGFUL = True


def load(seed: int, max_train_samples: int | None = None) -> Data:
    from bench.dataset_formats import load_cifar10

    (x_tr, y_tr), (x_va, y_va) = load_cifar10()
    x_tr, y_tr = subsample(x_tr, y_tr, max_train_samples, seed)
    prep = lambda x: x.astype("float32") / 255.0  # noqa: E731
    return Data(prep(x_tr), y_tr, prep(x_va), y_va, num_classes=10, kind=KIND)


def build(recipe, data: Data):
    import keras

    inputs = keras.Input(shape=data.input_shape, name="image")
    x = model_augmentation(inputs, KIND, recipe)
    x = conv_bn(x, 16, recipe, "stem")
    blocks = 9
    for stage, filters in enumerate((16, 32, 64)):
        for block in range(3):
            strides = 2 if stage > 0 and block == 0 else 1
            name = f"s{stage}b{block}"
            y = conv_bn(x, filters, recipe, f"{name}a", strides=strides)
            y = conv_bn(y, filters, recipe, f"{name}b", relu=False)
            y = drop_path(spatial_dropout(y, recipe, name), recipe, 3 * stage + block, blocks, name)
            if strides != 1 or x.shape[-1] != filters:
                x = conv_bn(x, filters, recipe, f"{name}proj", strides=strides, kernel=1, relu=False)
            x = keras.layers.Activation("relu", name=f"{name}_out")(keras.layers.Add(name=f"{name}_add")([x, y]))
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    if recipe.dropout_rate:
        x = keras.layers.Dropout(recipe.dropout_rate, name="gap_dropout")(x)
    return keras.Model(inputs, classifier_head(x, data.num_classes, recipe), name=NAME)
