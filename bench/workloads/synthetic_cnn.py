"""CNN on random images with random labels: pure throughput, convergence not applicable."""
from __future__ import annotations

import numpy as np

from bench.workloads.common import Data, classifier_head, conv_bn, dense_block, model_augmentation, spatial_dropout

NAME = "synthetic_cnn"
DESCRIPTION = "4-conv CNN on synthetic 32x32x3 images with random labels (throughput only)"
KIND = "image"
ARCH = "cnn"
DEFAULT_TARGET = None
ACCURACY_MEANINGFUL = False


def load(seed: int, max_train_samples: int | None = None) -> Data:
    n = max_train_samples or 4096
    rng = np.random.default_rng(seed)
    x = rng.random((n + 512, 32, 32, 3), dtype=np.float32)
    y = rng.integers(0, 10, size=n + 512).astype("int32")
    return Data(x[:n], y[:n], x[n:], y[n:], num_classes=10, kind=KIND)


def build(recipe, data: Data):
    import keras

    inputs = keras.Input(shape=data.input_shape, name="image")
    x = model_augmentation(inputs, KIND, recipe)
    for i, filters in enumerate((32, 64, 128, 128)):
        x = spatial_dropout(conv_bn(x, filters, recipe, f"c{i}", strides=2 if i else 1), recipe, f"c{i}")
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    x = dense_block(x, 256, recipe, name="fc")
    return keras.Model(inputs, classifier_head(x, data.num_classes, recipe), name=NAME)
