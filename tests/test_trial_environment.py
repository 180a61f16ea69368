"""Both executors give a trial process the same environment, built in one place
(trial_process.trial_environment over backends.process_environment): the thread variables, the
PCI bus order, the GPU as a UUID, and no OMP_NUM_THREADS inherited from a Ray worker on a GPU trial
without a thread cap. The executors' own code runs here (local.run_local and ray.task.unit_task),
with a fake pynvml (two GPUs), a fake Ray runtime context, and a fake Popen that records the
environment the trial process would have started with. XLA_FLAGS, when regbench sets any, holds
only `--` tokens (XLA's parser drops every flag after the first token that does not start with -).
"""
from __future__ import annotations

import json
import pathlib
import sys
import tempfile
from types import SimpleNamespace

import pytest

from bench import backends, env
from tests.fake_nvml import FakeClock, FakeGpu, FakeNvml, install

MANAGED = sorted(set(backends.RECORDED_ENV) | set(backends.process_environment("jax", 2, True)))


class FakePopen:
    """Stands in for the trial process: keeps its environment, leaves a record, exits 0."""

    envs: list = []

    def __init__(self, args, env=None, **kwargs):
        FakePopen.envs.append(dict(env))
        pathlib.Path(args[-1]).write_text(json.dumps({"status": "ok", "trial_id": "x"}))
        self.pid = 424242

    def poll(self):
        return 0

    def wait(self, timeout=None):
        return 0


class Sink:
    """The store and progress the executors write to."""

    def __init__(self):
        self.records = []
        self.path = pathlib.Path("runs") / "env-run"  # the run's id names its scratch

    def write_record(self, kind, record):
        self.records.append(record)

    def write_log(self, *args):
        pass

    def __getattr__(self, name):  # progress: started, finished, set_running, note
        return lambda *a, **k: None


@pytest.fixture
def node(monkeypatch, tmp_path):
    from bench.executors import trial_process

    install(monkeypatch, FakeNvml(FakeClock(), [FakeGpu("GPU-aaa"), FakeGpu("GPU-bbb")]))
    monkeypatch.setattr(trial_process.subprocess, "Popen", FakePopen)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    for var in backends.RECORDED_ENV:
        monkeypatch.delenv(var, raising=False)
    FakePopen.envs = []
    yield
    env.fingerprint.cache_clear()


def _suite(device: str, **extra):
    from bench import suite

    return suite.parse({"name": "t", "workloads": ["digits_mlp"], "regularizers": ["none"], "precisions": ["float32"],
                        "batch_sizes": [64], "repeats": 1, "backend": "jax", "device": device, **extra}, "t.yaml")


def _process_executor_env(s) -> dict:
    from bench.executors import local

    local.run_local([[s.trials[0]]], Sink(), s, Sink(), start_method="interpreter")
    return FakePopen.envs.pop()


def _ray_executor_env(s, monkeypatch, gpu_ids: list[str]) -> dict:
    """unit_task as a Ray worker runs it: Ray has set OMP_NUM_THREADS (the task's CPUs) and
    CUDA_VISIBLE_DEVICES (its GPUs) in the worker's environment."""
    from bench.executors.ray import task

    context = SimpleNamespace(get_accelerator_ids=lambda: {"GPU": gpu_ids}, get_node_id=lambda: "node-1",
                              get_placement_group_id=lambda: None)
    fake_ray = SimpleNamespace(get_runtime_context=lambda: context, exceptions=SimpleNamespace(RayError=Exception),
                               util=SimpleNamespace(get_node_ip_address=lambda: "127.0.0.1"))
    monkeypatch.setitem(sys.modules, "ray", fake_ray)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    if gpu_ids:
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", ",".join(gpu_ids))
    out = task.unit_task("trial", s.trials[0].to_dict(), bool(gpu_ids), None,
                          {"run_id": f"env-{len(gpu_ids)}", "start_method": "interpreter"})
    assert out["record"]["status"] == "ok"
    return FakePopen.envs.pop()


def test_gpu_trial_gets_the_same_environment_from_both_executors(node, monkeypatch):
    from bench.executors import local

    s = _suite("gpu", cpus_per_trial=4)
    assert s.trials[0].cpu_threads == 4 and local.slots_for(s) == [["0"], ["1"]]
    by_process = _process_executor_env(s)  # the first slot: GPU 0 in PCI bus order
    by_ray = _ray_executor_env(s, monkeypatch, ["0"])  # Ray gave this task GPU 0
    assert {k: by_process.get(k) for k in MANAGED} == {k: by_ray.get(k) for k in MANAGED}
    assert by_ray["CUDA_VISIBLE_DEVICES"] == "GPU-aaa" and by_ray["CUDA_DEVICE_ORDER"] == "PCI_BUS_ID"
    assert by_ray["OMP_NUM_THREADS"] == "4"  # the GPU trial's own host-thread cap, not Ray's 1
    assert by_ray["KERAS_BACKEND"] == "jax" and "JAX_PLATFORMS" not in by_ray


def test_cpu_trial_gets_the_same_environment_from_both_executors(node, monkeypatch):
    s = _suite("cpu", cpus_per_trial=2)
    by_process = _process_executor_env(s)
    by_ray = _ray_executor_env(s, monkeypatch, [])
    assert {k: by_process.get(k) for k in MANAGED} == {k: by_ray.get(k) for k in MANAGED}
    assert by_ray["OMP_NUM_THREADS"] == "2" and by_ray["TF_NUM_INTRAOP_THREADS"] == "2"  # the cap, not Ray's 1
    assert by_ray["CUDA_VISIBLE_DEVICES"] == "" and by_ray["JAX_PLATFORMS"] == "cpu"


@pytest.mark.parametrize("backend", backends.BACKENDS)
@pytest.mark.parametrize("cpu_threads", [None, 1, 4])
@pytest.mark.parametrize("gpu", [None, True, False])
def test_xla_flags_when_set_hold_only_flags(backend, cpu_threads, gpu, monkeypatch):
    from bench.executors.trial_process import trial_environment

    monkeypatch.delenv("XLA_FLAGS", raising=False)
    for environment in (backends.process_environment(backend, cpu_threads, gpu),
                        trial_environment(backend, cpu_threads, None if not gpu else [], base={})):
        flags = environment.get("XLA_FLAGS")
        assert flags is None or all(token.startswith("--") for token in flags.split()), flags
