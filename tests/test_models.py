"""The regularizers and the precision a trial claims are really in the model it trains.

Every workload is built the runner's way (bench.runner.build_model) at tiny sizes, and what Keras
built is read back (tests/model_facts.py): penalty coefficients from each kernel variable, the
penalty the model adds to the loss, Dropout and BatchNormalization layers and what feeds them,
augmentation layers and what they do in training and in inference, compute and variable dtypes,
the optimizer. The expected values are written out here from the definitions in bench/README.md
"Regularizers" (counts of kernels per architecture, literal coefficients), never recomputed with
the registry's code.

TensorFlow runs in this process; JAX and torch each run the same facts in one fresh process
(tests/model_facts.py) and are checked by the same functions.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from tests.conftest import ROOT, facts_in_child
from tests.model_facts import data_for, facts

WORKLOADS = ("digits_mlp", "fashion_mnist_cnn", "cifar10_resnet20", "synthetic_cnn", "transformer_encoder", "resnet50")
KERNELS = {"digits_mlp": 3, "fashion_mnist_cnn": 4, "cifar10_resnet20": 22, "synthetic_cnn": 6,
           "transformer_encoder": 13, "resnet50": 18}  # Dense/Conv/attention kernels, head included (tiny sizes)
# Dropout layer -> the layer it follows: after every hidden block (the transformer: after attention,
# in the MLP and after it; its attention probabilities are dropped inside MultiHeadAttention)
DROPOUT_AFTER = {
    "digits_mlp": {"hidden0_dropout": "hidden0_relu", "hidden1_dropout": "hidden1_relu"},
    "fashion_mnist_cnn": {"pool_dropout": "pool", "fc_dropout": "fc_relu"},
    "cifar10_resnet20": {"gap_dropout": "gap"},
    "synthetic_cnn": {"fc_dropout": "fc_relu"},
    "transformer_encoder": {f"block{i}_{a}": f"block{i}_{b}" for i in range(2) for a, b in
                            (("attention_dropout", "attention"), ("mlp_dropout", "mlp_in"),
                             ("mlp_out_dropout", "mlp_out"))},
    "resnet50": {"avg_pool_dropout": "avg_pool"},
}
AUGMENTATION = {"tabular": [("GaussianNoise", "aug_noise")],
                "image": [("RandomShiftFlip", "aug_shift_flip")]}  # where=model: the jit-safe layer
KIND = {"digits_mlp": "tabular", "transformer_encoder": "tokens"}
COMPUTE = {"float32": "float32", "mixed_float16": "float16", "mixed_bfloat16": "bfloat16"}

# setting -> the (l1, l2) every kernel must carry: Keras L1L2, penalty l1*sum|w| + l2*sum w^2;
# elastic net (alpha 0.01, l1_ratio 0.3) in scikit-learn's convention: l1 = 0.003, l2 = 0.0035
PENALTIES = {
    "l1": ([("l1", {"l1": 3e-4})], (3e-4, 0.0)),
    "l2": ([("l2", {"l2": 5e-4})], (0.0, 5e-4)),
    "l1l2": ([("l1l2", {"l1": 3e-4, "l2": 5e-4})], (3e-4, 5e-4)),
    "elastic_net": ([("elastic_net", {"alpha": 0.01, "l1_ratio": 0.3})], (0.003, 0.0035)),
}
DROPOUT = ("dropout", {"rate": 0.35})
BATCH_NORM = ("batch_norm", {})
AUGMENT = ("augmentation", {"where": "model", "strength": 0.2})
EARLY = ("early_stopping", {"patience": 3, "min_delta": 0.0, "monitor": "val_xent_loss", "restore_best_weights": True})


def kind(workload: str) -> str:
    return KIND.get(workload, "image")


def consumers(f: dict) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for _, name, producers in f["layers"]:
        for p in producers:
            out.setdefault(p, []).append(name)
    return out


def classes(f: dict) -> dict[str, str]:
    return {name: cls for cls, name, _ in f["layers"]}


def producers(f: dict) -> dict[str, list[str]]:
    return {name: p for _, name, p in f["layers"]}


# ---- checks, the same on every backend -----------------------------------------------------------

def check_penalties(f: dict, expected: tuple[float, float] | None) -> None:
    """Every kernel carries exactly the expected coefficients, and the model's loss gets their sum."""
    w = f["workload"]
    assert len(f["kernels"]) == KERNELS[w], (w, sorted(f["kernels"]))
    want = 0.0
    for path, k in f["kernels"].items():
        if expected is None:
            assert k["regularizer"] is None, (w, path, k)
            continue
        assert k["regularizer"] == "L1L2" and (k["l1"], k["l2"]) == pytest.approx(expected, rel=1e-6), (w, path, k)
        assert k["dtype"] == "float32"  # the penalty reads the float32 variable under every policy
        want += expected[0] * k["abs"] + expected[1] * k["sq"]
    assert f["penalty"] == pytest.approx(want, rel=1e-4, abs=1e-12), (w, f["penalty"], want)
    if expected is not None:
        assert f["penalty"] > 0.01, (w, f["penalty"])  # a penalty big enough that the check above means something


