"""The Ray executor on this machine, for real: `regbench run --executor ray` in a subprocess.

Each test starts its own private Ray instance (RAY_ADDRESS=local, so a cluster someone else
started on this machine is never joined) in its own session, and checks at the end that nothing
of that instance is left running.
"""
from __future__ import annotations

import glob
import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import pytest

pytestmark = pytest.mark.slow

REPO = pathlib.Path(__file__).resolve().parents[1]
REGBENCH = [sys.executable, "-m", "bench.cli"]

TINY = """
name: {name}
workloads:
  - name: digits_mlp
    max_train_samples: 256
{extra_workloads}
regularizers: {regularizers}
precisions: [float32]
batch_sizes: [32]
repeats: {repeats}
epochs: {epochs}
isolation: cpu
cpus_per_trial: 1
timeout_s: {timeout_s}
max_retries: 2
paired: false
{extra}
"""


def tiny_suite(tmp_path, name="tiny", regularizers="[none, l2, dropout]", repeats=2, timeout_s=300,
               extra_workloads="", extra="", epochs=2) -> pathlib.Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(TINY.format(name=name, regularizers=regularizers, repeats=repeats, timeout_s=timeout_s,
                                extra_workloads=extra_workloads, extra=extra, epochs=epochs))
    return path


def ray_env(**extra) -> dict:
    env = dict(os.environ, RAY_ADDRESS="local", PYTHONPATH=str(REPO))
    env.pop("REGBENCH_EXECUTOR", None)
    env.update({k: str(v) for k, v in extra.items()})
    return env


def start_run(args, env, out: pathlib.Path) -> subprocess.Popen:
    return subprocess.Popen(REGBENCH + ["run", *args, "--executor", "ray", "--out", str(out), "--no-report"],
                            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)


def session_processes(sid: int) -> list[str]:
    out = subprocess.run(["ps", "-eo", "pid=,sid=,args="], capture_output=True, text=True).stdout
    return [line for line in out.splitlines() if line.split() and line.split()[1] == str(sid)]


def assert_session_gone(sid: int, wait_s: float = 20.0) -> None:
    """Every process of the driver's session (its Ray instance) is gone; kill leftovers, then fail."""
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        left = session_processes(sid)
        if not left:
            return
        time.sleep(0.5)
    try:
        os.killpg(sid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    pytest.fail(f"processes of the run's Ray instance outlived it: {left}")


def wait_for(predicate, timeout_s: float, what: str, proc: subprocess.Popen | None = None):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"run ended (rc {proc.returncode}) before {what}: {err[-2000:]}")
        time.sleep(0.2)
    pytest.fail(f"timed out after {timeout_s} s waiting for {what}")


def finish(proc: subprocess.Popen, timeout_s: float = 240) -> tuple[int, str, str]:
    try:
        out, err = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"run did not finish in {timeout_s} s: {err[-2000:]}")
    assert_session_gone(proc.pid)
    return proc.returncode, out, err


def run_dir_of(out: pathlib.Path) -> pathlib.Path:
    dirs = [p for p in out.iterdir() if p.is_dir()]
    assert len(dirs) == 1, dirs
    return dirs[0]


def trial_files(run_dir: pathlib.Path) -> dict[str, dict]:
    """Every trial file, parsed (a partial or corrupt file fails the test)."""
    files = sorted((run_dir / "trials").iterdir())
    leftovers = [p.name for p in files if not p.name.endswith(".json") or p.name.startswith(".")]
    assert not leftovers, f"partial files left behind: {leftovers}"
    return {p.stem: json.loads(p.read_text()) for p in files}


# ---------------------------------------------------------------------------------------------

