"""regbench regularizes a model that knows nothing of regularizers (bench/workloads/rewrite.py).

Recipe-unaware user models (tests/rewrite_facts.py) are rewritten and read back: penalties and
max-norm on every kernel, Dropout / SpatialDropout after each hidden block and nowhere else,
BatchNormalization between each hidden layer and its split-off activation, the output layer left
alone, and an l2 model whose training loss exceeds its cross-entropy by exactly the penalty.
TensorFlow runs in this process; JAX and torch run the same cases in one fresh process each and
are checked by the same functions.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import ROOT, facts_in_child
from tests.rewrite_facts import facts, user_model

L2 = ("l2", {"l2": 1e-3})
DROPOUT = ("dropout", {"rate": 0.25})
BATCH_NORM = ("batch_norm", {})
CASES = [
    ("functional_mlp", [L2]),
    ("functional_mlp", [DROPOUT]),
    ("functional_mlp", [BATCH_NORM, DROPOUT]),
    ("sequential_mlp", [L2, BATCH_NORM, DROPOUT]),
    ("cnn", [("spatial_dropout", {"rate": 0.2}), ("max_norm", {"max_value": 2.0}), BATCH_NORM]),
    ("functional_mlp", [("augmentation", {"where": "model", "strength": 0.1})]),
]


def by_name(f: dict) -> dict:
    return {layer["name"]: layer for layer in f["layers"]}


def consumers(f: dict, name: str) -> list[str]:
    return [layer["name"] for layer in f["layers"] if name in layer["inbound"]]


def check_l2(f):
    layers = by_name(f)
    assert [(p["layer"], p["what"], p["regularizer"]) for p in f["placements"]] == \
        [(n, "kernel_regularizer", "l2") for n in ("h1", "h2", "out")]
    for n in ("h1", "h2", "out"):
        assert layers[n]["penalty"] == [0.0, pytest.approx(1e-3)]
    fit = f["fit"]
    assert fit["loss"] > fit["xent_loss"]  # the penalty reached the training loss
    assert fit["penalty"] > 0 and fit["eval_loss"] - fit["eval_xent_loss"] == pytest.approx(fit["penalty"], rel=1e-3)


def check_dropout_where_placed(f, rate, expected_after):
    """Dropout layers exactly where the placements say, and only there."""
    layers = by_name(f)
    placed = {p["inserted"]: p for p in f["placements"] if p["what"] == "dropout_after"}
    dropouts = {n for n, layer in layers.items() if layer["class"] == "Dropout"}
    assert dropouts == set(placed)
    assert {p["layer"]: p["after"] for p in placed.values()} == expected_after
    for name, p in placed.items():
        assert layers[name]["inbound"] == [p["after"]] and layers[name]["rate"] == rate


def check_batch_norm(f, hidden, output, output_activation="softmax"):
    """hidden Dense -> BN -> Activation(relu), the Dense without activation nor bias; output untouched."""
    layers = by_name(f)
    placed = [p for p in f["placements"] if p["what"] == "batch_norm_before_activation"]
    assert [p["layer"] for p in placed] == hidden
    for p in placed:
        bn = layers[p["inserted"]]
        assert bn["class"] == "BatchNormalization" and bn["inbound"] == [p["layer"]]
        assert layers[p["layer"]]["activation"] == "linear" and layers[p["layer"]]["use_bias"] is False
        (act,) = consumers(f, p["inserted"])
        assert layers[act]["class"] in ("Activation", "ReLU")
    assert layers[output]["activation"] == output_activation


def check_output_alone(f, output):
    """No Dropout or BatchNormalization is fed by the output layer or follows it."""
    assert all(by_name(f)[c]["class"] not in ("Dropout", "BatchNormalization") for c in consumers(f, output))
    assert all(p["layer"] != output for p in f["placements"]
               if p["what"] not in ("kernel_regularizer", "kernel_constraint"))


def check_case(f, model_name, regs):
    assert f["reason"] is None and not f["same_object"]
    names = [n for n, _ in regs]
    if model_name == "functional_mlp" and names == ["l2"]:
        check_l2(f)
    elif model_name == "functional_mlp" and names == ["dropout"]:
        check_dropout_where_placed(f, 0.25, {"h1": "h1", "h2": "h2"})
        check_output_alone(f, "out")
    elif model_name == "functional_mlp" and names == ["batch_norm", "dropout"]:
        check_batch_norm(f, ["h1", "h2"], "out")
        acts = {p["layer"]: consumers(f, p["inserted"])[0] for p in f["placements"]
                if p["what"] == "batch_norm_before_activation"}
        check_dropout_where_placed(f, 0.25, acts)  # after the split-off activation
        check_output_alone(f, "out")
    elif model_name == "sequential_mlp":
        assert f["model_class"] == "Sequential"
        check_batch_norm(f, ["h1", "h2"], "out")
        # h2 is Dense(linear) + ReLU layer: BN between them, dropout after the ReLU
        assert consumers(f, "h2") == [next(p["inserted"] for p in f["placements"] if p["layer"] == "h2"
                                           and p["what"] == "batch_norm_before_activation")]
        check_dropout_where_placed(f, 0.25, {"h1": f"{consumers(f, consumers(f, 'h1')[0])[0]}", "h2": "h2_relu"})
        check_output_alone(f, "out")
        assert f["fit"]["loss"] > f["fit"]["xent_loss"]
    elif model_name == "cnn":
        layers = by_name(f)
        assert layers["c1"]["max_norm"] == [2.0, [0, 1, 2]] and layers["logits"]["max_norm"] == [2.0, 0]
        spatial = [p for p in f["placements"] if p["what"] == "spatial_dropout_after"]
        assert [p["layer"] for p in spatial] == ["c1", "c2"]
        for p in spatial:
            assert layers[p["inserted"]]["class"] == "SpatialDropout2D" and layers[p["inserted"]]["rate"] == 0.2
        check_batch_norm(f, ["c1", "c2"], "logits", output_activation="linear")
        assert consumers(f, "logits") == ["probs"]
        check_output_alone(f, "logits")
    elif names == ["augmentation"]:
        (p,) = f["placements"]
        assert p["what"] == "augmentation_after_input" and by_name(f)[p["inserted"]]["class"] == "GaussianNoise"
        assert consumers(f, p["inserted"]) == ["h1"]
    else:
        raise AssertionError(f"no check for {model_name} {names}")


@pytest.mark.parametrize("model_name,regs", CASES, ids=[f"{m}-{'+'.join(n for n, _ in r)}" for m, r in CASES])
def test_rewrite_places_regularizers_on_tensorflow(model_name, regs):
    """Defects caught: a penalty that never reaches the loss, Dropout/BN missing, misplaced or on
    the output layer, a Sequential model turned into something else."""
    check_case(facts(model_name, regs), model_name, regs)


@pytest.mark.parametrize("backend", ["jax", "torch"])
def test_rewrite_places_regularizers_on_backend(backend):
    """Defect caught: a rewrite that only works on the TensorFlow backend."""
    import importlib.util

    if importlib.util.find_spec(backend) is None:
        pytest.skip(f"{backend} is not installed (make test installs it)")
    results = facts_in_child("tests.rewrite_facts", CASES, backend)
    for f, (model_name, regs) in zip(results, CASES):
        assert f["backend"] == backend
        check_case(f, model_name, regs)


TRAINING_SIDE = [("weight_decay", {}), ("label_smoothing", {}), ("mixup", {}), ("cutmix", {}),
                 ("augmentation", {"where": "pipeline"}), ("early_stopping", {})]


@pytest.mark.parametrize("name,params", TRAINING_SIDE, ids=[n for n, _ in TRAINING_SIDE])
def test_training_side_settings_leave_the_model_alone(name, params):
    """Defect caught: a rewrite (fresh weights, new layers) for a setting that acts in training only."""
    from bench.workloads.rewrite import placeable, regularize
    from bench.regularizers import normalize, recipe_for

    for model_name in ("functional_mlp", "subclassed"):
        model = user_model(model_name)
        reg = normalize(name, params, "test")
        assert placeable(model, [reg]) is None
        if name != "augmentation":  # by name: its defaults (augmentation's default is where=model)
            assert placeable(model, [name]) is None
        new, placements = regularize(model, recipe_for([reg]))
        assert new is model and placements == []


@pytest.mark.parametrize("model_name,regs,words", [
    ("subclassed", [L2], "subclassed"),
    ("subclassed", [DROPOUT], "subclassed"),
    ("logistic", [DROPOUT], "no hidden"),
    ("logistic", [BATCH_NORM], "no hidden"),
    ("lstm", [L2], "'rnn' (LSTM)"),
    ("functional_mlp", [("stochastic_depth", {})], "residual"),
])
def test_what_the_rewrite_cannot_place_is_one_line_why(model_name, regs, words):
    """Defect caught: a setting silently run without its regularizer (a subclassed model, a model
    with no hidden block, weights the rewrite cannot penalize)."""
    f = facts(model_name, regs)
    assert f["reason"] and words in f["reason"] and "\n" not in f["reason"]


def test_regularize_refuses_what_placeable_refuses():
    """Defect caught: regularize() returning an unregularized model for a setting it cannot place."""
    from bench.workloads.rewrite import NotPlaceable, regularize
    from bench.regularizers import recipe_for

    with pytest.raises(NotPlaceable, match="subclassed"):
        regularize(user_model("subclassed"), recipe_for([L2]))


def test_trial_schema_takes_the_placements():
    """Defect caught: a record carrying model.regularizer_placements judged invalid, or a malformed
    placement (no layer name) accepted."""
    from tests.test_schema import ok_record, problems

    record = ok_record()
    record["model"] = {"workload_kind_inferred": True, "regularizer_placements": [
        {"regularizer": "dropout", "layer": "h1", "what": "dropout_after", "inserted": "h1_dropout", "after": "h1"},
        {"regularizer": "l2", "layer": "out", "what": "kernel_regularizer"}]}
    assert problems(record) == []
    del record["model"]["regularizer_placements"][1]["layer"]
    assert len(problems(record)) == 1 and "layer" in problems(record)[0]


def test_recipe_aware_helpers_are_public_and_documented():
    """Defect caught: a helper a recipe-aware user build needs (dense_block and its kin) missing
    from the public names, undocumented, or absent from the page users read."""
    from bench.workloads import common

    page = (ROOT / "bench" / "workloads" / "README.md").read_text()
    section = page[page.index("## Helpers for a recipe-aware build"):]
    for name in common.__all__:
        assert (getattr(common, name).__doc__ or "").strip(), name
        assert f"`{name}" in section, name
    assert "regularize(" in section and "placeable(" in section


def test_every_kernel_of_every_known_layer_kind_is_regularized():
    """Defects caught: a Conv1D, separable, depthwise, attention or EinsumDense kernel left without
    its penalty or max-norm (or a max-norm over the wrong axes), attention dropout not set, a
    hidden block without its BatchNorm and Dropout."""
    import keras

    from bench.workloads.rewrite import regularize
    from bench.regularizers import recipe_for

    regs = [("l2", {"l2": 1e-4}), ("max_norm", {"max_value": 2.0}), DROPOUT, BATCH_NORM]
    new, placements = regularize(user_model("zoo"), recipe_for(regs), regularizers=regs)
    axes = {v.path: (v.regularizer is not None, v.constraint and v.constraint.axis) for v in new.weights
            if v.path.endswith("kernel")}
    assert axes == {"conv/kernel": (True, [0, 1]), "sep/depthwise_kernel": (True, [0]),
                    "sep/pointwise_kernel": (True, [0, 1]), "depthwise/kernel": (True, [0]),
                    **{f"attention/{k}/kernel": (True, 0) for k in ("query", "key", "value")},
                    "attention/attention_output/kernel": (True, [0, 1]), "einsum/kernel": (True, [0]),
                    "out/kernel": (True, 0)}
    assert new.get_layer("attention").dropout == 0.25
    for block in ("conv", "sep", "depthwise"):
        assert {(p["what"], p.get("inserted")) for p in placements if p["layer"] == block} >= {
            ("batch_norm_before_activation", f"{block}_bn"), ("dropout_after", f"{block}_dropout")}
        assert isinstance(new.get_layer(f"{block}_dropout"), keras.layers.Dropout)
    assert not [p for p in placements if p["layer"] in ("einsum", "out") and "inserted" in p]


PLACED = [{"regularizer": "l2", "layer": "h1", "what": "kernel_regularizer"},
          {"regularizer": "l2", "layer": "out", "what": "kernel_regularizer"},
          {"regularizer": "dropout", "layer": "h1", "what": "dropout_after", "inserted": "h1_dropout", "after": "h1"}]
PLACED_TEXT = "l2: kernel_regularizer on h1, out; dropout: h1_dropout after h1"


def test_records_and_report_say_where_each_regularizer_was_placed(tmp_path):
    """Defect caught: placements recorded by the trial but missing from trials.csv and the report."""
    from analysis.report import write_report
    from bench import records
    from tests.fixtures.synthetic_runs import write_run

    run = write_run(tmp_path / "run", settings={"none": (1.0, 1.0, 0.0), "dropout": (1.2, 1.0, 0.01)},
                    precisions={"float32": 1.0}, repeats=2)
    for path in (run / "trials").glob("*.json"):
        doc = json.loads(path.read_text())
        if doc["trial"]["setting"] == "dropout":
            doc["model"] = {"regularizer_placements": PLACED, "workload_kind_inferred": False}
            path.write_text(json.dumps(doc))
            assert records.flatten_trial(doc)["regularizer_placements"] == PLACED_TEXT
    write_report(run)
    summary = (run / "report" / "summary.md").read_text()
    section = summary[summary.index("## Where regbench placed the regularizers"):]
    assert f"| digits_mlp | dropout | {PLACED_TEXT} |" in section.split("\n## ")[0]
    assert PLACED_TEXT in (run / "report" / "index.html").read_text()