def check_dropout(f: dict, rate: float | None) -> None:
    w = f["workload"]
    placed = {name: producers(f)[name][0] for name in f["dropout"]}
    if rate is None:
        assert placed == {}, (w, placed)
        assert set(f["attention_dropout"].values()) <= {0.0}, (w, f["attention_dropout"])
        return
    assert placed == DROPOUT_AFTER[w], (w, placed)
    assert set(f["dropout"].values()) == {rate}, (w, f["dropout"])
    if w == "transformer_encoder":
        assert f["attention_dropout"] == {"block0_attention": rate, "block1_attention": rate}


def check_batch_norm(f: dict, on: bool) -> None:
    """BatchNormalization right after every hidden Dense/Conv (the head excepted), before its activation."""
    w, cls, cons = f["workload"], classes(f), consumers(f)
    bns = [name for name, c in cls.items() if c == "BatchNormalization"]
    if not on:
        assert bns == [], (w, bns)
        return
    hidden = [name for name, c in cls.items() if c in ("Dense", "Conv2D") and name != "logits"]
    assert len(hidden) == KERNELS[w] - 1 and len(bns) == len(hidden), (w, hidden, bns)
    for name in hidden:
        assert [cls[c] for c in cons[name]] == ["BatchNormalization"], (w, name, cons[name])
        bn = cons[name][0]
        assert {cls[c] for c in cons[bn]} <= {"Activation", "Add"}, (w, bn, cons[bn])  # then ReLU, or the residual add


def check_augmentation(f: dict, strength: float | None) -> None:
    """In-model augmentation: the first layers after the input, active in training only."""
    w, cls, cons = f["workload"], classes(f), consumers(f)
    if strength is None:
        assert f["augmentation"] == {} and not any(n.startswith("aug_") for n in cls), (w, list(cls))
        return
    chain = AUGMENTATION[kind(w)]
    first_input = next(name for name, c in cls.items() if c == "InputLayer")
    if cons[first_input] == ["image_rescale"]:  # uint8 images: cast and scaled to [0, 1] first (common.image_input)
        first_input = "image_rescale"
    assert cons[first_input] == [chain[0][1]], (w, cons[first_input])
    for (c, name), nxt in zip(chain, chain[1:] + [None]):
        assert cls[name] == c
        if nxt:
            assert cons[name] == [nxt[1]]
        a = f["augmentation"][name]
        assert a["training_max_change"] > 0.1, (w, name, a)  # training: the input really changes
        assert a["inference_max_change"] < 5e-3, (w, name, a)  # inference: identity (up to the compute dtype)
        config = a["config"]
        if c == "GaussianNoise":
            assert config["stddev"] == pytest.approx(strength)
        if c == "RandomTranslation":
            assert config["height_factor"] == config["width_factor"] == pytest.approx(strength)
            assert config["fill_mode"] == "reflect"
        if c == "RandomFlip":
            assert config["mode"] == "horizontal"