def test_smoke_suite_end_to_end(tmp_path):
    proc = start_run(["--suite", "smoke"], ray_env(), tmp_path)
    rc, out, err = finish(proc)
    assert rc == 0, err
    run_dir = pathlib.Path(out.strip().splitlines()[-1])
    assert run_dir.parent == tmp_path
    records = trial_files(run_dir)
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert sorted(records) == sorted(manifest["trial_ids"]) and len(records) == 6
    assert manifest["status"] == "complete" and manifest["executor"] == "ray"
    # the private instance's scratch on this machine (worker dirs, calibration) went with it
    assert not (pathlib.Path(tempfile.gettempdir()) / f"regbench-{run_dir.name}").exists()

    ran = {tid: r for tid, r in records.items() if r["status"] != "skipped"}
    skipped = {tid: r for tid, r in records.items() if r["status"] == "skipped"}
    assert len(ran) == 3 and all(r["status"] == "ok" for r in ran.values()), [r.get("reason") for r in ran.values()]
    # mixed_float16 on a CPU is decided on the driver, without starting a process
    assert len(skipped) == 3 and all(r["trial"]["precision"] == "mixed_float16" for r in skipped.values())
    assert all(r["node"]["ray"] == {"evaluated_on": "driver"} for r in skipped.values())

    pids = set()
    for tid, r in ran.items():
        assert r["node"]["executor"] == "ray" and r["node"]["device_kind"] == "cpu"
        info = r["node"]["ray"]
        assert info["gpu_ids"] == [] and info["trial_pid"] != info["worker_pid"]
        pids.add(info["trial_pid"])
        assert r["attempts"] == 1
        assert manifest["placements"][tid]["node_id"] == info["node_id"]
        assert manifest["placements"][tid]["attempts"] == 1
        assert r["node"]["fingerprint_id"] in manifest["nodes"]
        assert r["timing"]["steady_state_steps"] > 0
    assert len(pids) == 3, "each trial runs in a fresh process"
    for r in skipped.values():
        assert r["node"]["fingerprint_id"] in manifest["nodes"]
    fp = next(iter(manifest["nodes"].values()))
    assert {"cpu", "gpus", "versions", "hostname"} <= set(fp)
    # the paired sessions ran after the trials, through the same Ray tasks: 2 per precision
    sessions = [json.loads(p.read_text()) for p in (run_dir / "sessions").glob("*.json")]
    assert sorted(p.stem for p in (run_dir / "sessions").glob("*.json")) == sorted(manifest["session_ids"])
    assert sorted(s["status"] for s in sessions) == ["ok", "ok", "skipped", "skipped"]
    assert all(s["node"]["executor"] == "ray" for s in sessions if s["status"] == "ok")
    first_session = min(s["started_at"] for s in sessions if s["status"] == "ok")
    assert max(r["finished_at"] for r in ran.values()) <= first_session  # a batch ends before the next
    # plain progress lines (stderr is not a terminal here)
    assert "[10/10]" in err


def test_infeasible_gpu_request_fails_fast(tmp_path):
    suite = tiny_suite(tmp_path, name="needsgpu", repeats=1, extra="device: gpu")
    t0 = time.monotonic()
    # a GPU-less cluster on any host: the local Ray instance counts the GPUs CUDA_VISIBLE_DEVICES shows
    proc = start_run(["--suite", str(suite)], ray_env(CUDA_VISIBLE_DEVICES=""), tmp_path / "out")
    rc, out, err = finish(proc, timeout_s=120)
    assert rc == 2, err
    last = err.strip().splitlines()[-1]
    assert last.startswith("regbench: error: ") and "asks for 1 GPU per trial" in last
    assert "no node of this Ray cluster has a GPU" in last
    assert time.monotonic() - t0 < 90
    assert not any((tmp_path / "out").iterdir())  # refused before any trial: no empty run dir left


def test_killed_workers_are_retried_and_failures_recorded_once(tmp_path):
    """A killed trial process and a killed Ray worker are retried and land once; a trial that
    raises (batch larger than the data) is recorded once, without retries."""
    markers = tmp_path / "markers"
    markers.mkdir()
    suite = tiny_suite(tmp_path, name="faults", regularizers="[none, l2]", repeats=1, epochs=30,  # still running when killed
                       extra_workloads="  - {name: digits_mlp, max_train_samples: 64, batch_sizes: [4096]}")
    proc = start_run(["--suite", str(suite)], ray_env(REGBENCH_RAY_MARKER_DIR=markers), tmp_path / "out")

    def first_markers():
        found = {}
        for p in markers.glob("*.json"):
            m = json.loads(p.read_text())
            if "b4096" not in m["trial_id"]:
                found.setdefault(m["trial_id"], m)
        return found if len(found) == 2 else None

    marks = wait_for(first_markers, 120, "two trials to start", proc)
    (a, ma), (b, mb) = sorted(marks.items())
    os.kill(ma["trial_pid"], signal.SIGKILL)  # the trial process itself
    os.kill(mb["worker_pid"], signal.SIGKILL)  # the Ray worker that runs it (its trial process follows)
    rc, out, err = finish(proc)
    assert rc == 0, err
    run_dir = run_dir_of(tmp_path / "out")
    records = trial_files(run_dir)
    assert len(records) == 4
    for tid, killed in ((a, ma), (b, mb)):
        r = records[tid]
        assert r["status"] == "ok", r.get("reason")
        assert r["attempts"] == 2
        assert r["node"]["ray"]["trial_pid"] != killed["trial_pid"]
        assert len(list(markers.glob(f"{tid}.*.json"))) == 2
    bad = [r for tid, r in records.items() if "b4096" in tid]
    assert len(bad) == 2
    for r in bad:
        assert r["status"] == "failed" and "exceeds" in r["reason"] and r["attempts"] == 1
    assert len([p for p in markers.glob("*.json") if "b4096" in p.name and not p.name.startswith("paired-")]) == 2
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["placements"][a]["attempts"] == 2


