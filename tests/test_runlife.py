"""What a driver holds while it works on a run, checked with real processes and threads: the run's
lock (one driver per run directory; a dead driver's lock is taken over), a record written exactly
once by two writers at once, and the run's scratch directory (gone at the end whatever the exit; a
SIGKILLed driver's leftover removed by the next start on the node). The CLI paths through them:
test_executor_local.py (process executor) and test_ray_local.py (Ray)."""
from __future__ import annotations

import json
import os
import pathlib
import socket
import subprocess
import sys
import tempfile
import threading

import pytest

from bench.errors import UserError
from bench.store import RunStore
from tests.conftest import ROOT
from tests.test_store import record


def _holder(code: str, ready: str = "ready") -> subprocess.Popen:
    """A Python process that runs `code`, prints `ready` and then sleeps until killed."""
    proc = subprocess.Popen([sys.executable, "-c", f"{code}\nprint({ready!r}, flush=True)\nimport time\n"
                             "time.sleep(600)"], cwd=ROOT, stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.stdout.readline().strip() == ready
    return proc


def _kill(proc: subprocess.Popen) -> None:
    proc.kill()
    proc.wait()


def test_a_second_driver_is_refused_and_a_dead_driver_s_lock_is_taken_over(tmp_path):
    """Defect caught: two drivers working on one run at once (both run the same trials)."""
    from bench import layout, runlock

    run = tmp_path / "run"
    run.mkdir()
    holder = _holder(f"from bench import runlock\nlock = runlock.acquire({str(run)!r}, print)")
    try:
        with pytest.raises(UserError) as refused:
            runlock.acquire(run, print)
        message = str(refused.value)
        assert "\n" not in message and f"host {socket.gethostname()}, pid {holder.pid}" in message
    finally:
        _kill(holder)  # SIGKILL: the lock file stays behind, naming a driver that is gone
    notes: list[str] = []
    lock = runlock.acquire(run, notes.append)
    assert len(notes) == 1 and "taking over" in notes[0] and f"pid {holder.pid}" in notes[0], notes
    held = json.loads(layout.RunLayout(run).lock.read_text())
    assert held["pid"] == os.getpid() and held["host"] == socket.gethostname()
    lock.release()
    assert not layout.RunLayout(run).lock.exists()
    runlock.acquire(run, notes.append).release()  # a lock released cleanly is taken without a word
    assert len(notes) == 1


def test_two_writers_of_one_record_keep_exactly_one_and_the_other_is_told(tmp_path):
    """Defect caught: write_record's check-then-write, where two writers both write and the one
    that is kept is arbitrary (and neither learns that its result was dropped)."""
    store = RunStore.create(tmp_path, {"name": "s"}, [])
    ids = [f"t{i}" for i in range(60)]
    told: dict = {}
    start = threading.Barrier(2)

    def writer(name: str) -> None:
        for tid in ids:
            start.wait()
            told[name, tid] = store.write_trial({**record(tid), "writer": name})

    threads = [threading.Thread(target=writer, args=(name,)) for name in ("a", "b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for tid in ids:
        kept = json.loads(store.trial_path(tid).read_text())["writer"]
        other = "b" if kept == "a" else "a"
        assert told[kept, tid] is True and told[other, tid] is False, (tid, kept, told[kept, tid], told[other, tid])
    assert sorted(p.name for p in store.trials_dir.iterdir()) == sorted(f"{tid}.json" for tid in ids)


def test_scratch_is_removed_on_every_exit_and_a_dead_owner_s_leftover_at_the_next_start(tmp_path, monkeypatch):
    """Defect caught: per-run temporary files (trial work dirs, TensorFlow's autograph files) left
    in the system temp dir after a run, and leftovers of killed drivers piling up."""
    from bench import scratch

    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.setattr(tempfile, "tempdir", None)  # gettempdir() reads TMPDIR again
    enter = "from bench import scratch\ndirectory = scratch.claim('{run}')"
    dead = _holder(enter.format(run="run-killed"))
    alive = _holder(enter.format(run="run-alive"))
    _kill(dead)  # a driver killed with SIGKILL: its scratch stays, naming it as the owner
    try:
        assert (tmp_path / "regbench-run-killed").is_dir() and (tmp_path / "regbench-run-alive").is_dir()
        (tmp_path / "regbench-not-ours").mkdir()  # no owner recorded: not ours to judge
        with scratch.held("run-new") as directory:
            assert directory == tmp_path / "regbench-run-new" and directory.is_dir()
            assert not (tmp_path / "regbench-run-killed").exists()
            assert (tmp_path / "regbench-run-alive").is_dir() and (tmp_path / "regbench-not-ours").is_dir()
            (directory / "tmp" / "__autograph_generated_file1.py").write_text("")
        assert not directory.exists()
        with pytest.raises(KeyboardInterrupt):  # Ctrl-C, or SIGTERM turned into an interrupt
            with scratch.held("run-stopped") as directory:
                raise KeyboardInterrupt
        assert not directory.exists()
    finally:
        _kill(alive)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["regbench-not-ours", "regbench-run-alive"]


def test_sigterm_becomes_an_interrupt_once(tmp_path):
    """Defect caught: SIGTERM ending the driver on the spot (exit 143, nothing cleaned up)."""
    code = ("import os, signal, time\nfrom bench import signals\n"
            "with signals.stop_on_signals():\n"
            "    try:\n        os.kill(os.getpid(), signal.SIGTERM); time.sleep(5)\n"
            "    except signals.Terminated:\n        print('terminated', signals.exit_code(signals.Terminated()))\n"
            "    os.kill(os.getpid(), signal.SIGTERM)  # a second one while cleaning up is not another exception\n"
            "    time.sleep(0.2)\n    print('cleaned up')\n"
            "print(signal.getsignal(signal.SIGTERM) == signal.SIG_DFL)\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert out.stdout.split("\n")[:3] == ["terminated 143", "cleaned up", "True"], out.stdout + out.stderr


def test_records_are_created_with_link_not_left_as_temp_files(tmp_path):
    store = RunStore.create(tmp_path, {"name": "s"}, ["t1"])
    assert store.write_trial(record("t1")) is True
    assert store.write_trial({**record("t1"), "status": "failed"}) is False
    assert [p.name for p in store.trials_dir.iterdir()] == ["t1.json"]
    assert json.loads(store.trial_path("t1").read_text())["status"] == "ok"
    pathlib.Path(store.trial_path("t1")).write_text("{torn")  # a leftover torn by hand is replaced
    assert store.write_trial(record("t1")) is True
    assert json.loads(store.trial_path("t1").read_text())["status"] == "ok"


def test_claiming_a_run_never_sweeps_that_runs_own_scratch(tmp_path, monkeypatch):
    """Defect caught (ray submit end to end): a Ray worker that claimed the run's scratch after the
    run's earlier workers had exited swept the folder as stale, while another worker that had just
    made its work dir inside it went on to fail with ENOENT. Another run's dead scratch still goes."""
    import json
    import tempfile

    from bench import scratch

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    dead = {"host": __import__("socket").gethostname(), "pid": 2 ** 22 + 12345, "started_unix": 1.0}
    for run in ("this-run", "old-run"):
        folder = scratch.path_for(run)
        (folder / "worker-busy").mkdir(parents=True)
        (folder / ".holder-dead.json").write_text(json.dumps(dead))
    scratch.claim("this-run")
    assert (scratch.path_for("this-run") / "worker-busy").is_dir()
    assert not scratch.path_for("old-run").exists()