def check_precision(f: dict, precision: str) -> None:
    """Compute in the policy's dtype, variables in float32, a float32 softmax head, the optimizer
    wrapped in a LossScaleOptimizer under mixed_float16 only."""
    w = f["workload"]
    assert f["policy"] == precision
    compute = COMPUTE[precision]
    wrong = {n: d for n, d in f["compute_dtypes"].items() if d != (compute if n != "probs" else "float32")}
    assert wrong == {}, (w, precision, wrong)
    assert set(f["variable_dtypes"].values()) == {"float32"}, (w, precision)
    assert set(f["layer_variable_dtypes"].values()) == {"float32"}, (w, precision)
    assert f["logits_dtype"] == compute and f["output_dtype"] == "float32", (w, precision)
    if precision == "mixed_float16":
        assert (f["optimizer"], f["inner_optimizer"]) == ("LossScaleOptimizer", "Adam")
    else:
        assert (f["optimizer"], f["inner_optimizer"]) == ("Adam", None)


def check_fit(f: dict) -> None:
    """One training step on a fixed batch: its loss is the unpenalized cross-entropy plus exactly the
    penalty of the weights it started from."""
    fit = f["fit"]
    assert fit["loss"] - fit["xent_loss"] == pytest.approx(f["penalty"], rel=1e-3, abs=2e-5), (f["setting"], fit)


def check_case(f: dict, regs: list, precision: str) -> None:
    names = dict(regs)
    expected = None
    for key, (setting, coefficients) in PENALTIES.items():
        if key in names:
            assert setting[0][1] == names[key]
            expected = coefficients
    check_penalties(f, expected)
    check_dropout(f, names["dropout"]["rate"] if "dropout" in names else None)
    check_batch_norm(f, "batch_norm" in names)
    check_augmentation(f, names["augmentation"]["strength"] if "augmentation" in names else None)
    check_precision(f, precision)
    if "fit" in f:
        check_fit(f)


# ---- TensorFlow, in this process ----------------------------------------------------------------

@pytest.mark.parametrize("workload", WORKLOADS)
def test_each_classic_regularizer_is_in_the_model_on_tensorflow(workload):
    """Defect caught: a regularizer that never reaches the built model (no-op recipe, a block that
    ignores it, batch norm or dropout dropped, a penalty with the wrong coefficient or on some
    kernels only, augmentation missing or active at inference)."""
    settings = [[]] + [regs for regs, _ in PENALTIES.values()] + [[DROPOUT], [BATCH_NORM], [AUGMENT]]
    for regs in settings:
        if kind(workload) == "tokens" and regs and regs[0][0] in ("batch_norm", "augmentation"):
            continue  # not applicable to token ids / a LayerNorm transformer (left out of the plan)
        check_case(facts(workload, regs, "float32"), regs, "float32")


@pytest.mark.parametrize("precision", ["float32", "mixed_float16", "mixed_bfloat16"])
def test_precision_policy_is_in_effect_on_tensorflow(precision):
    """Defect caught: every policy silently running float32 (or float16 under bfloat16), variables
    kept in 16 bits, the softmax head not in float32, no loss scaling under mixed_float16."""
    for workload in WORKLOADS:
        regs = PENALTIES["l1l2"][0]
        check_case(facts(workload, regs, precision), regs, precision)


@pytest.mark.parametrize("workload", ["digits_mlp", "synthetic_cnn", "transformer_encoder"])
def test_penalty_changes_the_training_loss_by_exactly_its_value(workload):
    """Defect caught: a penalty counted twice, not at all, or with the wrong coefficient in the loss
    that training minimizes. Two models from the same seed (same initial weights), one penalized,
    trained one step on the same fixed batch: their losses differ by the penalty, their unpenalized
    cross-entropies do not."""
    regs = PENALTIES["elastic_net"][0]
    base, pen = facts(workload, [], "float32", fit=True), facts(workload, regs, "float32", fit=True)
    assert [k["abs"] for k in base["kernels"].values()] == [k["abs"] for k in pen["kernels"].values()]
    check_case(pen, regs, "float32")
    assert pen["fit"]["xent_loss"] == pytest.approx(base["fit"]["xent_loss"], rel=1e-5)
    assert pen["fit"]["loss"] - base["fit"]["loss"] == pytest.approx(pen["penalty"], rel=1e-3)
    assert base["fit"]["loss"] == pytest.approx(base["fit"]["xent_loss"], rel=1e-6)


