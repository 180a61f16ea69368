"""The Ray task: one attempt of one unit of work (bench/units: a trial or a paired session), in a
reusable Ray worker.

The task starts the trial process through the shared Launcher (trial_process.py). The Launcher,
and with it the zygote of each backend, lives as long as the Ray worker, so a worker that runs
many trials imports the framework once. A trial process killed mid-trial (or a Ray worker or a
node lost) raises TrialProcessDied, the one exception Ray retries (max_retries); an exception,
OOM or NaN inside the trial is a record, written once and never retried.
"""
from __future__ import annotations

import hashlib
import os
import pathlib
import socket
import tempfile
import time

_LAUNCHERS: dict = {}  # (start_method, run_id) -> Launcher, one per Ray worker process
_CODE_HASH: list = []


class TrialProcessDied(Exception):
    """The trial process ended without writing its record (killed, segfault): Ray retries it."""


def code_hash() -> str:
    """Hash of the `bench` package sources this process imports (same code => same hash)."""
    if not _CODE_HASH:
        root = pathlib.Path(__file__).resolve().parents[2]
        h = hashlib.sha256()
        for p in sorted(root.rglob("*.py")) + sorted(root.rglob("*.yaml")):
            h.update(str(p.relative_to(root)).encode())
            h.update(p.read_bytes())
        _CODE_HASH.append(h.hexdigest()[:12])
    return _CODE_HASH[0]


def _launcher(options: dict):
    """This worker's Launcher for the run. Its files go in the node's scratch of the run
    (bench/scratch.py: claimed by this worker, removed by the driver at the end, or by the next
    claim on the node once every holder is gone), which is also its trial processes' TMPDIR."""
    from bench import scratch
    from bench.executors.cores import default_lock_dir
    from bench.executors.trial_process import Launcher

    key = (options.get("start_method"), options["run_id"])
    if key in _LAUNCHERS and not _LAUNCHERS[key].workdir.is_dir():  # its scratch was swept: claim it anew
        _LAUNCHERS.pop(key).close()
    if key not in _LAUNCHERS:
        run_tmp = scratch.claim(options["run_id"])
        workdir = pathlib.Path(tempfile.mkdtemp(prefix="worker-", dir=run_tmp))
        _LAUNCHERS[key] = Launcher(workdir, "ray", options.get("start_method"), extra_env={
            "REGBENCH_CALIBRATION_DIR": str(run_tmp / "calibration"),
            "REGBENCH_CORE_LOCK_DIR": default_lock_dir(),  # the node's, shared by every run on it
            "TMPDIR": str(scratch.tmp_dir(run_tmp))})
    return _LAUNCHERS[key]


def unit_task(kind: str, unit_dict: dict, gpu: bool, attempt_log, options: dict) -> dict:
    """One attempt of one unit of work (bench/units). Returns {"record", "fingerprint",
    "ray", "log"}; raises TrialProcessDied."""
    import ray

    from bench.units import unit_from_dict

    unit = unit_from_dict(kind, unit_dict)
    ctx = ray.get_runtime_context()
    gpu_ids = [str(g) for g in ctx.get_accelerator_ids().get("GPU", [])]
    info = {"node_id": ctx.get_node_id(), "node_ip": ray.util.get_node_ip_address(),
            "hostname": socket.gethostname(), "worker_pid": os.getpid(), "gpu_ids": gpu_ids,
            "code_hash": code_hash(), "placement_group_id": ctx.get_placement_group_id(),
            "ray_attempt": _ray_attempt_number()}
    # The driver counts attempts from these. Waited for only once the trial process is done: a task
    # blocked in ray.get lends its CPUs to the next task, which would then share this trial's cores.
    started = attempt_log.started.remote(unit.unit_id, dict(info)) if attempt_log is not None else None
    try:
        return _attempt(unit, gpu, gpu_ids, info, options)
    finally:
        if started is not None:  # registered before the result lands
            try:
                ray.get(started, timeout=30)
            except ray.exceptions.RayError:
                pass


def _ray_attempt_number() -> int | None:
    """Ray's own 0-based count of this task's attempts. The driver's count comes from the attempt
    log, and a worker killed before its `started` call left the process loses one; this is its floor."""
    try:
        from ray._private.worker import global_worker

        return int(global_worker.core_worker.get_current_task_attempt_number())
    except Exception:  # a private API: a Ray without it leaves the attempt log's count alone
        return None


def _attempt(unit, gpu: bool, gpu_ids: list, info: dict, options: dict) -> dict:
    from bench import env
    from bench.executors.trial_process import read_log_tail, wait_and_collect

    launcher = _launcher(options)
    t_task = time.time()
    tokens = None if gpu is False else (gpu_ids or env.visible_gpu_tokens() or [])
    proc = launcher.launch(unit, tokens)
    info.update(trial_pid=proc.pid, start_method=proc.start_method)
    if options.get("marker_dir"):  # tests: each attempt leaves its pids as it starts
        import json

        marker = pathlib.Path(options["marker_dir"]) / f"{unit.unit_id}.{proc.pid}.json"
        marker.write_text(json.dumps({**info, "trial_id": unit.unit_id}))
    outcome = wait_and_collect(proc, "ray")
    t_end = time.time()
    info.update(t_start=t_task, t_end=t_end, process_s=round(t_end - t_task, 4))
    log = read_log_tail(proc.log_path)
    for path in (proc.out_path, proc.log_path):
        path.unlink(missing_ok=True)
    if outcome.record is None:
        raise TrialProcessDied(f"{outcome.died} on {info['hostname']}")
    return {"record": outcome.record, "fingerprint": env.fingerprint(), "ray": info, "log": log}


class AttemptLog:
    """A tiny actor on the driver's node: each task reports its attempt's start (time, node, pids)."""

    def __init__(self):
        self.events: list = []

    def started(self, unit_id: str, info: dict) -> None:
        self.events.append((unit_id, time.time(), info))

    def drain(self) -> list:
        events, self.events = self.events, []
        return events