def test_trial_timeout_is_recorded(tmp_path):
    # 500 epochs take ~30 s: far past the 2 s (a trial process from the zygote starts in milliseconds)
    suite = tiny_suite(tmp_path, name="slow", regularizers="[none]", repeats=1, timeout_s=2, epochs=500)
    proc = start_run(["--suite", str(suite)], ray_env(), tmp_path / "out")
    rc, out, err = finish(proc)
    assert rc == 0, err
    (r,) = trial_files(run_dir_of(tmp_path / "out")).values()
    assert r["status"] == "failed" and r["reason"].startswith("timeout: killed after 2 s")
    assert r["attempts"] == 1


def test_interrupt_sigkill_and_resume_run_every_trial_once(tmp_path):
    # 30 epochs: a zygote-started trial of 2 epochs ends in about a second, and the whole run could
    # finish before the Ctrl-C below
    suite = tiny_suite(tmp_path, name="resume", epochs=30)
    out_dir = tmp_path / "out"

    # 1. Ctrl-C (SIGINT to the whole process group, as a terminal does) after the first trial lands
    proc = start_run(["--suite", str(suite)], ray_env(), out_dir)
    wait_for(lambda: glob.glob(str(out_dir / "*" / "trials" / "*.json")), 180, "a first trial", proc)
    os.killpg(proc.pid, signal.SIGINT)
    rc, out, err = finish(proc, timeout_s=60)
    run_dir = run_dir_of(out_dir)
    assert rc == 130, err
    assert f"regbench run --resume {run_dir}" in err
    assert json.loads((run_dir / "manifest.json").read_text())["status"] == "interrupted"
    first = trial_files(run_dir)
    assert 1 <= len(first) < 6

    # 2. resume, then SIGKILL the driver as soon as one more trial lands
    proc = start_run(["--resume", str(run_dir)], ray_env(), out_dir)
    wait_for(lambda: len(list((run_dir / "trials").glob("*.json"))) > len(first), 180, "one more trial", proc)
    proc.kill()
    proc.communicate()
    assert_session_gone(proc.pid)  # the reaper stops what the killed driver's Ray instance left
    second = trial_files(run_dir)
    assert len(second) > len(first)
    snapshot = {tid: (run_dir / "trials" / f"{tid}.json").read_bytes() for tid in second}

    # 3. resume to the end: only the missing trials run, each exactly once
    proc = start_run(["--resume", str(run_dir)], ray_env(), out_dir)
    rc, out, err = finish(proc)
    assert rc == 0, err
    assert f"{len(second)} finished, {6 - len(second)} to run" in err
    final = trial_files(run_dir)
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert sorted(final) == sorted(manifest["trial_ids"]) and len(final) == 6
    assert all(r["status"] == "ok" for r in final.values())
    for tid, data in snapshot.items():  # a finished trial file is never rewritten
        assert (run_dir / "trials" / f"{tid}.json").read_bytes() == data
    assert manifest["status"] == "complete"
    assert set(manifest["placements"]) >= (set(final) - set(second)) | set(first)


def test_a_cluster_file_is_not_joined_and_sigterm_stops_the_run_like_ctrl_c(tmp_path):
    """Defects caught: a run without an address joining whatever cluster the last `ray start` on
    the machine announced (/tmp/ray/ray_current_cluster, writable by any user); SIGTERM ending the
    driver silently (exit 143, manifest "running", no resume hint); the run's scratch and
    TensorFlow's autograph files left in the temp dir."""
    tmp = pathlib.Path(tempfile.mkdtemp(prefix="rb-", dir="/tmp"))  # short: Ray's socket paths go under it
    try:
        (tmp / "ray").mkdir()
        (tmp / "ray" / "ray_current_cluster").write_text("10.255.255.1:6379")  # someone else's cluster
        env = ray_env(TMPDIR=tmp, RAY_TMPDIR=tmp)
        env.pop("RAY_ADDRESS")
        out_dir = tmp_path / "out"
        proc = start_run(["--suite", str(tiny_suite(tmp_path, name="term", epochs=30))], env, out_dir)
        wait_for(lambda: glob.glob(str(out_dir / "*" / "trials" / "*.json")), 180, "a first trial", proc)
        os.kill(proc.pid, signal.SIGTERM)  # the driver alone, as a scheduler or `ray stop` sends it
        rc, out, err = finish(proc, timeout_s=90)  # and nothing of its private Ray instance is left
        run_dir = run_dir_of(out_dir)
        assert rc == 143, err[-3000:]
        hints = [line for line in err.splitlines() if "10.255.255.1:6379" in line]
        assert len(hints) == 1 and "--address auto" in hints[0] and "joined" not in hints[0], err[-3000:]
        assert f"regbench run --resume {run_dir}" in err and "Traceback" not in err, err[-3000:]
        assert json.loads((run_dir / "manifest.json").read_text())["status"] == "interrupted"
        assert 1 <= len(trial_files(run_dir)) < 6
        # (regbench-cores-<uid> is the node's core locks, shared by every run on it, and stays)
        assert not [p.name for p in tmp.iterdir() if p.name.startswith((f"regbench-{run_dir.name}", "__autograph"))]
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
