"""Regularizer registry: one small declarative entry per regularizer.

Each entry declares its parameters (default and valid range) and how it changes a `Recipe`, the
plain description of a model that every workload's `build()` understands. A combination is a list
of entries applied in order. To add a regularizer, add one `Regularizer(...)` to `REGISTRY`.

Weight penalties follow Keras `L1L2`: penalty = l1 * sum|w| + l2 * sum w^2 (no 1/2 factor).
Elastic net uses scikit-learn's convention,
    alpha * l1_ratio * sum|w| + 0.5 * alpha * (1 - l1_ratio) * sum w^2,
mapped to Keras as l1 = alpha * l1_ratio and l2 = 0.5 * alpha * (1 - l1_ratio).
Penalties are computed on the float32 variables, also under mixed precision policies.

Not every regularizer applies to every workload (mixup needs images, stochastic depth needs
residual blocks...): an entry's `applies_to(workload_module)` returns None or the reason, and the
suite leaves such workload x setting pairs out of the plan (`regbench plan` lists them with the
reason). Workload modules describe themselves with KIND ("tabular" | "image" | "tokens") and ARCH
("mlp" | "cnn" | "resnet" | "transformer"); see bench/workloads/__init__.py.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

from bench.errors import UserError, did_you_mean
from bench.params import Param, resolve


@dataclasses.dataclass
class Recipe:
    """What the regularizers ask of a model and of training; workloads read it in build()."""

    l1: float = 0.0
    l2: float = 0.0
    dropout_rate: float = 0.0  # Dropout after hidden blocks (transformer: residual branches and MLP)
    attention_dropout_rate: float = 0.0  # MultiHeadAttention(dropout=...): forces Keras's explicit attention path
    batch_norm: bool = False
    augmentation: str | None = None  # None | "model" (jit-safe layers) | "model_keras" (Keras layers) | "pipeline"
    augment_strength: float = 0.0  # noise stddev (tabular) or max shift as a fraction of size (images)
    early_stopping: dict | None = None  # {patience, min_delta, monitor, restore_best_weights}
    weight_decay: float = 0.0  # decoupled (AdamW): w -= learning_rate * weight_decay * w per step
    label_smoothing: float = 0.0  # CategoricalCrossentropy(label_smoothing=...)
    mixup_alpha: float = 0.0  # Beta(alpha, alpha) mixing weight; 0: off
    cutmix_alpha: float = 0.0  # Beta(alpha, alpha) kept-area fraction; 0: off
    spatial_dropout_rate: float = 0.0  # SpatialDropout2D after conv blocks / on residual branches
    max_norm: float = 0.0  # MaxNorm(max_value) kernel constraint; 0: off
    stochastic_depth_rate: float = 0.0  # drop probability of the last residual branch (linear in depth)

    # Variables AdamW leaves alone (BERT/timm convention): biases and normalization scale/offset.
    # Matched against variable.name: "gamma", or on TensorFlow the tf.Variable's "block0_bn/gamma:0".
    NO_DECAY_NAMES = (r"(^|/)(bias|gamma|beta)(:\d+)?$",)

    def training_step(self) -> "Recipe":
        """This recipe without what acts only between epochs (early stopping): two recipes with equal
        training steps time the same step."""
        return dataclasses.replace(self, early_stopping=None)

    def kernel_regularizer(self):
        """A fresh Keras L1L2 regularizer, or None when there is no weight penalty."""
        if self.l1 == 0.0 and self.l2 == 0.0:
            return None
        import keras

        return keras.regularizers.L1L2(l1=self.l1, l2=self.l2)

    def kernel_constraint(self, axis=0):
        """A fresh MaxNorm over the kernel's input `axis` (Dense: 0, Conv2D: [0, 1, 2]), or None."""
        if not self.max_norm:
            return None
        import keras

        return keras.constraints.MaxNorm(max_value=self.max_norm, axis=axis)

    def drop_path_rate(self, index: int, count: int) -> float:
        """Stochastic-depth drop probability of residual branch `index` of `count` (0-based):
        rate * (index + 1) / count, the linear rule of Huang et al. (2016)."""
        return self.stochastic_depth_rate * (index + 1) / count

    @property
    def soft_labels(self) -> bool:
        """True when training targets are class distributions (one-hot, smoothed or mixed)."""
        return bool(self.label_smoothing or self.mixup_alpha or self.cutmix_alpha)

    @property
    def mixes_batches(self) -> bool:
        return bool(self.mixup_alpha or self.cutmix_alpha)

    def make_optimizer(self, learning_rate: float):
        """Adam, or AdamW with decoupled weight decay (biases and norm scale/offset excluded)."""
        import keras

        if not self.weight_decay:
            return keras.optimizers.Adam(learning_rate)
        opt = keras.optimizers.AdamW(learning_rate, weight_decay=self.weight_decay)
        opt.exclude_from_weight_decay(var_names=list(self.NO_DECAY_NAMES))
        return opt

    def make_loss(self):
        """Sparse cross-entropy on class indices; categorical (with label smoothing) on soft labels."""
        import keras

        if self.soft_labels:
            return keras.losses.CategoricalCrossentropy(label_smoothing=self.label_smoothing)
        return keras.losses.SparseCategoricalCrossentropy()

    def metrics(self) -> list:
        """accuracy and the unpenalized, unsmoothed cross-entropy `xent_loss`, for either label form."""
        import keras

        if self.soft_labels:
            return [keras.metrics.CategoricalAccuracy(name="accuracy"),
                    keras.metrics.CategoricalCrossentropy(name="xent_loss")]
        return ["accuracy", keras.metrics.SparseCategoricalCrossentropy(name="xent_loss")]

    def prepare_data(self, data):
        """The workload's Data with one-hot float32 labels when the loss needs soft labels, else as is."""
        if not self.soft_labels:
            return data
        import numpy as np

        eye = np.eye(data.num_classes, dtype="float32")
        return dataclasses.replace(data, y_train=eye[data.y_train], y_val=eye[data.y_val])


