"""A GPU unit never comes out of a process that imported its framework with GPUs hidden.

JAX reads JAX_PLATFORMS into `jax.config.jax_platforms` when it is imported, and Keras's torch
backend picks its default device when `keras.src.backend.torch.core` loads: a zygote fixes both for
every child it forks. So the Launcher keeps one zygote per backend and device kind, and each record
says how the framework itself saw the device (`process.framework_config`). On this CPU machine a
GPU unit still fails its device check (there is no GPU), but it must fail for the right reason:
from a GPU-configured zygote, with the framework's own view quoted in the reason.

For torch, a sitecustomize makes `torch.cuda.is_available()` answer as NVML would on a one-GPU
machine (true when CUDA_VISIBLE_DEVICES names a device), so the device Keras picks at import shows.
"""
from __future__ import annotations

import json
import os
import time

import pytest

from bench.executors.trial_process import Launcher, collect
from bench.trial import Trial

FAKE_CUDA = """
import os
if os.environ.get("KERAS_BACKEND") == "torch" and os.environ.get("REGBENCH_TEST_FAKE_CUDA") == "1":
    import torch
    torch.cuda.is_available = lambda: bool(os.environ.get("CUDA_VISIBLE_DEVICES", "").strip())
"""


def launch_and_collect(launcher: Launcher, trial: Trial, gpu_tokens) -> dict:
    proc = launcher.launch(trial, gpu_tokens)
    assert proc.start_method == "zygote", proc.log_tail()
    end = time.monotonic() + 300
    while proc.poll() is None and time.monotonic() < end:
        proc.wait(1.0)
    outcome = collect(proc, "process")
    assert outcome.record is not None, outcome.died
    return outcome.record


def trial_for(backend: str) -> Trial:
    return Trial(workload="digits_mlp", regularizers=(), precision="float32", batch_size=64, epochs=2,
                 backend=backend)


@pytest.mark.parametrize("backend", ["jax", "torch"])
def test_gpu_unit_forks_from_a_gpu_configured_zygote(tmp_path, monkeypatch, backend):
    pytest.importorskip(backend)
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(FAKE_CUDA)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(p for p in (str(site), os.environ.get("PYTHONPATH")) if p))
    monkeypatch.setenv("REGBENCH_TEST_FAKE_CUDA", "1")
    monkeypatch.delenv("JAX_PLATFORMS", raising=False)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    work = tmp_path / "work"
    work.mkdir()
    launcher = Launcher(work, "process", "zygote")
    try:
        cpu = launch_and_collect(launcher, trial_for(backend), None)
        gpu = launch_and_collect(launcher, trial_for(backend), ["0"])
        zygotes = dict(launcher.zygotes())
    finally:
        launcher.close()

    # two zygotes, one per device kind; each unit forked from its own kind's
    assert set(zygotes) == {(backend, "cpu"), (backend, "gpu")}
    assert cpu["process"]["parent_pid"] == zygotes[(backend, "cpu")]
    assert gpu["process"]["parent_pid"] == zygotes[(backend, "gpu")]
    assert cpu["process"]["zygote_device_kind"] == "cpu" and gpu["process"]["zygote_device_kind"] == "gpu"

    # the CPU unit ran, on the CPU, as the framework itself says
    assert cpu["status"] == "ok", cpu.get("reason")
    seen_cpu, seen_gpu = cpu["process"]["framework_config"], gpu["process"]["framework_config"]
    # the GPU unit's framework was configured for a GPU at import; with no GPU here it fails the
    # device check, and the reason quotes what the framework saw
    assert gpu["status"] == "failed"
    if backend == "jax":
        assert seen_cpu["jax_platforms"] == "cpu" and seen_cpu["devices_platform"] == "cpu"
        assert seen_gpu["jax_platforms"] in (None, ""), seen_gpu  # JAX picks the best platform it finds
        assert gpu["reason"].startswith("a GPU trial ran on the CPU"), gpu["reason"]
        assert "jax_platforms" in gpu["reason"]
    else:
        assert seen_cpu == {"keras_default_device": "cpu", "cuda_available": False}
        assert seen_gpu == {"keras_default_device": "cuda", "cuda_available": True}, seen_gpu


def test_framework_config_per_backend_in_this_process():
    from bench.backends import framework_config

    pytest.importorskip("jax")
    # this test process imported nothing with JAX_PLATFORMS forced; the keys are what matters
    seen = framework_config("jax")
    assert set(seen) >= {"jax_platforms", "devices_platform"}
    assert json.dumps(seen)  # plain data, recordable
