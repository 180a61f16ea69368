"""Shared helpers: run the real CLI and the real trial worker in subprocesses."""
from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent


def regbench(*args, cwd=None, timeout=600, env=None, check=False):
    """Run `python -m bench.cli ARGS`; returns CompletedProcess with text output."""
    e = {**os.environ, "CUDA_VISIBLE_DEVICES": "", **(env or {})}
    proc = subprocess.run([sys.executable, "-m", "bench.cli", *map(str, args)], cwd=cwd or ROOT,
                          capture_output=True, text=True, timeout=timeout, env=e)
    if check and proc.returncode != 0:
        raise AssertionError(f"regbench {' '.join(map(str, args))} exited {proc.returncode}:\n{proc.stderr[-3000:]}")
    return proc


def run_worker(trial, tmp_path: pathlib.Path, name: str = "t") -> dict:
    """Run one Trial as a CPU trial in a fresh interpreter (`python -m bench.executors.child`) and
    return its record."""
    src, out = tmp_path / f"{name}.request.json", tmp_path / f"{name}.out.json"
    src.write_text(json.dumps({"kind": "trial", "unit": trial.to_dict(), "executor": "process", "gpu": False}))
    proc = subprocess.run([sys.executable, "-m", "bench.executors.child", str(src), str(out)],
                          capture_output=True, text=True, timeout=600,
                          env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return json.loads(out.read_text())


def facts_in_child(module: str, plan: list, backend: str) -> list[dict]:
    """Run `python -m MODULE PLAN_JSON` on `backend` (CPU) and return the JSON lines it printed, one
    per plan entry (tests/model_facts.py, tests/rewrite_facts.py)."""
    proc = subprocess.run([sys.executable, "-m", module, json.dumps(plan)], capture_output=True,
                          text=True, timeout=600, cwd=ROOT,
                          env={**os.environ, "KERAS_BACKEND": backend, "CUDA_VISIBLE_DEVICES": "",
                               "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stderr[-4000:]
    results = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert len(results) == len(plan)
    return results


def validate(path) -> subprocess.CompletedProcess:
    """`regbench validate PATH`: a run directory or a trial file against the project's contract."""
    return regbench("validate", path, timeout=120)


# sitecustomize for processes of tests that need "no GPU" and "no network" to be true on any host:
# NVML cannot be imported (so no GPU is seen, whatever the machine has) and every connection or name
# lookup beyond the loopback is refused. CUDA_VISIBLE_DEVICES="" hides the GPUs from the frameworks.
OFFLINE_CPU = r"""
import socket, sys

sys.modules["pynvml"] = None  # `import pynvml` raises ImportError: NVML, hence every GPU, is invisible
_LOCAL = (None, "", "localhost", "127.0.0.1", "::1")


def _guard(connect):
    def local_only(self, address, *args):
        if self.family in (socket.AF_INET, socket.AF_INET6) and address[0] not in _LOCAL:
            raise OSError(101, f"Network is unreachable (blocked by the test): {address[0]}")
        return connect(self, address, *args)
    return local_only


socket.socket.connect = _guard(socket.socket.connect)
socket.socket.connect_ex = _guard(socket.socket.connect_ex)
_getaddrinfo = socket.getaddrinfo


def _no_dns(host, *args, **kwargs):
    if host not in _LOCAL:
        raise socket.gaierror(-3, f"Temporary failure in name resolution (blocked by the test): {host}")
    return _getaddrinfo(host, *args, **kwargs)


socket.getaddrinfo = _no_dns
"""


@pytest.fixture(scope="session")
def offline_cpu(tmp_path_factory) -> dict:
    """Environment for `regbench(..., env=offline_cpu)`: the process and its children see no GPU and
    no network (see OFFLINE_CPU), so a test that needs either absent does not depend on the host."""
    d = tmp_path_factory.mktemp("offline-cpu")
    (d / "sitecustomize.py").write_text(OFFLINE_CPU)
    return {"PYTHONPATH": os.pathsep.join(p for p in (str(d), str(ROOT), os.environ.get("PYTHONPATH")) if p),
            "CUDA_VISIBLE_DEVICES": ""}


@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory) -> pathlib.Path:
    """One real smoke run with the process executor, shared by the tests that read a run."""
    out = tmp_path_factory.mktemp("smoke")
    proc = regbench("run", "--suite", "smoke", "--executor", "process", "--out", out, check=True)
    return pathlib.Path(proc.stdout.strip().splitlines()[-1])


def write_suite(path: pathlib.Path, **fields) -> pathlib.Path:
    import yaml

    base = {"name": "t", "workloads": ["digits_mlp"], "regularizers": ["none"], "precisions": ["float32"],
            "batch_sizes": [64], "repeats": 1, "epochs": 2}
    base.update(fields)
    path.write_text(yaml.safe_dump(base))
    return path