def test_early_stopping_watches_the_unpenalized_metric():
    """Defect caught: early stopping on val_loss, which includes the L1/L2 penalty, so a penalized
    model would stop on its weights' norm rather than on how well it predicts."""
    import keras

    from bench.regularizers import normalize, recipe_for
    from bench.runner import build_model, early_stopping_callback
    from bench.trial import Trial
    from bench.workloads import digits_mlp

    defaults = normalize("early_stopping", {}, "t")
    assert facts("digits_mlp", [defaults], "float32")["early_stopping"] == {
        "monitor": "val_xent_loss", "mode": "min", "patience": 3, "restore_best_weights": True}
    by_accuracy = normalize("early_stopping", {"monitor": "val_accuracy"}, "t")
    assert facts("digits_mlp", [by_accuracy], "float32")["early_stopping"]["mode"] == "max"

    regs = (("l2", {"l2": 0.05}), ("early_stopping", {**defaults[1], "patience": 100}))
    recipe = recipe_for(regs)
    data = digits_mlp.load(0, 256)
    model = build_model(Trial(workload="digits_mlp", regularizers=regs, precision="float32", batch_size=64),
                        digits_mlp, recipe, data)
    early = early_stopping_callback(recipe)
    h = model.fit(data.x_train, data.y_train, batch_size=64, epochs=4, validation_data=(data.x_val, data.y_val),
                  callbacks=[early], verbose=0).history
    gaps = np.asarray(h["val_loss"]) - np.asarray(h["val_xent_loss"])
    assert (gaps > 0.05).all()  # val_loss carries the penalty, val_xent_loss does not
    assert float(early.best) == pytest.approx(min(h["val_xent_loss"]), rel=1e-6)
    assert keras.config.dtype_policy().name == "float32"


def test_pipeline_augmentation_adds_no_layer_to_the_model():
    """Input-side augmentation stays outside the model (its cost is the input pipeline's)."""
    for workload in ("digits_mlp", "synthetic_cnn"):
        f = facts(workload, [("augmentation", {"where": "pipeline", "strength": 0.2})], "float32")
        check_augmentation(f, None)
        assert [n for _, n, _ in f["layers"]] == [n for _, n, _ in facts(workload, [], "float32")["layers"]]


# ---- JAX and torch: the same facts in a fresh process per backend ---------------------------------

# torch checks every workload; JAX the MLP only: JAX compiles a random initializer per kernel shape
# (about a second each on 2 cores), which would make every workload cost ~5 minutes here.
BACKEND_WORKLOADS = {"torch": WORKLOADS, "jax": ("digits_mlp",)}


def backend_plan(backend: str) -> list:
    """Per workload: the baseline in float32; every applicable classic model regularizer at once
    under mixed_bfloat16, trained one step; elastic net under mixed_float16 (built, not trained:
    float16 on a CPU is emulated)."""
    plan = []
    for w in BACKEND_WORKLOADS[backend]:
        combined = PENALTIES["l1l2"][0] + [DROPOUT] + ([BATCH_NORM, AUGMENT] if kind(w) != "tokens" else [])
        plan += [(w, [], "float32", False), (w, combined, "mixed_bfloat16", True),
                 (w, PENALTIES["elastic_net"][0], "mixed_float16", False)]
    return plan


@pytest.mark.parametrize("backend", ["jax", "torch"])
def test_regularizers_and_precision_are_in_the_model_on_backend(backend):
    """Defect caught: any of the above on the JAX or torch backend (a layer or dtype that only the
    TensorFlow path gets right)."""
    import importlib.util

    if importlib.util.find_spec(backend) is None:
        pytest.skip(f"{backend} is not installed (make test installs it)")
    plan = backend_plan(backend)
    results = facts_in_child("tests.model_facts", plan, backend)
    for f, (workload, regs, precision, fit) in zip(results, plan):
        assert f["backend"] == backend and f["workload"] == workload
        check_case(f, regs, precision)
        assert ("fit" in f) == fit


def test_data_for_gives_every_workload_its_shapes():
    from bench.workloads import WORKLOADS as ALL

    assert set(ALL) == set(WORKLOADS)  # a new workload: add its expected structure above
    assert data_for("digits_mlp").x_train.shape == (16, 64)
