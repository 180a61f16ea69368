"""The attention path a transformer trial ran (fused dot_product_attention or the explicit einsum
path that attention dropout forces), the dropout setting without attention dropout, the report's
note when a setting's attention path differs from its baseline's, and the per-step host sync of
torch's loss scaling (mixed_float16), each checked against what Keras really does."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from bench import regularizers as R
from tests.conftest import ROOT, run_worker
from tests.model_facts import TINY_MODELS, data_for


def setting(*names):
    return [R.normalize(n, {}, "t") for n in names]


def test_dropout_without_attention_is_its_own_setting():
    from bench.workloads import WORKLOADS

    full, residual = R.recipe_for(setting("dropout")), R.recipe_for(setting("dropout_no_attention"))
    assert (full.dropout_rate, full.attention_dropout_rate) == (0.3, 0.3)
    assert (residual.dropout_rate, residual.attention_dropout_rate) == (0.3, 0.0)
    applies = {w for w, m in WORKLOADS.items() if R.not_applicable(setting("dropout_no_attention"), m) is None}
    assert applies == {"transformer_encoder"}  # elsewhere it would be `dropout` again
    assert "attention" in R.not_applicable(setting("dropout_no_attention"), WORKLOADS["digits_mlp"])
    model = WORKLOADS["transformer_encoder"].build(residual, data_for("transformer_encoder"))
    dropouts = sorted(layer.name for layer in model.layers if type(layer).__name__ == "Dropout")
    assert dropouts == [f"block{i}_{p}" for i in range(2) for p in ("attention_dropout", "mlp_dropout",
                                                                    "mlp_out_dropout")]
    assert {layer._dropout for layer in model.layers if type(layer).__name__ == "MultiHeadAttention"} == {0.0}


def test_gpu_suite_offers_it_beside_dropout():
    from bench import suite as S

    gpu = S.load("gpu")
    settings = {t.setting for t in gpu.trials if t.workload == "transformer_encoder"}
    assert {"dropout", "dropout_no_attention"} <= settings
    assert not any(t.setting == "dropout_no_attention" for t in gpu.trials if t.workload != "transformer_encoder")


def _keras_calls_fused(model, x) -> bool:
    """Whether a training-mode forward pass of `model` calls ops.dot_product_attention."""
    import keras.src.ops as ops

    calls = []
    original = ops.dot_product_attention
    ops.dot_product_attention = lambda *a, **k: calls.append(1) or original(*a, **k)
    try:
        model(x, training=True)
    finally:
        ops.dot_product_attention = original
    return bool(calls)


@pytest.mark.parametrize("names, path", [((), "fused"), (("dropout",), "explicit"),
                                         (("dropout_no_attention",), "fused")])
def test_recorded_path_is_the_one_keras_takes(names, path):
    from bench.attention import attention_record
    from bench.workloads import WORKLOADS

    data = data_for("transformer_encoder")
    model = WORKLOADS["transformer_encoder"].build(R.recipe_for(setting(*names)), data)
    record = attention_record(model, "tensorflow")
    assert record["attention_path"] == path
    assert _keras_calls_fused(model, data.x_train[:2]) == (path == "fused")
    assert record["attention_kernel"] == "einsum"  # TensorFlow's dot_product_attention is einsum + softmax too


def test_a_model_without_attention_records_null_with_the_reason():
    from bench.attention import attention_record
    from bench.workloads import WORKLOADS

    record = attention_record(WORKLOADS["digits_mlp"].build(R.recipe_for([]), data_for("digits_mlp")), "tensorflow")
    assert record["attention_path"] is None and record["attention_kernel"] is None
    assert "no MultiHeadAttention" in record["null_reasons"]["attention_path"]


def test_jax_names_its_fused_kernel():
    """On a CPU Keras's cuDNN check fails: the fused path runs JAX's XLA attention."""
    code = ("from bench.attention import attention_record; from bench.regularizers import recipe_for; "
            "from bench.workloads import WORKLOADS; from tests.model_facts import data_for; import json; "
            "m = WORKLOADS['transformer_encoder'].build(recipe_for([]), data_for('transformer_encoder')); "
            "print(json.dumps(attention_record(m, 'jax')))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=ROOT,
                          env={**os.environ, "KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu",
                               "CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    record = json.loads(proc.stdout.strip().splitlines()[-1])
    assert (record["attention_path"], record["attention_kernel"]) == ("fused", "xla")


def test_torch_trial_records_attention_host_sync_and_datasheet_mfu(tmp_path):
    """One real torch trial of the tiny transformer under mixed_float16 (loss scaling)."""
    from bench.trial import Trial

    trial = Trial("transformer_encoder", tuple(setting("dropout_no_attention")), "mixed_float16", 32,
                  backend="torch", epochs=2, max_train_samples=128, model=TINY_MODELS["transformer_encoder"],
                  allow_slow_precision=True, cpu_threads=1)
    record = run_worker(trial, tmp_path)
    assert record["status"] == "ok", record.get("reason")
    timing = record["timing"]
    assert (timing["attention_path"], timing["attention_kernel"]) == ("fused", "sdpa")
    assert timing["host_sync_per_step"] is True and "LossScaleOptimizer" in timing["host_sync_reason"]
    compute = record["compute"]
    assert compute["mfu_datasheet"] is None and "CPU" in compute["null_reasons"]["mfu_datasheet"]
    from bench import schema

    assert schema.check_trial(record) == []


def test_torch_loss_scaling_waits_on_the_device_every_step():
    """The fact behind host_sync_per_step: under mixed_float16 a torch training step converts device
    tensors to Python bools (LossScaleOptimizer's ops.cond is a Python `if` on torch); float32 does not."""
    code = r"""
import json, torch, keras
from bench.backends import host_sync_record
counts = {}
for policy in ("float32", "mixed_float16"):
    keras.config.set_dtype_policy(policy)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    model.compile(optimizer="adam", loss="mse")
    x, y = torch.ones((8, 4)).numpy(), torch.ones((8, 3)).numpy()
    model.train_on_batch(x, y)  # build
    seen, original = [], torch.Tensor.__bool__
    torch.Tensor.__bool__ = lambda self: seen.append(1) or original(self)
    try:
        model.train_on_batch(x, y)
    finally:
        torch.Tensor.__bool__ = original
    counts[policy] = [len(seen), host_sync_record("torch", model)["host_sync_per_step"]]
print(json.dumps(counts))
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=ROOT,
                          env={**os.environ, "KERAS_BACKEND": "torch", "CUDA_VISIBLE_DEVICES": "",
                               "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    counts = json.loads(proc.stdout.strip().splitlines()[-1])
    assert counts["float32"] == [0, False]
    assert counts["mixed_float16"][0] >= 1 and counts["mixed_float16"][1] is True


def test_other_backends_keep_loss_scaling_on_the_device():
    import keras

    from bench.backends import host_sync_record

    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    model.compile(optimizer=keras.optimizers.LossScaleOptimizer(keras.optimizers.Adam()), loss="mse")
    for backend in ("tensorflow", "jax"):
        assert host_sync_record(backend, model) == {"host_sync_per_step": False, "host_sync_reason": None}


def test_report_says_when_a_settings_attention_path_differs_from_its_baseline(tmp_path):
    import analysis
    from tests.fixtures import synthetic_runs as synthetic

    run = synthetic.write_run(tmp_path / "run", settings={"none": (1.0, 1.0, 0.0), "l2": (1.1, 1.0, 0.0),
                                                          "dropout": (1.3, 1.0, 0.0)},
                              precisions={"mixed_bfloat16": 1.0}, repeats=2, backend="jax")
    paths = {"none": ("fused", "cudnn"), "l2": ("fused", "cudnn"), "dropout": ("explicit", "einsum")}
    for f in (run / "trials").glob("*.json"):
        doc = json.loads(f.read_text())
        path, kernel = paths[doc["trial"]["setting"]]
        doc["timing"].update(attention_path=path, attention_kernel=kernel)
        f.write_text(json.dumps(doc))
    table = analysis.overhead(analysis.load(run).trials)
    notes = table.groupby("setting")["note"].agg(lambda s: set(s))
    assert all("attention: explicit (einsum), baseline fused (cudnn)" in n for n in notes["dropout"])
    assert not any("attention" in n for n in notes["l2"])
    index = analysis.write_report(run)
    assert "attention: explicit (einsum), baseline fused (cudnn)" in (index.parent / "summary.md").read_text()
