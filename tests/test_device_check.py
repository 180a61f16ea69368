"""A GPU trial proves it ran on the GPU: after building the model the runner asks the framework where
it placed it (TensorFlow, JAX and torch each), and a GPU trial the framework put on the CPU (a
broken CUDA plugin, a CPU-only build) fails with that reason instead of recording CPU step times
as `device_kind: gpu`. On this CPU-only machine every framework falls back to the CPU, which is
exactly the failure to catch. The same trial processes show the float32 matmul policy applied
through each framework's own switch."""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import pytest

from bench.trial import Trial
from tests.conftest import ROOT


def run_child(trial: Trial, tmp_path, gpu: bool) -> dict:
    """One trial in a fresh interpreter, the executors' way, told it has a GPU (or not)."""
    src, out = tmp_path / "t.request.json", tmp_path / "t.out.json"
    src.write_text(json.dumps({"kind": "trial", "unit": trial.to_dict(), "executor": "process", "gpu": gpu}))
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": str(ROOT),
           "OMP_NUM_THREADS": "1"}  # as a 1-CPU Ray task would leave it
    proc = subprocess.run([sys.executable, "-m", "bench.executors.child", str(src), str(out)], cwd=ROOT,
                          capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return json.loads(out.read_text())


# The float32 matmul policy each trial process applied, as its framework reports it (tests/test_float32_policy.py):
# each case sets the value its framework does NOT default to, so a policy left unapplied shows.
APPLIED = {
    "jax": ("ieee", {"jax_default_matmul_precision": "float32"}),
    "torch": ("tf32", {"float32_matmul_precision": "high", "cuda.matmul.allow_tf32": True,
                       "cudnn.allow_tf32": True}),
    "tensorflow": ("ieee", {"tensor_float_32_execution": False}),
}


@pytest.mark.parametrize("backend", ["jax", "torch", "tensorflow"])
def test_gpu_trial_that_runs_on_the_cpu_fails_with_the_reason(tmp_path, backend):
    if importlib.util.find_spec(backend) is None:
        pytest.skip(f"{backend} is not installed")
    policy, applied = APPLIED[backend]
    trial = Trial(workload="digits_mlp", regularizers=(), precision="float32", batch_size=64, epochs=2,
                  backend=backend, float32_matmul=policy)
    r = run_child(trial, tmp_path, gpu=True)
    assert r["status"] == "failed", (r["status"], r.get("reason"))
    assert r["reason"].startswith("a GPU trial ran on the CPU: " + backend), r["reason"]
    assert r["node"]["device_kind"] == "gpu" and "cpu" in r["node"]["framework_device"].lower()
    assert "timing" not in r  # no step times were recorded as GPU step times
    assert r["trial"]["float32_matmul"] == policy and r["process"]["float32_matmul"] == applied
    recorded = r["process"]["environment"]  # the trial process's thread and device environment
    assert recorded["CUDA_DEVICE_ORDER"] == "PCI_BUS_ID" and recorded["KERAS_BACKEND"] == backend
    assert recorded["OMP_NUM_THREADS"] is None  # a GPU trial without a cap: no inherited OMP_NUM_THREADS=1


def test_device_names_per_backend():
    from bench.backends import WrongDevice, check_device, is_gpu_device

    assert is_gpu_device("tensorflow", "/job:localhost/replica:0/task:0/device:GPU:0")
    assert not is_gpu_device("tensorflow", "/job:localhost/replica:0/task:0/device:CPU:0")
    assert is_gpu_device("jax", "gpu:0 (NVIDIA H100 80GB HBM3)") and is_gpu_device("jax", "cuda:1 (NVIDIA H200)")
    assert not is_gpu_device("jax", "cpu:0 (cpu)")
    assert is_gpu_device("torch", "cuda:0") and not is_gpu_device("torch", "cpu")

    check_device("jax", "gpu:0 (NVIDIA H200)", gpu=True)
    check_device("torch", "cpu", gpu=False)
    with pytest.raises(WrongDevice, match="a CPU trial ran on a GPU"):
        check_device("torch", "cuda:0", gpu=False)
    with pytest.raises(WrongDevice, match="a GPU trial ran on the CPU"):
        check_device("tensorflow", "/job:localhost/replica:0/task:0/device:CPU:0", gpu=True)
