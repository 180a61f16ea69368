"""transformer_encoder and resnet50: sizes and FLOPs against independent counts, tiny versions
trained with every applicable regularizer through the real runner on TensorFlow, torch and JAX,
and convergence of the synthetic transformer task to its target."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from bench.regularizers import REGISTRY
from bench.trial import Trial
from tests.conftest import ROOT, run_worker

TINY = {
    "transformer_encoder": dict(model={"layers": 2, "width": 16, "heads": 2, "seq_len": 8, "vocab": 32, "classes": 4},
                                batch_size=128, max_train_samples=256),
    "resnet50": dict(model={"image_size": 32, "classes": 10, "depth": 14, "width": 8},
                     batch_size=16, max_train_samples=32),
}


def encoder_macs(layers, width, seq_len, classes, heads=None):
    """Hand count per sample: per block 4 projections (L*d*d each), Q.K^T and A.V (L*L*d each),
    the MLP (2 * L*d*4d); then the pooled head (d*classes)."""
    L, d = seq_len, width
    return layers * (4 * L * d * d + 2 * L * L * d + 2 * L * d * 4 * d) + d * classes


def test_resnet50_parameters_and_flops_match_the_published_counts():
    import keras

    from bench.measure.compute import forward_flops_per_sample
    from bench.regularizers import recipe_for
    from bench.workloads import resnet50

    data = resnet50.load(0, 4)  # 224x224x3, 1000 classes
    model = resnet50.build(recipe_for([("batch_norm", {})]), data)
    trainable = sum(int(np.prod(v.shape)) for v in model.trainable_variables)
    assert trainable == 25_557_032  # the published ResNet-50 with its 1000-class head (torchvision's count)
    macs = forward_flops_per_sample(model) / 2
    assert 3.8e9 <= macs <= 4.1e9  # published: ~3.8-4.1 G multiply-adds per 224x224 image
    reference = keras.applications.ResNet50(weights=None)  # Keras' own build of the architecture
    assert forward_flops_per_sample(reference) == forward_flops_per_sample(model)
    # keras.applications adds a bias to every conv (before BN): 25,636,712 = ours + those biases + BN moving stats
    conv_bias = sum(la.filters for la in reference.layers if isinstance(la, keras.layers.Conv2D))
    bn = sum(2 * la.gamma.shape[0] for la in model.layers if isinstance(la, keras.layers.BatchNormalization))
    assert reference.count_params() == trainable + conv_bias + bn  # + moving mean and variance
    plain = resnet50.build(recipe_for([]), data)  # without batch norm: a bias on every conv instead of gamma, beta
    assert plain.count_params() == trainable - bn + conv_bias


def test_encoder_flops_match_the_hand_formula():
    from bench.measure.compute import compute_section, forward_flops_per_sample
    from bench.regularizers import recipe_for
    from bench.workloads import transformer_encoder as te

    for o in ({"layers": 4, "width": 256, "heads": 4, "seq_len": 128, "vocab": 1000, "classes": 4},
              {"layers": 2, "width": 48, "heads": 3, "seq_len": 20, "vocab": 50, "classes": 5}):
        model = te.build(recipe_for([]), te.load(0, 8, **o))
        expected = 2.0 * encoder_macs(o["layers"], o["width"], o["seq_len"], o["classes"])
        assert forward_flops_per_sample(model) == expected
        assert compute_section(model, 100.0, None)["flops_per_sample"] == 3 * expected
        d, v, L = o["width"], o["vocab"], o["seq_len"]
        per_block = 4 * (d * d + d) + 2 * 2 * d + (d * 4 * d + 4 * d) + (4 * d * d + d)  # attention, 2 LN, MLP
        assert model.count_params() == v * d + L * d + o["layers"] * per_block + 2 * d + d * o["classes"] + o["classes"]


def test_encoder_task_is_a_deterministic_function_of_the_tokens():
    from bench.workloads import transformer_encoder as te

    a = te.load(3, None, seq_len=32, vocab=64, classes=4)
    b = te.load(3, None, seq_len=32, vocab=64, classes=4)
    assert (a.x_train == b.x_train).all() and (a.y_val == b.y_val).all()  # same seed, same data
    x = np.concatenate([a.x_train, a.x_val])
    counts = np.stack([(x % 4 == g).sum(1) for g in range(4)], 1)
    assert (counts.argmax(1) == np.concatenate([a.y_train, a.y_val])).all()  # label = majority token group
    assert 0.15 < np.bincount(a.y_train).min() / len(a.y_train)  # every class well represented
    assert not (te.load(4, None, seq_len=32, vocab=64, classes=4).x_train == a.x_train).all()


def test_encoder_converges_to_its_target_through_the_runner(tmp_path):
    """The smoke-sized task reaches the workload's default target (0.90) in a fresh trial process."""
    model = {"layers": 2, "width": 32, "heads": 2, "seq_len": 32, "vocab": 64, "classes": 4}
    t = Trial(workload="transformer_encoder", regularizers=(), precision="float32", batch_size=64, epochs=6,
              learning_rate=2e-3, max_train_samples=2048, cpu_threads=2, model=model)
    r = run_worker(t, tmp_path)
    assert r["status"] == "ok", r.get("reason")
    c = r["convergence"]
    assert c["applicable"] and c["target_val_accuracy"] == 0.90
    assert c["best_val_accuracy"] >= 0.90 and c["epochs_to_target"] <= 6 and c["time_to_target_s"] > 0
    assert r["compute"]["flops_per_sample"] == 3 * 2.0 * encoder_macs(2, 32, 32, 4)
    assert r["trial"]["model"] == model


