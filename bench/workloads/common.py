"""Building blocks shared by workloads: data container, regularized blocks, augmentation, and the
batch-by-batch transforms of the input side (pipeline augmentation, mixup, cutmix; bench/inputs.py
applies them).

The names in `__all__` are public: a user's `build(recipe, data)` that wants full control of where
each regularizer goes uses them as the built-in workloads do (bench/workloads/README.md, "Helpers
for a recipe-aware build"). Each reads only the recipe fields it names and adds nothing the recipe
does not ask for, so the baseline (an empty recipe) is the plain model.
"""
from __future__ import annotations

import dataclasses

import numpy as np

__all__ = ["Data", "subsample", "image_input", "dense_block", "conv_bn", "classifier_head", "spatial_dropout",
           "drop_path", "model_augmentation", "augmentation_layers", "attention_output_max_norm"]


@dataclasses.dataclass
class Data:
    """Arrays in NumPy. x in float32 (scaled; int32 token ids for "tokens"; or uint8 images, which
    the model casts and scales to [0, 1] on the device: `image_input`), y as int32 class indices
    (one-hot float32 after Recipe.prepare_data when the loss needs soft labels)."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    num_classes: int
    kind: str  # "tabular" | "image" | "tokens"
    model: dict = dataclasses.field(default_factory=dict)  # the workload's resolved model options

    @property
    def input_shape(self) -> tuple:
        return tuple(self.x_train.shape[1:])


def model_options(spec: dict, given: dict | None, where: str, check=None) -> dict:
    """A workload's model options: `given` checked against its MODEL spec (bench.params.Param
    each), defaults filled; check(options) -> (field, problem) | None for rules across fields.
    Raises UserError naming `where`.field."""
    from bench.errors import UserError
    from bench.params import resolve

    options = resolve(spec, given, where)
    bad = check(options) if check else None
    if bad:
        raise UserError(f"{where}.{bad[0]}: {bad[1]}")
    return options


def subsample(x: np.ndarray, y: np.ndarray, limit: int | None, seed: int):
    """A fixed random subset of at most `limit` rows (same seed -> same rows)."""
    if limit is None or len(x) <= limit:
        return x, y
    idx = np.random.default_rng(seed).permutation(len(x))[:limit]
    return x[idx], y[idx]


def image_input(data: Data):
    """The model's image input and the float tensor its layers see. Images fed as uint8 (a quarter
    of float32's bytes over the host link, as a tuned training script feeds them) are cast and
    scaled to [0, 1] by the model's first layer (`image_rescale`, in the policy's compute dtype, as
    the first convolution cast float images before), on the device inside the compiled step; float
    images pass as they are. Returns (keras.Input, tensor)."""
    import keras

    inputs = keras.Input(shape=data.input_shape, dtype=data.x_train.dtype.name, name="image")
    if data.x_train.dtype != np.uint8:
        return inputs, inputs
    return inputs, _image_rescale_layer()(name="image_rescale")(inputs)


def _image_rescale_layer():
    """uint8 -> compute dtype, scaled by 1/255. A plain layer, not keras.layers.Rescaling: that is a
    TFDataLayer, which asks TensorFlow whether it runs in a tf.data graph wherever TensorFlow is in
    sys.modules, and the GPU machines run Keras on JAX or torch without TensorFlow."""
    import keras

    class ImageRescale(keras.layers.Layer):
        def call(self, x):
            return keras.ops.cast(x, self.compute_dtype) * keras.ops.cast(1.0 / 255, self.compute_dtype)

        def compute_output_shape(self, input_shape):
            return input_shape

    return ImageRescale


def dense_block(x, units: int, recipe, name: str):
    """A hidden Dense block on tensor x: Dense(units) -> [BatchNormalization] -> ReLU -> [Dropout].

    recipe.kernel_regularizer() (l1/l2) and recipe.kernel_constraint() (max_norm) go on the
    kernel; with recipe.batch_norm the Dense has no bias and BatchNormalization comes before the
    ReLU; recipe.dropout_rate adds Dropout after it. Layers are named f"{name}_dense", "_bn",
    "_relu", "_dropout". Returns the block's output tensor."""
    import keras

    x = keras.layers.Dense(units, use_bias=not recipe.batch_norm, kernel_regularizer=recipe.kernel_regularizer(),
                           kernel_constraint=recipe.kernel_constraint(), name=f"{name}_dense")(x)
    if recipe.batch_norm:
        x = keras.layers.BatchNormalization(name=f"{name}_bn")(x)
    x = keras.layers.Activation("relu", name=f"{name}_relu")(x)
    if recipe.dropout_rate:
        x = keras.layers.Dropout(recipe.dropout_rate, name=f"{name}_dropout")(x)
    return x