def _everywhere(workload) -> str | None:
    return None


@dataclasses.dataclass(frozen=True)
class Regularizer:
    name: str
    doc: str
    params: dict[str, Param]
    apply: Callable[[Recipe, dict], None]
    applies_to: Callable[[Any], str | None] = _everywhere  # workload module -> None | why not


def _kind(w) -> str:
    return getattr(w, "KIND", "tabular")


def _arch(w) -> str:
    return getattr(w, "ARCH", "mlp")


def _images_only(w) -> str | None:
    return None if _kind(w) == "image" else f"mixes images; the inputs of {w.NAME} are {_kind(w)}"


def _convs_only(w) -> str | None:
    return None if _arch(w) in ("cnn", "resnet") else f"drops conv feature maps; {w.NAME} has no conv layers"


def _residual_only(w) -> str | None:
    return (None if _arch(w) in ("resnet", "transformer")
            else f"drops residual branches; {w.NAME} ({_arch(w)}) has none")


def _attention_only(w) -> str | None:
    return (None if _arch(w) == "transformer"
            else f"keeps dropout off attention; {w.NAME} has no attention layer (use dropout)")


def _dropout(recipe: Recipe, p: dict) -> None:
    recipe.dropout_rate = recipe.attention_dropout_rate = p["rate"]


def _not_tokens(w) -> str | None:
    return (None if _kind(w) != "tokens"
            else f"noise, flips and shifts have no meaning for the token ids of {w.NAME}")


def _not_transformer(w) -> str | None:
    return (None if _arch(w) != "transformer"
            else f"{w.NAME} is normalized by LayerNorm in every block (pre-LN); BatchNorm is not part of it")


def _weights(recipe: Recipe, l1: float = 0.0, l2: float = 0.0) -> None:
    recipe.l1 += l1
    recipe.l2 += l2


def _elastic(recipe: Recipe, p: dict) -> None:
    _weights(recipe, l1=p["alpha"] * p["l1_ratio"], l2=0.5 * p["alpha"] * (1.0 - p["l1_ratio"]))


def _augment(recipe: Recipe, p: dict) -> None:
    recipe.augmentation = p["where"]
    recipe.augment_strength = p["strength"]


def _early(recipe: Recipe, p: dict) -> None:
    recipe.early_stopping = dict(p)


def _setter(field: str, param: str):
    return lambda recipe, p: setattr(recipe, field, p[param])


_RATE = Param(0.1, low=0.0, high=1.0, low_open=True, high_open=True)


_DROPOUT_RATE = Param(0.3, low=0.0, high=1.0, low_open=True, high_open=True)
_PENALTY = Param(1e-4, low=0.0, high=1.0, low_open=True)

