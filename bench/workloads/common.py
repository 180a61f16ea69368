"""Building blocks shared by workloads: data container, regularized blocks, augmentation."""
from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass
class Data:
    """Arrays in NumPy. x in float32 (scaled), y as int32 class indices."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    num_classes: int
    kind: str  # "tabular" | "image"

    @property
    def input_shape(self) -> tuple:
        return tuple(self.x_train.shape[1:])


def subsample(x: np.ndarray, y: np.ndarray, limit: int | None, seed: int):
    """A fixed random subset of at most `limit` rows (same seed -> same rows)."""
    if limit is None or len(x) <= limit:
        return x, y
    idx = np.random.default_rng(seed).permutation(len(x))[:limit]
    return x[idx], y[idx]


def dense_block(x, units: int, recipe, name: str):
    """Dense -> [BatchNorm] -> ReLU -> [Dropout], penalties on the kernel."""
    import keras

    x = keras.layers.Dense(units, use_bias=not recipe.batch_norm,
                           kernel_regularizer=recipe.kernel_regularizer(), name=f"{name}_dense")(x)
    if recipe.batch_norm:
        x = keras.layers.BatchNormalization(name=f"{name}_bn")(x)
    x = keras.layers.Activation("relu", name=f"{name}_relu")(x)
    if recipe.dropout_rate:
        x = keras.layers.Dropout(recipe.dropout_rate, name=f"{name}_dropout")(x)
    return x


def conv_bn(x, filters: int, recipe, name: str, strides: int = 1, kernel: int = 3, relu: bool = True):
    """Conv2D -> [BatchNorm] -> [ReLU], penalties on the kernel (no dropout: callers place it)."""
    import keras

    x = keras.layers.Conv2D(filters, kernel, strides=strides, padding="same", use_bias=not recipe.batch_norm,
                            kernel_regularizer=recipe.kernel_regularizer(), name=f"{name}_conv")(x)
    if recipe.batch_norm:
        x = keras.layers.BatchNormalization(name=f"{name}_bn")(x)
    if relu:
        x = keras.layers.Activation("relu", name=f"{name}_relu")(x)
    return x


def classifier_head(x, num_classes: int, recipe):
    """Logits Dense + softmax kept in float32 (numerically safe under mixed precision)."""
    import keras

    x = keras.layers.Dense(num_classes, kernel_regularizer=recipe.kernel_regularizer(), name="logits")(x)
    return keras.layers.Activation("softmax", dtype="float32", name="probs")(x)


def model_augmentation(x, kind: str, recipe):
    """In-model augmentation layers (active in training only)."""
    import keras

    if recipe.augmentation != "model":
        return x
    if kind == "tabular":
        return keras.layers.GaussianNoise(recipe.augment_strength, name="aug_noise")(x)
    x = keras.layers.RandomFlip("horizontal", name="aug_flip")(x)
    s = recipe.augment_strength
    return keras.layers.RandomTranslation(s, s, fill_mode="reflect", name="aug_translate")(x)


def pipeline_augment(x: np.ndarray, kind: str, strength: float, rng: np.random.Generator) -> np.ndarray:
    """Input-side augmentation of one batch in NumPy, matching model_augmentation's transforms."""
    if kind == "tabular":
        return (x + rng.normal(0.0, strength, size=x.shape)).astype(x.dtype, copy=False)
    out = x.copy()
    flip = rng.random(len(x)) < 0.5
    out[flip] = out[flip, :, ::-1]
    h, w = x.shape[1:3]
    max_dy, max_dx = max(1, int(round(strength * h))), max(1, int(round(strength * w)))
    for i in range(len(out)):  # integer shifts with reflection, like RandomTranslation(fill_mode=reflect)
        dy, dx = rng.integers(-max_dy, max_dy + 1), rng.integers(-max_dx, max_dx + 1)
        padded = np.pad(out[i], ((abs(dy),) * 2, (abs(dx),) * 2, (0, 0)), mode="reflect")
        out[i] = padded[abs(dy) - dy: abs(dy) - dy + h, abs(dx) - dx: abs(dx) - dx + w]
    return out