def conv_bn(x, filters: int, recipe, name: str, strides: int = 1, kernel: int = 3, relu: bool = True,
            padding: str = "same"):
    """A Conv2D block on tensor x: Conv2D -> [BatchNormalization] -> [ReLU] (relu=False: no
    activation, as before a residual add).

    Penalty and max-norm (over the kernel's spatial and input axes) on the kernel; bias only
    without BatchNorm. No dropout: callers place it (spatial_dropout after the block, Dropout after
    pooling). Layers are named f"{name}_conv", "_bn", "_relu". Returns the output tensor."""
    import keras

    x = keras.layers.Conv2D(filters, kernel, strides=strides, padding=padding, use_bias=not recipe.batch_norm,
                            kernel_regularizer=recipe.kernel_regularizer(),
                            kernel_constraint=recipe.kernel_constraint(axis=[0, 1, 2]), name=f"{name}_conv")(x)
    if recipe.batch_norm:
        x = keras.layers.BatchNormalization(name=f"{name}_bn")(x)
    if relu:
        x = keras.layers.Activation("relu", name=f"{name}_relu")(x)
    return x


def classifier_head(x, num_classes: int, recipe):
    """The output layer on tensor x: Dense(num_classes) logits with the recipe's penalty and
    max-norm (never dropout or BatchNorm), then softmax kept in float32 (numerically safe under
    mixed precision). Layers "logits" and "probs"; returns the class probabilities."""
    import keras

    x = keras.layers.Dense(num_classes, kernel_regularizer=recipe.kernel_regularizer(),
                           kernel_constraint=recipe.kernel_constraint(), name="logits")(x)
    return keras.layers.Activation("softmax", dtype="float32", name="probs")(x)


def spatial_dropout(x, recipe, name: str):
    """x through SpatialDropout2D (drops whole feature maps) at recipe.spatial_dropout_rate, named
    f"{name}_spatial_dropout"; x itself when the rate is 0."""
    if not recipe.spatial_dropout_rate:
        return x
    import keras

    return keras.layers.SpatialDropout2D(recipe.spatial_dropout_rate, name=f"{name}_spatial_dropout")(x)


def drop_path(branch, recipe, index: int, count: int, name: str):
    """Stochastic depth on a residual branch (before the add): per sample, the whole branch is zeroed
    with probability recipe.drop_path_rate(index, count) and kept branches are scaled by 1/(1-p) -
    a Keras Dropout whose mask has shape (batch, 1, ..., 1)."""
    rate = recipe.drop_path_rate(index, count)
    if not rate:
        return branch
    import keras

    noise_shape = (None,) + (1,) * (len(branch.shape) - 1)
    return keras.layers.Dropout(rate, noise_shape=noise_shape, name=f"{name}_drop_path")(branch)


def model_augmentation(x, kind: str, recipe):
    """x through the in-model augmentation layers of `augmentation_layers` (none: x as is)."""
    for layer in augmentation_layers(kind, recipe):
        x = layer(x)
    return x


def augmentation_layers(kind: str, recipe) -> list:
    """The in-model augmentation layers (active in training only) the recipe asks for, in order.

    where=model: GaussianNoise (tabular) or RandomShiftFlip (images), written with keras.ops and
    compiled with the training step on every backend. where=model_keras: Keras' RandomFlip +
    RandomTranslation, which have supports_jit=False: Keras then compiles nothing (on JAX the
    whole step runs op by op), recorded in timing.jit_disabled_by."""
    import keras

    if recipe.augmentation not in ("model", "model_keras"):
        return []
    if kind == "tabular":
        return [keras.layers.GaussianNoise(recipe.augment_strength, name="aug_noise")]
    s = recipe.augment_strength
    if recipe.augmentation == "model":
        return [random_shift_flip_layer()(s, name="aug_shift_flip")]
    return [keras.layers.RandomFlip("horizontal", name="aug_flip"),
            keras.layers.RandomTranslation(s, s, fill_mode="reflect", name="aug_translate")]


def attention_output_max_norm(attention, recipe) -> None:
    """MaxNorm on a built MultiHeadAttention's output projection over its input axes: that kernel is
    (heads, head_dim, width), so axes 0 and 1 (kernel_constraint= gives every kernel axis 0)."""
    if not recipe.max_norm:
        return
    for v in attention.weights:
        if v.path.endswith("attention_output/kernel"):
            v.constraint = recipe.kernel_constraint(axis=[0, 1])


_LAYERS: dict = {}


