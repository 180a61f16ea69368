"""CNN on random images with random labels: pure throughput, convergence not applicable. The images
are uint8, cast and scaled to [0, 1] by the model on the device (common.image_input)."""
from __future__ import annotations

import numpy as np

from bench.params import Param
from bench.workloads.common import (Data, classifier_head, conv_bn, dense_block, image_input, model_augmentation,
                                    model_options, spatial_dropout)

NAME = "synthetic_cnn"
DESCRIPTION = "4-conv CNN on synthetic 32x32x3 images with random labels (throughput only)"
KIND = "image"
ARCH = "cnn"
DEFAULT_TARGET = None
ACCURACY_MEANINGFUL = False
# width: filters of the first conv (then 2x, 4x, 4x); FLOPs per image grow as width^2 while the
# bytes per image fed to the device stay 3 KiB (uint8, cast in the model): a wider model keeps a
# GPU busy instead of waiting for the host (width 32: ~76 MFLOP per training image; 256: ~4.6 GFLOP).
MODEL = {"width": Param(32, low=4, high=1024, kind=int)}


def load(seed: int, max_train_samples: int | None = None, **model) -> Data:
    o = model_options(MODEL, model, f"{NAME}.model")
    n = max_train_samples or 4096
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, size=(n + 512, 32, 32, 3), dtype=np.uint8)  # the model scales them to [0, 1]
    y = rng.integers(0, 10, size=n + 512).astype("int32")
    return Data(x[:n], y[:n], x[n:], y[n:], num_classes=10, kind=KIND, model=o)


def build(recipe, data: Data):
    import keras

    w = (data.model or {}).get("width", MODEL["width"].default)
    inputs, x = image_input(data)
    x = model_augmentation(x, KIND, recipe)
    for i, filters in enumerate((w, 2 * w, 4 * w, 4 * w)):
        x = spatial_dropout(conv_bn(x, filters, recipe, f"c{i}", strides=2 if i else 1), recipe, f"c{i}")
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    x = dense_block(x, 256, recipe, name="fc")
    return keras.Model(inputs, classifier_head(x, data.num_classes, recipe), name=NAME)
