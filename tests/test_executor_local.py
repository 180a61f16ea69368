"""The process executor (bench/executors/local.py) without Ray: its slots, its retry of a trial
process killed from outside, its timeout. The slot arithmetic is checked on its own (GPUs faked:
there is none here); retry and timeout in real `regbench run --executor process` runs."""
from __future__ import annotations

import json
import os
import pathlib
import signal
import socket
import subprocess
import sys
import time
import types

import pytest

from bench.errors import UserError
from bench.executors import local
from tests.conftest import ROOT


def suite(**kw):
    base = dict(name="s", device="auto", isolation="cpu", cpus_per_trial=1, paired=None, paired_isolation="node")
    base.update(kw)
    return types.SimpleNamespace(**base)


def test_cpu_slots(monkeypatch):
    """Defect caught: more trials at once than cores allow (or fewer), a node-isolated suite or a
    paired session sharing the machine."""
    monkeypatch.setattr(local.env, "gpus", lambda: ([], "no NVML here"))
    monkeypatch.setattr(local.os, "cpu_count", lambda: 8)
    assert local.slots_for(suite(cpus_per_trial=2)) == [None] * 4
    assert local.slots_for(suite(cpus_per_trial=3)) == [None] * 2
    assert local.slots_for(suite(cpus_per_trial=16)) == [None]  # never zero slots
    assert local.slots_for(suite(isolation="node")) == [None]
    assert local.slots_for(suite(), kind="session") == [None]  # a neighbour would shift step-time ratios
    assert local.slots_for(suite(paired_isolation="slot"), kind="session") == [None] * 8
    with pytest.raises(UserError, match="device: gpu but this machine has no GPU"):
        local.slots_for(suite(device="gpu"))


def test_gpu_slots_follow_cuda_visible_devices(monkeypatch):
    """One slot per visible GPU, each slot owning its GPU; CUDA_VISIBLE_DEVICES narrows them, ''
    hides them all."""
    gpus = [{"index": i, "name": "NVIDIA H100", "uuid": f"GPU-{i}"} for i in range(3)]
    monkeypatch.setattr(local.env, "gpus", lambda: (gpus, None))
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert local.slots_for(suite()) == [["0"], ["1"], ["2"]]
    assert local.slots_for(suite(isolation="node")) == [["0"]]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,GPU-0")
    assert local.slots_for(suite(device="gpu")) == [["2"], ["GPU-0"]]
    monkeypatch.setattr(local.os, "cpu_count", lambda: 4)
    assert local.slots_for(suite(device="cpu")) == [None] * 4  # a CPU suite on a GPU machine
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert local.slots_for(suite()) == [None] * 4
    with pytest.raises(UserError):
        local.slots_for(suite(device="gpu"))


SUITE = """
name: {name}
workloads:
  - {{name: digits_mlp, max_train_samples: 512}}
regularizers: {regularizers}
precisions: [float32]
batch_sizes: [32]
repeats: 1
epochs: {epochs}
isolation: cpu
cpus_per_trial: {cpus}
timeout_s: {timeout_s}
max_retries: 2
paired: false
"""


def start(tmp_path: pathlib.Path, name: str, env=None, **fields) -> subprocess.Popen:
    path = tmp_path / f"{name}.yaml"
    path.write_text(SUITE.format(name=name, **fields))
    return _driver(["--suite", str(path), "--out", str(tmp_path / name)], env)


def _driver(args: list[str], env=None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "bench.cli", "run", *args, "--executor", "process",
                             "--trial-start", "interpreter", "--no-report"],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": str(ROOT), **(env or {})})


def children(pid: int) -> list[tuple[int, str]]:
    """(pid, args) of the trial processes the driver `pid` started."""
    out = subprocess.run(["ps", "-ww", "-eo", "pid=,ppid=,args="], capture_output=True, text=True).stdout
    rows = [line.split(None, 2) for line in out.splitlines()]
    return [(int(r[0]), r[2]) for r in rows if len(r) == 3 and r[1] == str(pid) and "bench.executors.child" in r[2]]


def records(proc: subprocess.Popen, timeout_s: float = 300) -> tuple[list[dict], str]:
    out, err = proc.communicate(timeout=timeout_s)
    assert proc.returncode == 0, err[-3000:]
    run_dir = pathlib.Path(out.strip().splitlines()[-1])
    return [json.loads(p.read_text()) for p in sorted((run_dir / "trials").glob("*.json"))], err