def random_shift_flip_layer():
    """The RandomShiftFlip Keras layer class (made on first use: this module imports no Keras)."""
    if "RandomShiftFlip" in _LAYERS:
        return _LAYERS["RandomShiftFlip"]
    import keras
    from keras import ops

    class RandomShiftFlip(keras.layers.Layer):
        """Per image, in training: a horizontal flip with probability 1/2, then an integer shift of
        up to `factor` of the height and width (at least 1 pixel), the uncovered border filled by
        reflection: reflect-pad by the largest shift, then crop a random window of the input size.
        The same transform as pipeline_augment. keras.ops and keras.random only, with static shapes,
        so XLA compiles it with the step (Keras' RandomTranslation: supports_jit=False)."""

        def __init__(self, factor: float, seed=None, **kwargs):
            super().__init__(**kwargs)
            self.factor = factor
            self.seed_generator = keras.random.SeedGenerator(seed)

        def compute_output_shape(self, input_shape):
            return input_shape

        def call(self, x, training=None):
            if not training:
                return x
            n = ops.shape(x)[0]
            h, w, c = x.shape[1], x.shape[2], x.shape[3]
            py, px = max(1, round(self.factor * h)), max(1, round(self.factor * w))
            flip = keras.random.uniform((n, 1, 1, 1), seed=self.seed_generator) < 0.5
            x = ops.where(flip, ops.flip(x, axis=2), x)
            padded = ops.pad(x, [[0, 0], [py, py], [px, px], [0, 0]], mode="reflect")
            dy = keras.random.randint((n,), 0, 2 * py + 1, seed=self.seed_generator)
            dx = keras.random.randint((n,), 0, 2 * px + 1, seed=self.seed_generator)
            rows = ops.expand_dims(dy, 1) + ops.expand_dims(ops.arange(h, dtype=dy.dtype), 0)  # (n, h)
            cols = ops.expand_dims(dx, 1) + ops.expand_dims(ops.arange(w, dtype=dx.dtype), 0)  # (n, w)
            out = ops.take_along_axis(padded, ops.broadcast_to(rows[:, :, None, None], (n, h, w + 2 * px, c)), axis=1)
            return ops.take_along_axis(out, ops.broadcast_to(cols[:, None, :, None], (n, h, w, c)), axis=2)

        def get_config(self):
            return {**super().get_config(), "factor": self.factor}

    _LAYERS["RandomShiftFlip"] = RandomShiftFlip
    return RandomShiftFlip


def pipeline_augment(x: np.ndarray, kind: str, strength: float, rng: np.random.Generator) -> np.ndarray:
    """Input-side augmentation of one batch in NumPy, the transforms of model_augmentation (where=model)."""
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


def mix_batch(x: np.ndarray, y: np.ndarray, mixup_alpha: float, cutmix_alpha: float,
              rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """mixup or CutMix of one batch of images x (N, H, W, C) and one-hot labels y (N, classes).

    One lam ~ Beta(alpha, alpha) and one permutation per batch, as in both papers' reference code.
    mixup: x = lam*x + (1-lam)*x[perm]. CutMix: a box of about (1-lam) of the area, centred
    uniformly and clipped at the border, is pasted from x[perm]; lam becomes the kept area exactly.
    Labels mix with the same lam. With both alphas set, each batch uses one of the two (p = 1/2).
    uint8 images stay uint8: mixup blends them in float32 and rounds to the nearest level (timm's
    FastCollateMixup does the same), within half a level (0.5/255) of the float blend.
    """
    use_cutmix = bool(cutmix_alpha) and (not mixup_alpha or rng.random() < 0.5)
    alpha = cutmix_alpha if use_cutmix else mixup_alpha
    lam = float(rng.beta(alpha, alpha))
    perm = rng.permutation(len(x))
    if use_cutmix:
        h, w = x.shape[1:3]
        cut = np.sqrt(1.0 - lam)
        cy, cx = int(rng.integers(h)), int(rng.integers(w))
        half_h, half_w = int(h * cut) // 2, int(w * cut) // 2
        y1, y2 = max(cy - half_h, 0), min(cy + half_h, h)
        x1, x2 = max(cx - half_w, 0), min(cx + half_w, w)
        x = x.copy()
        x[:, y1:y2, x1:x2] = x[perm, y1:y2, x1:x2]
        lam = 1.0 - (y2 - y1) * (x2 - x1) / (h * w)
    elif x.dtype == np.uint8:
        mixed = x.astype(np.float32)
        mixed *= np.float32(lam)
        mixed += np.float32(1.0 - lam) * x[perm]
        x = np.rint(mixed, out=mixed).astype(np.uint8)
    else:
        x = (lam * x + (1.0 - lam) * x[perm]).astype(x.dtype, copy=False)
    y = (lam * y + (1.0 - lam) * y[perm]).astype(y.dtype, copy=False)
    return x, y
