"""ResNet-50 (He et al. 2016) as keras.applications builds it, on synthetic images: throughput only.

Built here, no weight download: the v1 bottleneck (stride on the first 1x1 convolution of a
stage, as keras.applications.ResNet50), 7x7/2 stem with 3x3/2 max-pool, [3, 4, 6, 3] blocks of
widths 64-128-256-512 (x4 out), global average pooling, a `classes`-way Dense head (1000 by
default: 25,557,032 trainable parameters with batch norm, ~3.9 G multiply-adds per 224x224 image).
`batch_norm` switches BatchNormalization on; without it every convolution is a plain conv with a
bias. Weight penalties and max-norm on every conv and Dense kernel; spatial dropout and
stochastic depth on every residual branch (before the add); `dropout` before the head.

Data: uniform random images and labels (convergence not applicable, as synthetic_cnn), in uint8
(38.5 MB per batch of 256 at 224x224 instead of float32's 154 MB), cast and scaled to [0, 1] by
the model's first layer on the device (common.image_input).
`model: {image_size, classes, depth, width}`: image_size 224 by default (>= 32; smaller for CPU
tests), depth 50 ([3, 4, 6, 3]) or the shallower bottleneck stacks 26 ([2, 2, 2, 2]) and
14 ([1, 1, 1, 1]) for CPU tests, width the stem/first-stage width (64).
"""
from __future__ import annotations

import numpy as np

from bench.params import Param
from bench.workloads.common import (Data, classifier_head, conv_bn, drop_path, image_input, model_augmentation,
                                    model_options, spatial_dropout)

NAME = "resnet50"
DESCRIPTION = "ResNet-50 (keras.applications architecture) on synthetic 224x224x3 images (throughput only)"
KIND = "image"
ARCH = "resnet"
DEFAULT_TARGET = None
ACCURACY_MEANINGFUL = False
MODEL = {
    "image_size": Param(224, low=32, high=1024, kind=int),
    "classes": Param(1000, low=2, high=100_000, kind=int),
    "depth": Param(50, choices=(14, 26, 50), kind=int),
    "width": Param(64, low=1, high=1024, kind=int),
}
BLOCKS = {14: (1, 1, 1, 1), 26: (2, 2, 2, 2), 50: (3, 4, 6, 3)}
TRAIN_SAMPLES, VAL_SAMPLES = 1024, 256


def options(model: dict | None) -> dict:
    return model_options(MODEL, model, f"{NAME}.model")


def load(seed: int, max_train_samples: int | None = None, **model) -> Data:
    o = options(model)
    n, s = max_train_samples or TRAIN_SAMPLES, o["image_size"]
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, size=(n + VAL_SAMPLES, s, s, 3), dtype=np.uint8)
    y = rng.integers(0, o["classes"], size=n + VAL_SAMPLES).astype("int32")
    return Data(x[:n], y[:n], x[n:], y[n:], num_classes=o["classes"], kind=KIND, model=o)


def _bottleneck(x, filters: int, strides: int, project: bool, recipe, index: int, count: int, name: str):
    import keras

    shortcut = x
    if project:
        shortcut = conv_bn(x, 4 * filters, recipe, f"{name}_0", strides=strides, kernel=1, relu=False)
    y = conv_bn(x, filters, recipe, f"{name}_1", strides=strides, kernel=1)
    y = conv_bn(y, filters, recipe, f"{name}_2", kernel=3)
    y = conv_bn(y, 4 * filters, recipe, f"{name}_3", kernel=1, relu=False)
    y = drop_path(spatial_dropout(y, recipe, name), recipe, index, count, name)
    x = keras.layers.Add(name=f"{name}_add")([shortcut, y])
    return keras.layers.Activation("relu", name=f"{name}_out")(x)


def build(recipe, data: Data):
    import keras

    o = options(data.model)
    inputs, x = image_input(data)
    x = model_augmentation(x, KIND, recipe)
    x = keras.layers.ZeroPadding2D(3, name="conv1_pad")(x)
    x = conv_bn(x, o["width"], recipe, "conv1", strides=2, kernel=7, padding="valid")
    x = keras.layers.ZeroPadding2D(1, name="pool1_pad")(x)
    x = keras.layers.MaxPooling2D(3, strides=2, name="pool1_pool")(x)
    blocks = BLOCKS[o["depth"]]
    index, count = 0, sum(blocks)
    for stage, n in enumerate(blocks):
        filters = o["width"] * 2 ** stage
        for b in range(n):
            strides = 2 if stage > 0 and b == 0 else 1
            x = _bottleneck(x, filters, strides, b == 0, recipe, index, count, f"conv{stage + 2}_block{b + 1}")
            index += 1
    x = keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
    if recipe.dropout_rate:
        x = keras.layers.Dropout(recipe.dropout_rate, name="avg_pool_dropout")(x)
    return keras.Model(inputs, classifier_head(x, data.num_classes, recipe), name=NAME)