REGISTRY: dict[str, Regularizer] = {
    r.name: r
    for r in [
        Regularizer("l1", "L1 weight penalty on Dense/Conv kernels: l1 * sum|w|.",
                    {"l1": _PENALTY}, lambda r, p: _weights(r, l1=p["l1"])),
        Regularizer("l2", "L2 weight penalty on Dense/Conv kernels: l2 * sum w^2 (Keras convention, no 1/2).",
                    {"l2": _PENALTY}, lambda r, p: _weights(r, l2=p["l2"])),
        Regularizer("l1l2", "Keras L1L2: l1 * sum|w| + l2 * sum w^2.",
                    {"l1": _PENALTY, "l2": _PENALTY}, lambda r, p: _weights(r, l1=p["l1"], l2=p["l2"])),
        Regularizer("elastic_net",
                    "Elastic net (alpha, l1_ratio) as in scikit-learn, mapped to Keras L1L2 with "
                    "l1 = alpha*l1_ratio, l2 = alpha*(1-l1_ratio)/2.",
                    {"alpha": Param(2e-4, low=0.0, high=1.0, low_open=True),
                     "l1_ratio": Param(0.5, low=0.0, high=1.0)}, _elastic),
        Regularizer("dropout", "Dropout after every hidden block, at `rate` (transformer: on attention "
                    "probabilities, on both residual branches and on the MLP hidden layer; attention dropout "
                    "makes Keras's MultiHeadAttention leave the fused dot_product_attention for its explicit "
                    "einsum path, recorded in timing.attention_path).",
                    {"rate": _DROPOUT_RATE}, _dropout),
        Regularizer("dropout_no_attention",
                    "Dropout at `rate` on both residual branches and the MLP hidden layer, none on the "
                    "attention probabilities, so MultiHeadAttention keeps the fused dot_product_attention "
                    "(cuDNN flash on JAX, SDPA on torch). Attention workloads only.",
                    {"rate": _DROPOUT_RATE}, _setter("dropout_rate", "rate"), _attention_only),
        Regularizer("batch_norm", "BatchNormalization after every hidden Dense/Conv, before the activation.",
                    {}, lambda r, p: setattr(r, "batch_norm", True), _not_transformer),
        Regularizer("augmentation",
                    "Data augmentation. where=model: layers inside the model, compiled with the step "
                    "(GaussianNoise for tabular; for images a random flip and a reflect-padded random shift "
                    "written with keras.ops). where=model_keras: Keras' RandomFlip+RandomTranslation, which "
                    "switch XLA off for the whole step (supports_jit=False). where=pipeline: the same "
                    "transforms in NumPy on the input side, batch by batch (keras PyDataset). "
                    "strength: noise stddev (tabular) or max shift as a fraction of the image size.",
                    {"where": Param("model", choices=("model", "model_keras", "pipeline"), kind=str),
                     "strength": Param(0.1, low=0.0, high=1.0, low_open=True)}, _augment, _not_tokens),
        Regularizer("early_stopping",
                    "EarlyStopping on an unpenalized validation metric (val_xent_loss by default; "
                    "val_loss would include the L1/L2 penalty). Costs the validation pass every epoch; "
                    "restore_best_weights restores at train end even if it never stopped.",
                    {"patience": Param(3, low=0, high=1000, kind=int),
                     "min_delta": Param(0.0, low=0.0, high=1.0),
                     "monitor": Param("val_xent_loss", choices=("val_xent_loss", "val_accuracy"), kind=str),
                     "restore_best_weights": Param(True, kind=bool)}, _early),
        Regularizer("weight_decay",
                    "Decoupled weight decay (AdamW, Loshchilov & Hutter): each step w -= learning_rate * "
                    "weight_decay * w, outside the loss and the gradient; biases and normalization "
                    "scale/offset are not decayed. Pair with l2 to see penalty vs decoupled.",
                    {"weight_decay": Param(0.01, low=0.0, high=1.0, low_open=True)},
                    _setter("weight_decay", "weight_decay")),
        Regularizer("label_smoothing",
                    "Label smoothing: the target becomes (1 - smoothing) * one_hot + smoothing / classes "
                    "(Keras CategoricalCrossentropy(label_smoothing)); labels are fed one-hot.",
                    {"smoothing": _RATE}, _setter("label_smoothing", "smoothing")),
        Regularizer("mixup",
                    "mixup (Zhang et al. 2018) on the input side, batch by batch: x = lam*x + (1-lam)*x[perm], "
                    "same for the one-hot labels, lam ~ Beta(alpha, alpha) per batch. Images only.",
                    {"alpha": Param(0.2, low=0.0, high=10.0, low_open=True)},
                    _setter("mixup_alpha", "alpha"), _images_only),
        Regularizer("cutmix",
                    "CutMix (Yun et al. 2019) on the input side, batch by batch: a box covering 1-lam of "
                    "the image, lam ~ Beta(alpha, alpha), is pasted from a permuted batch; labels mix by the "
                    "pasted area. With mixup in one setting, each batch uses one of the two (p = 1/2). "
                    "Images only.",
                    {"alpha": Param(1.0, low=0.0, high=10.0, low_open=True)},
                    _setter("cutmix_alpha", "alpha"), _images_only),
        Regularizer("spatial_dropout",
                    "SpatialDropout2D (whole feature maps) at `rate` after every conv block of a plain CNN, "
                    "on the residual branch (before the add) of every ResNet block. Conv workloads only.",
                    {"rate": _RATE}, _setter("spatial_dropout_rate", "rate"), _convs_only),
        Regularizer("max_norm",
                    "MaxNorm kernel constraint (Srivastava et al. 2014): after every update, each unit's "
                    "incoming weight vector of every Dense/Conv/attention kernel is rescaled to norm <= "
                    "max_value.",
                    {"max_value": Param(3.0, low=0.0, high=1000.0, low_open=True)},
                    _setter("max_norm", "max_value")),
        Regularizer("stochastic_depth",
                    "Stochastic depth / drop path (Huang et al. 2016): in training each sample skips the "
                    "residual branch(es) of block l of L with probability rate * l / L (kept branches "
                    "scaled by 1/(1-p)); inference uses every branch. Residual workloads only.",
                    {"rate": _RATE}, _setter("stochastic_depth_rate", "rate"), _residual_only),
    ]
}

