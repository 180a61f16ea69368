"""Regularizer registry: one small declarative entry per regularizer.

Each entry declares its parameters (default and valid range) and how it changes a `Recipe`, the
plain description of a model that every workload's `build()` understands. A combination is a list
of entries applied in order. To add a regularizer, add one `Regularizer(...)` to `REGISTRY`.

Weight penalties follow Keras `L1L2`: penalty = l1 * sum|w| + l2 * sum w^2 (no 1/2 factor).
Elastic net uses scikit-learn's convention,
    alpha * l1_ratio * sum|w| + 0.5 * alpha * (1 - l1_ratio) * sum w^2,
mapped to Keras as l1 = alpha * l1_ratio and l2 = 0.5 * alpha * (1 - l1_ratio).
Penalties are computed on the float32 variables, also under mixed precision policies.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

from bench.errors import UserError, did_you_mean


@dataclasses.dataclass
class Recipe:
    """What the regularizers ask of a model and of training; workloads read it in build()."""

    l1: float = 0.0
    l2: float = 0.0
    dropout_rate: float = 0.0
    batch_norm: bool = False
    augmentation: str | None = None  # None | "model" (Keras layers in the model) | "pipeline" (input side)
    augment_strength: float = 0.0  # noise stddev (tabular) or max shift as a fraction of size (images)
    early_stopping: dict | None = None  # {patience, min_delta, monitor, restore_best_weights}

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


@dataclasses.dataclass(frozen=True)
class Param:
    default: Any
    low: float | None = None  # inclusive unless low_open
    high: float | None = None  # inclusive unless high_open
    low_open: bool = False
    high_open: bool = False
    choices: tuple | None = None
    kind: type = float

    def check(self, value: Any) -> str | None:
        """None when valid, else what is wrong (without the field name)."""
        if self.choices is not None:
            return None if value in self.choices else f"{value!r} is not one of {list(self.choices)}"
        if self.kind is bool:
            return None if isinstance(value, bool) else f"{value!r} is not true/false"
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return f"{value!r} is not a number"
        if self.kind is int and int(value) != value:
            return f"{value!r} is not an integer"
        lo_bad = self.low is not None and (value <= self.low if self.low_open else value < self.low)
        hi_bad = self.high is not None and (value >= self.high if self.high_open else value > self.high)
        if lo_bad or hi_bad:
            lo = "-inf" if self.low is None else self.low
            hi = "inf" if self.high is None else self.high
            return f"{value!r} is out of range {'(' if self.low_open else '['}{lo}, {hi}{')' if self.high_open else ']'}"
        return None


@dataclasses.dataclass(frozen=True)
class Regularizer:
    name: str
    doc: str
    params: dict[str, Param]
    apply: Callable[[Recipe, dict], None]


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
        Regularizer("dropout", "Dropout after every hidden block, at `rate`.",
                    {"rate": Param(0.3, low=0.0, high=1.0, low_open=True, high_open=True)},
                    lambda r, p: setattr(r, "dropout_rate", p["rate"])),
        Regularizer("batch_norm", "BatchNormalization after every hidden Dense/Conv, before the activation.",
                    {}, lambda r, p: setattr(r, "batch_norm", True)),
        Regularizer("augmentation",
                    "Data augmentation. where=model: Keras layers inside the model (GaussianNoise for "
                    "tabular; RandomFlip+RandomTranslation for images, which disable XLA). where=pipeline: "
                    "the same transforms in NumPy on the input side, batch by batch (keras PyDataset). "
                    "strength: noise stddev (tabular) or max shift as a fraction of the image size.",
                    {"where": Param("model", choices=("model", "pipeline"), kind=str),
                     "strength": Param(0.1, low=0.0, high=1.0, low_open=True)}, _augment),
        Regularizer("early_stopping",
                    "EarlyStopping on an unpenalized validation metric (val_xent_loss by default; "
                    "val_loss would include the L1/L2 penalty). Costs the validation pass every epoch; "
                    "restore_best_weights restores at train end even if it never stopped.",
                    {"patience": Param(3, low=0, high=1000, kind=int),
                     "min_delta": Param(0.0, low=0.0, high=1.0),
                     "monitor": Param("val_xent_loss", choices=("val_xent_loss", "val_accuracy"), kind=str),
                     "restore_best_weights": Param(True, kind=bool)}, _early),
    ]
}

BASELINE = "none"


def known_names() -> list[str]:
    return [BASELINE, *REGISTRY]


def normalize(name: str, params: dict | None, where: str) -> tuple[str, dict]:
    """Validate one (name, params) and fill defaults. `where` names the file and field for errors."""
    if name not in REGISTRY:
        raise UserError(f"{where}: unknown regularizer {name!r}{did_you_mean(name, known_names())}")
    spec = REGISTRY[name]
    params = dict(params or {})
    for key in params:
        if key not in spec.params:
            allowed = ", ".join(spec.params) or "none"
            raise UserError(f"{where}.{key}: unknown parameter of {name} (allowed: {allowed})")
    out = {}
    for key, p in spec.params.items():
        value = params.get(key, p.default)
        if p.kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        problem = p.check(value)
        if problem:
            raise UserError(f"{where}.{key}: {problem}")
        out[key] = value
    return name, dict(sorted(out.items()))


def recipe_for(regularizers) -> Recipe:
    """Apply a combination [(name, params), ...] to a fresh Recipe."""
    recipe = Recipe()
    for name, params in regularizers:
        REGISTRY[name].apply(recipe, params)
    return recipe


def setting_label(regularizers) -> str:
    """'none', 'l2', 'dropout(rate=0.5)+batch_norm': parameters shown only where not default."""
    if not regularizers:
        return BASELINE
    parts = []
    for name, params in regularizers:
        spec = REGISTRY.get(name)
        changed = {k: v for k, v in params.items() if spec is None or spec.params[k].default != v}
        parts.append(name + ("(" + ",".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}"
                                               for k, v in sorted(changed.items())) + ")" if changed else ""))
    return "+".join(parts)