def max_overlap(intervals: list[tuple[float, float]]) -> int:
    events = sorted([(a, 1) for a, _ in intervals] + [(b, -1) for _, b in intervals], key=lambda e: (e[0], e[1]))
    now = most = 0
    for _, step in events:
        now += step
        most = max(most, now)
    return most


@pytest.mark.slow
def test_killed_trial_process_is_retried_and_slots_are_respected(tmp_path):
    """Defect caught: a trial whose process was killed from outside lost or recorded as failed
    instead of retried; a retried trial recorded twice; more (or fewer) trials at once than slots."""
    cpus = max(1, (os.cpu_count() or 1) // 2)
    slots = min(3, (os.cpu_count() or 1) // cpus)  # 2 on the 2-core CI machine: the third trial waits
    proc = start(tmp_path, "retry", regularizers="[none, l2, dropout]", epochs=3, cpus=cpus, timeout_s=300)
    deadline, victim = time.monotonic() + 120, None
    while victim is None and time.monotonic() < deadline and proc.poll() is None:
        running = children(proc.pid)
        if running:
            victim = running[0]
            os.kill(victim[0], signal.SIGKILL)
        time.sleep(0.05)
    assert victim is not None, "no trial process seen"
    recs, err = records(proc)
    assert len(recs) == 3 and all(r["status"] == "ok" for r in recs), [r["reason"] for r in recs]
    retried = [r for r in recs if r["attempts"] == 2]
    assert len(retried) == 1 and [r["attempts"] for r in recs].count(1) == 2
    assert retried[0]["trial_id"] in victim[1] and retried[0]["process"]["pid"] != victim[0]
    assert "retrying (1/2)" in err and "exited with code -9" in err
    intervals = [(r["process"]["entered_unix"], r["process"]["finished_unix"]) for r in recs]
    assert max_overlap(intervals) == slots, (intervals, slots)


@pytest.mark.slow
def test_trial_past_its_timeout_is_killed_and_recorded_once(tmp_path):
    """Defect caught: a hung trial holding its slot forever, retried as if it had crashed, or
    leaving its process behind."""
    t0 = time.monotonic()
    proc = start(tmp_path, "timeout", regularizers="[none]", epochs=100000, cpus=1, timeout_s=3)
    (r,), err = records(proc, timeout_s=120)
    assert r["status"] == "failed" and r["reason"] == "timeout: killed after 3 s" and r["attempts"] == 1
    assert "retrying" not in err
    assert time.monotonic() - t0 < 60
    left = subprocess.run(["ps", "-ww", "-eo", "args="], capture_output=True, text=True).stdout
    assert r["trial_id"] not in left  # the trial process was killed, not orphaned


def processes_of(pid: int, args: str = "") -> list[int]:
    """Pids of the children of `pid` whose command line holds `args`."""
    out = subprocess.run(["ps", "-ww", "-eo", "pid=,ppid=,args="], capture_output=True, text=True).stdout
    rows = [line.split(None, 2) for line in out.splitlines()]
    return [int(r[0]) for r in rows if len(r) == 3 and r[1] == str(pid) and args in r[2]]


@pytest.mark.slow
def test_killed_zygote_is_a_fault_not_a_crash(tmp_path):
    """Defect caught (issue: a killed zygote kills the driver): SIGKILL of the zygote mid-run ended
    the driver with a ZygoteUnavailable traceback, exit 1, the manifest left "running". A lost
    zygote is like a lost worker: a new one is started, the trial it held is retried, the run ends."""
    path = tmp_path / "z.yaml"
    path.write_text(SUITE.format(name="z", regularizers="[none, l2, dropout]", epochs=3, cpus=2, timeout_s=300))
    proc = subprocess.Popen([sys.executable, "-m", "bench.cli", "run", "--suite", str(path), "--executor", "process",
                             "--trial-start", "zygote", "--out", str(tmp_path / "z"), "--no-report"],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": str(ROOT)})
    deadline, killed = time.monotonic() + 180, None
    while killed is None and time.monotonic() < deadline and proc.poll() is None:
        zygote = processes_of(proc.pid, "bench.executors.zygote")
        # kill it while it has a child running: the child dies with it
        if zygote and processes_of(zygote[0]):
            killed = zygote[0]
            os.kill(killed, signal.SIGKILL)
        time.sleep(0.05)
    assert killed is not None, "no zygote with a running trial seen"
    recs, err = records(proc)
    assert "Traceback" not in err, err[-3000:]
    assert len(recs) == 3 and all(r["status"] == "ok" for r in recs), [r["reason"] for r in recs]
    retried = [r for r in recs if r["attempts"] == 2]
    assert len(retried) == 1, [r["attempts"] for r in recs]
    # the retry forked from a new zygote, and its record says the old one was lost
    assert retried[0]["process"]["start_method"] == "zygote"
    assert retried[0]["process"]["parent_pid"] != killed
    assert f"zygote pid {killed} was lost" in retried[0]["process"]["start_note"]
    assert "retrying (1/2)" in err
    (manifest,) = (tmp_path / "z").glob("*/manifest.json")
    assert json.loads(manifest.read_text())["status"] == "complete"


def _wait_for(predicate, what: str, proc: subprocess.Popen, timeout_s: float = 180):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        if proc.poll() is not None:
            pytest.fail(f"the run ended (rc {proc.returncode}) before {what}: {proc.stderr.read()[-3000:]}")
        time.sleep(0.1)
    pytest.fail(f"timed out waiting for {what}")


def _leftovers(tmp: pathlib.Path) -> list[str]:
    """What a run may leave in the temp dir its driver and trial processes see."""
    return sorted(p.name for p in tmp.iterdir() if p.name.startswith(("regbench-", "__autograph_generated_file")))


@pytest.mark.slow
def test_sigterm_concurrent_resume_and_a_killed_driver_s_lock_and_scratch(tmp_path):
    """Defects caught: SIGTERM (a scheduler's, `ray stop`'s) ending the driver silently with the
    manifest still "running" and no resume hint; a second `--resume` of a run in progress running
    the same trials; a SIGKILLed driver's lock blocking the run forever; per-run scratch and
    TensorFlow's /tmp/__autograph_generated_file*.py left behind on any exit."""
    tmp = tmp_path / "tmp"  # TMPDIR of the drivers, hence of their trial processes
    tmp.mkdir()
    env = {"TMPDIR": str(tmp)}
    cpus = os.cpu_count() or 1  # one slot: the trials run one after the other
    proc = start(tmp_path, "life", env, regularizers="[none, l2, dropout]", epochs=4, cpus=cpus, timeout_s=300)
    trials = _wait_for(lambda: list((tmp_path / "life").glob("*/trials/*.json")), "a first trial", proc)
    run_dir = trials[0].parent.parent

    # 1. a second driver on the running run is refused, in one line naming the first
    second = subprocess.run([sys.executable, "-m", "bench.cli", "run", "--resume", str(run_dir), "--executor",
                             "process", "--no-report"], cwd=ROOT, capture_output=True, text=True, timeout=120,
                            env={**os.environ, "PYTHONPATH": str(ROOT), **env})
    assert second.returncode in (1, 2) and "Traceback" not in second.stderr, second.stderr[-3000:]
    (line,) = second.stderr.strip().splitlines()
    assert line.startswith("regbench: error: ") and f"host {socket.gethostname()}, pid {proc.pid}" in line

    # 2. SIGTERM to the driver alone (as a scheduler sends it): stopped like Ctrl-C
    os.kill(proc.pid, signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err[-3000:]
    assert f"regbench run --resume {run_dir}" in err and "Traceback" not in err, err[-3000:]
    assert json.loads((run_dir / "manifest.json").read_text())["status"] == "interrupted"
    kept = {p.name: p.read_bytes() for p in (run_dir / "trials").glob("*.json")}
    assert 1 <= len(kept) < 3
    assert str(tmp) not in subprocess.run(["ps", "-ww", "-eo", "args="], capture_output=True, text=True).stdout
    assert _leftovers(tmp) == []

    # 3. a resumed driver killed with SIGKILL while a trial runs leaves its lock and its scratch
    killed = _driver(["--resume", str(run_dir)], env)
    _wait_for(lambda: children(killed.pid), "a trial process of the resumed run", killed)
    killed.kill()
    killed.communicate()
    assert [name for name in _leftovers(tmp) if name.startswith("regbench-")]

    # 4. the next resume takes the dead driver's lock over, removes its scratch, finishes the run
    last = _driver(["--resume", str(run_dir)], env)
    out, err = last.communicate(timeout=300)
    assert last.returncode == 0, err[-3000:]
    assert f"pid {killed.pid}" in err and "taking over" in err, err[-3000:]
    recs = {p.name: json.loads(p.read_text()) for p in (run_dir / "trials").glob("*.json")}
    assert len(recs) == 3 and all(r["status"] == "ok" for r in recs.values()), [r["reason"] for r in recs.values()]
    assert all((run_dir / "trials" / name).read_bytes() == data for name, data in kept.items())
    assert _leftovers(tmp) == []
    assert not (run_dir / ".lock").exists()