# One process per backend runs every trial through bench.runner.run_trial (the real runner: data,
# build, compile, fit under the trackers, evaluate, record) and prints one JSON line per trial.
TRAIN_SCRIPT = r"""
import json, sys
from bench.regularizers import not_applicable
from bench.runner import run_trial
from bench.trial import Trial
from bench.workloads import WORKLOADS

backend, plan = sys.argv[1], json.loads(sys.argv[2])
for workload, precision, regs, kw in plan:
    regs = tuple((n, p) for n, p in regs)
    if not_applicable(regs, WORKLOADS[workload]):
        continue
    t = Trial(workload=workload, regularizers=regs, precision=precision, backend=backend, epochs=2,
              steps_per_epoch=2, learning_rate=1e-3, **kw)
    r = run_trial(t, gpu=False)
    curve = (r.get("convergence") or {}).get("curve") or [{}]
    timing = r.get("timing") or {}
    print(json.dumps({"workload": workload, "setting": r["trial"]["setting"], "precision": precision,
                      "status": r["status"], "reason": r.get("reason"), "loss": curve[-1].get("loss"),
                      "jit": timing.get("jit_compile"), "feed": timing.get("input_feed"),
                      "input_s": timing.get("input_time_per_batch_s"), "bound": timing.get("input_side_bound")}),
          flush=True)
"""


def defaults(name):
    from bench.regularizers import normalize

    return normalize(name, {}, "t")


def run_plan(backend: str, plan: list) -> list[dict]:
    proc = subprocess.run([sys.executable, "-c", TRAIN_SCRIPT, backend, json.dumps(plan)], capture_output=True,
                          text=True, timeout=600, cwd=ROOT,
                          env={**os.environ, "KERAS_BACKEND": backend, "CUDA_VISIBLE_DEVICES": "",
                               "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stderr[-4000:]
    return [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]


NEW_ENTRIES = ("weight_decay", "label_smoothing", "mixup", "cutmix", "spatial_dropout", "max_norm", "stochastic_depth")


def one_by_one(precision: str) -> list:
    """(workload, precision, setting, trial kwargs): the baseline and each newer entry alone (the
    classic eight are trained in everything_at_once; they have their own tests on digits_mlp)."""
    return [(w, precision, [defaults(n)] if n else [], {**kw, "cpu_threads": None})
            for w, kw in TINY.items() for n in [None, *NEW_ENTRIES]]


def everything_at_once(precision: str) -> list:
    """Per workload one setting with every applicable registry entry combined (augmentation on
    the input side, so that XLA stays on)."""
    from bench.regularizers import not_applicable
    from bench.workloads import WORKLOADS

    plan = []
    for w, kw in TINY.items():
        regs = [defaults(n) for n in REGISTRY if n != "augmentation" and not not_applicable([defaults(n)], WORKLOADS[w])]
        if not not_applicable([defaults("augmentation")], WORKLOADS[w]):
            regs.append(("augmentation", {"strength": 0.1, "where": "pipeline"}))
        plan.append((w, precision, regs, {**kw, "cpu_threads": None}))
    return plan


FEEDS = {"resnet50": "uint8-cast-on-device", "transformer_encoder": "int32-host"}


def check(records: list, expected: list):
    assert sorted((r["workload"], r["setting"], r["precision"]) for r in records) == sorted(expected)
    for r in records:
        assert r["status"] == "ok", r
        assert np.isfinite(r["loss"]), r
        # images fed as uint8 and cast in the model, mixup and cutmix included; the input side timed alone
        assert r["feed"] == FEEDS[r["workload"]] and r["input_s"] > 0 and r["bound"] in (True, False), r


def expected_runs(plan: list) -> list:
    """(workload, setting label, precision) of the planned trials that apply - counted here from
    the workloads' kinds, independently of the registry's applies_to."""
    from bench.regularizers import setting_label

    not_for_tokens = {"mixup", "cutmix", "spatial_dropout", "batch_norm", "augmentation"}
    return [(w, setting_label([tuple(r) for r in regs]), prec) for w, prec, regs, _ in plan
            if not (w == "transformer_encoder" and {n for n, _ in regs} & not_for_tokens)]


# Precisions covered for every entry: mixed_bfloat16 one by one on TensorFlow, float32 and
# mixed_bfloat16 all at once on torch, mixed_float16 all at once on JAX (a CPU without XLA runs
# float16 only through emulation: TensorFlow and torch record it as skipped here).

def test_tiny_workloads_train_with_each_newer_regularizer_on_tensorflow():
    plan = one_by_one("mixed_bfloat16")
    records = run_plan("tensorflow", plan)
    check(records, expected_runs(plan))
    assert len(records) == (1 + 4) + (1 + 7)


def test_tiny_workloads_train_with_every_applicable_regularizer_at_once_on_torch():
    plan = everything_at_once("float32") + everything_at_once("mixed_bfloat16")
    records = run_plan("torch", plan)
    check(records, expected_runs(plan))
    combined = {r["workload"]: r["setting"] for r in records}
    assert combined["resnet50"].count("+") + 1 == len(REGISTRY) - 1  # every entry but dropout_no_attention
    assert combined["transformer_encoder"].count("+") + 1 == len(REGISTRY) - 5


@pytest.mark.parametrize("precision", ["mixed_float16"])
def test_everything_combined_under_mixed_float16_on_jax(precision):
    """JAX compiles the step (XLA) on the CPU too, so mixed_float16 runs here rather than being
    skipped: every applicable entry together, loss-scaled."""
    plan = everything_at_once(precision)
    records = run_plan("jax", plan)
    check(records, expected_runs(plan))
    assert all(r["jit"] is True for r in records)  # XLA on: pipeline augmentation adds no RandomTranslation