BASELINE = "none"
BUILT_IN = frozenset(REGISTRY)  # a user's regularizer (bench/usercode.py) is added to REGISTRY, never one of these


def known_names() -> list[str]:
    return [BASELINE, *REGISTRY]


def normalize(name: str, params: dict | None, where: str) -> tuple[str, dict]:
    """Validate one (name, params) and fill defaults. `where` names the file and field for errors."""
    if name not in REGISTRY:
        raise UserError(f"{where}: unknown regularizer {name!r}{did_you_mean(name, known_names())}")
    spec = REGISTRY[name]
    unknown = [k for k in (params or {}) if k not in spec.params]
    if unknown:
        raise UserError(f"{where}.{unknown[0]}: unknown parameter of {name} (allowed: {', '.join(spec.params) or 'none'})")
    return name, dict(sorted(resolve(spec.params, params, where).items()))


def from_module(module, where: str) -> Regularizer:
    """The registry entry a user's module declares ("regbench.regularizer v1"): NAME, apply(recipe,
    params), optional PARAMS {name: Param}, DESCRIPTION and applies_to(workload). Not registered."""
    name, apply = getattr(module, "NAME", None), getattr(module, "apply", None)
    params = getattr(module, "PARAMS", None) or {}
    if not isinstance(name, str) or not name.isidentifier():
        raise UserError(f"{where}: NAME {name!r} is not a plain name (letters, digits, '_')")
    if name in BUILT_IN or name == BASELINE:
        raise UserError(f"{where}: NAME {name!r} is a built-in regularizer; give the module another NAME")
    if not callable(apply):
        raise UserError(f"{where}: {name} has no apply(recipe, params)")
    if not isinstance(params, dict) or not all(isinstance(k, str) and isinstance(v, Param) for k, v in params.items()):
        raise UserError(f"{where}: PARAMS must map parameter names to bench.params.Param")
    resolve(params, {}, f"{where}: PARAMS")  # the defaults are in their own ranges
    applies = getattr(module, "applies_to", None) or _everywhere
    doc = getattr(module, "DESCRIPTION", None) or (module.__doc__ or name).strip().split("\n")[0]
    return Regularizer(name, doc, dict(params), apply, applies)


def not_applicable(regularizers, workload) -> str | None:
    """Why a combination [(name, params), ...] does not apply to `workload` (a module), or None
    (a user's model: also where the rewrite cannot place it, its UNPLACEABLE)."""
    for name, _ in regularizers:
        reason = REGISTRY[name].applies_to(workload) or getattr(workload, "UNPLACEABLE", {}).get(name)
        if reason:
            return f"{name}: {reason}" if len(regularizers) > 1 else reason
    return None


def recipe_for(regularizers) -> Recipe:
    """Apply a combination [(name, params), ...] to a fresh Recipe."""
    recipe = Recipe()
    for name, params in regularizers:
        REGISTRY[name].apply(recipe, params)
    return recipe


def setting_label(regularizers, defaults: dict | None = None) -> str:
    """'none', 'l2', 'dropout(rate=0.5)+batch_norm': parameters shown only where not default.
    `defaults` {name: {param: default}}: of regularizers this process has not registered (a user's)."""
    if not regularizers:
        return BASELINE
    parts = []
    for name, params in regularizers:
        spec = REGISTRY.get(name)
        known = {k: p.default for k, p in spec.params.items()} if spec else (defaults or {}).get(name)
        changed = {k: v for k, v in params.items() if known is None or known.get(k) != v}
        parts.append(name + ("(" + ",".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}"
                                               for k, v in sorted(changed.items())) + ")" if changed else ""))
    return "+".join(parts)
