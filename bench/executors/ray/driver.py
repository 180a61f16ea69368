"""The Ray driver loop: submit one task per unit (trial or paired session), stream results into
the store as they land.

Faults: a trial process or Ray worker killed mid-trial, or a node lost, is retried by Ray up to
the suite's `max_retries`; a trial past `timeout_s` is killed in its worker and recorded as
failed, and the driver cancels a task that has not answered 60 s after that. Results stream back
with `ray.wait` and are written the moment each lands (RunStore.write_record is atomic and
exactly-once), with the trial process's output kept in the run's logs/. The manifest gets every
node's fingerprint and, per trial, the node that ran it and how many attempts it took. Repeats
keep the suite's order: tasks are submitted in trial order and Ray grants leases of one shape
first in, first out. Each result carries a hash of the `bench` sources its node ran; the driver
warns when it differs from its own.
"""
from __future__ import annotations

import json
import os
import time

from bench import scratch, signals
from bench.errors import UserError
from bench.executors import write_once
from bench.executors.ray.connect import SHIP_CODE_ENV, connect, start_reaper
from bench.executors.ray.resources import (NODE_WAIT_ENV, alive_nodes, check_feasible, host_reservation,
                                           infeasible_reason, on_gpu, request_for, reserve_gpu_hosts, wants_gpu)
from bench.executors.ray.task import AttemptLog, TrialProcessDied, code_hash, unit_task
from bench.executors.trial_process import default_start_method, failure_record
from bench.units import runners

MARKER_ENV = "REGBENCH_RAY_MARKER_DIR"  # tests: each attempt writes its pids here
DRIVER_TIMEOUT_GRACE_S = 60.0
MANIFEST_FLUSH_S = 5.0
LIVE_RECHECK_S = 5.0
LIVE_INFEASIBLE_GRACE_S = 60.0


class PendingUnit:
    """A submitted trial or session whose record has not landed yet."""

    def __init__(self, unit, ref, req_key):
        self.unit, self.ref, self.req_key = unit, ref, req_key
        self.attempts = 0
        self.started_at: float | None = None  # attempt-log time of the latest attempt's start
        self.cancelled_for_timeout = False


def run_ray(batches, store, suite, progress, start_method: str | None = None, address: str | None = None) -> None:
    """Run each batch of units (trials, then sessions; bench/plan.py) as Ray tasks, one batch after
    the other on one Ray connection; write each record into `store` as it lands. `address`: the
    cluster to join (connect.py); none starts a private instance.

    Ctrl-C and SIGTERM stop it (bench/signals.py: the loop also polls the flag they set, so a stop
    that lands during one of Ray's C++ waits is not lost there). The run's scratch on every node
    (task.py) goes at the end, whatever the exit: with the private instance here, and on a joined
    cluster through one small task per alive node."""
    import ray

    with signals.stop_on_signals(), scratch.held(store.path.name):
        started_here = connect(address, progress.note)
        signals.reassert()  # ray.init() put its own SIGTERM handler in place of ours
        reaper = start_reaper() if started_here else None
        try:
            _stage_data(ray, suite.trials, progress)
            # A private instance is torn down by ray.shutdown(), which stops every task; force-cancelling
            # tasks first races with replies from workers that Ctrl-C already hit and can abort the
            # driver inside Ray ("Tried to complete task that was not pending"). Only a joined
            # cluster, which outlives this driver, needs its tasks cancelled.
            for batch in batches:
                if batch:
                    _run(batch, store, suite, progress, ray, start_method or default_start_method(),
                         cancel_on_exit=not started_here)
        finally:
            if started_here:
                ray.shutdown()
            else:
                _remove_node_scratch(ray, store.path.name)
            if reaper is not None:
                reaper.kill()
                reaper.wait()


def _remove_node_scratch(ray, run_id: str, timeout_s: float = 60.0) -> None:
    """A joined cluster outlives this driver: each alive node removes its scratch of the run."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    try:
        remove = ray.remote(num_cpus=0, max_retries=0)(scratch.remove)
        refs = [remove.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)).remote(run_id)
                for n in alive_nodes()]
        ray.wait(refs, num_returns=len(refs), timeout=timeout_s)
    except Exception:  # noqa: BLE001 - best effort while stopping: a node's next run sweeps it
        pass


def _stage_data(ray, trials, progress) -> None:
    """bench.data.prepare on every alive node, before any trial: a node without the data fails the
    run here, with one line naming the node and the dataset, not trial by trial. The files of a
    user's workload or regularizer (bench/usercode.py) go to every node the same way, through the
    object store, and are checked there by hash."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    from bench import data, usercode

    workloads = data.builtin_workloads(trials)
    user_files = usercode.bundle(usercode.refs_of(trials))
    if not (workloads and data.for_workloads(workloads)) and not user_files:
        return
    nodes = alive_nodes()
    files_ref = ray.put(user_files)
    stage = ray.remote(num_cpus=0, max_retries=0)(data.prepare_node)
    refs = [stage.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False))
            .remote(workloads, files_ref) for n in nodes]
    for node, ref in zip(nodes, refs):
        try:
            staged = ray.get(ref)
        except ray.exceptions.RayTaskError as e:
            cause = e.cause if isinstance(getattr(e, "cause", None), BaseException) else e
            raise UserError(str(cause).strip().splitlines()[-1]) from None
        progress.note(f"data on {node.get('NodeManagerAddress', '?')}: "
                      + ", ".join(f"{name} {info['state']}" for name, info in staged.items()))


def _run(units, store, suite, progress, ray, start_method: str, cancel_on_exit: bool = True) -> None:
    from ray.exceptions import RayTaskError, TaskCancelledError
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy, PlacementGroupSchedulingStrategy

    from bench import env
    nodes = alive_nodes()
    gpu = wants_gpu(suite, nodes)
    requests = {}
    for t in units:
        req = request_for(t, suite, on_gpu(t, gpu))
        requests.setdefault(json.dumps(req, sort_keys=True), req)
    nodes = check_feasible(requests, suite.name, progress.note)

    driver_fp = env.fingerprint()
    my_hash = code_hash()
    manifest_nodes: dict = {}
    placements: dict = {}
    last_flush = time.monotonic()

    def flush(force: bool = False):
        nonlocal last_flush
        if (manifest_nodes or placements) and (force or time.monotonic() - last_flush > MANIFEST_FLUSH_S):
            store.update_manifest(nodes=dict(manifest_nodes), placements=dict(placements))
            manifest_nodes.clear()
            placements.clear()
            last_flush = time.monotonic()

    # CPU units the runner would skip (e.g. mixed_float16 without XLA) are decided here, without
    # starting a process: the decision depends on the precision, backend and jit setting only.
    todo = []
    for t in units:
        skipped = None if on_gpu(t, gpu) else runners.precheck(t, "ray", gpu=False)
        if skipped:
            skipped["node"]["ray"] = {"evaluated_on": "driver"}
            write_once(store, t.kind, skipped, progress)
            manifest_nodes[driver_fp["fingerprint_id"]] = driver_fp
            progress.finished(skipped, was_running=False)
        else:
            todo.append(t)
    flush(force=True)
    if not todo:
        return

    host_groups = _reserve_hosts(todo, suite, gpu, nodes, progress) if suite.device == "mixed" else {}
    driver_node = ray.get_runtime_context().get_node_id()
    attempt_log = ray.remote(num_cpus=0, max_restarts=-1)(AttemptLog).options(
        scheduling_strategy=NodeAffinitySchedulingStrategy(driver_node, soft=True)).remote()
    task = ray.remote(unit_task)
    options = {"marker_dir": os.environ.get(MARKER_ENV), "start_method": start_method,
               "run_id": store.path.name}
    out: dict = {}  # ref -> PendingUnit
    by_id: dict = {}
    for t in todo:
        req = request_for(t, suite, on_gpu(t, gpu))
        key = json.dumps(req, sort_keys=True)
        custom = {k: v for k, v in req.items() if k not in ("CPU", "GPU")}
        placed = {"scheduling_strategy": PlacementGroupSchedulingStrategy(host_groups[key], placement_group_bundle_index=-1)
                  } if key in host_groups else {}
        ref = task.options(
            num_cpus=req["CPU"], num_gpus=req.get("GPU", 0), resources=custom or None,
            max_retries=suite.max_retries, retry_exceptions=[TrialProcessDied],
            name=f"regbench:{t.unit_id}"[:120], **placed,
        ).remote(t.kind, t.to_dict(), on_gpu(t, gpu), attempt_log, options)
        o = PendingUnit(t, ref, key)
        out[ref] = o
        by_id[t.unit_id] = o
    if suite.device == "mixed":
        n_gpu = sum(on_gpu(t, gpu) for t in todo)
        each = (f"{n_gpu} on GPUs, 1 GPU + {suite.gpu_host_cpus} reserved CPU each; {len(todo) - n_gpu} on CPUs, "
                f"{suite.cpus_per_trial} CPU each")
    else:
        each = f"{'1 GPU' if gpu else f'{suite.cpus_per_trial} CPU'} each, isolation {suite.isolation}"
    progress.note(f"ray: {len(todo)} {todo[0].plural} submitted to {len(nodes)} node(s) ({each})")

    warned_hash: set = set()
    drain_ref = attempt_log.drain.remote()
    infeasible_since: dict = {}
    last_recheck = time.monotonic()
    try:
        while out:
            signals.raise_if_stopped()
            ready, _ = ray.wait(list(out), num_returns=1, timeout=0.5)
            if ready:
                ready, _ = ray.wait(list(out), num_returns=len(out), timeout=0)
            # attempts that started since the last look; before writing results, a drain asked
            # for after they landed (each attempt registered its start before its trial ran)
            if drain_ref is not None and (ready or ray.wait([drain_ref], timeout=0)[0]):
                try:
                    events = ray.get(drain_ref, timeout=30)
                    if ready:
                        events += ray.get(attempt_log.drain.remote(), timeout=30)
                    for unit_id, t_start, _info in events:
                        o = by_id.get(unit_id)
                        if o is not None:
                            o.attempts += 1
                            o.started_at = t_start
                    drain_ref = attempt_log.drain.remote()
                except ray.exceptions.RayError:
                    drain_ref = None  # attempt log gone: no running count, no driver-side timeout
            for ref in ready:
                o = out.pop(ref)
                by_id.pop(o.unit.unit_id, None)
                record, fp, info, log = _collect(ray, ref, o, on_gpu(o.unit, gpu), suite, RayTaskError,
                                                 TaskCancelledError)
                if info and isinstance(info.get("ray_attempt"), int):  # an attempt's start lost with its worker
                    o.attempts = max(o.attempts, info["ray_attempt"] + 1)
                if log:
                    store.write_log(o.unit.unit_id, log, f"attempt {max(o.attempts, 1)}: pid {info.get('trial_pid')}, "
                                                           f"{info.get('start_method')} on {info.get('hostname')}")
                if info:
                    record.setdefault("node", {})["ray"] = info
                    placements[o.unit.unit_id] = {
                        "node_id": info["node_id"], "hostname": info["hostname"], "ip": info["node_ip"],
                        "attempts": max(o.attempts, 1), "gpu_ids": info["gpu_ids"]}
                    if (info.get("code_hash") != my_hash and info["node_id"] != driver_node
                            and info["node_id"] not in warned_hash):
                        warned_hash.add(info["node_id"])
                        progress.note(f"warning: node {info['hostname']} runs different bench code "
                                      f"({info.get('code_hash')}) than this driver ({my_hash}); "
                                      f"reinstall it there or set {SHIP_CODE_ENV}=1")
                if fp:
                    manifest_nodes[fp["fingerprint_id"]] = fp
                record["attempts"] = max(o.attempts, 1)
                write_once(store, o.unit.kind, record, progress)
                progress.finished(record, was_running=o.started_at is not None)
            now = time.time()
            for o in list(out.values()):  # driver-side net behind the in-worker timeout
                if (o.started_at is not None and not o.cancelled_for_timeout
                        and now - o.started_at > o.unit.timeout_s + DRIVER_TIMEOUT_GRACE_S):
                    o.cancelled_for_timeout = True
                    ray.cancel(o.ref, force=True)
            if time.monotonic() - last_recheck > LIVE_RECHECK_S:
                last_recheck = time.monotonic()
                _recheck_feasible(out, requests, suite, store, infeasible_since, ray)
            progress.set_running(sum(1 for o in out.values() if o.started_at is not None))
            flush()
    finally:
        if out and cancel_on_exit:
            for ref in list(out):
                try:
                    ray.cancel(ref, force=True)
                except Exception:  # noqa: BLE001 - best effort while stopping
                    pass
        try:
            flush(force=True)
        finally:
            try:
                ray.kill(attempt_log)
            except Exception:  # noqa: BLE001
                pass
            for pg in host_groups.values():
                try:
                    ray.util.remove_placement_group(pg)
                except Exception:  # noqa: BLE001 - best effort while stopping
                    pass


def _reserve_hosts(units, suite, gpu, nodes, progress) -> dict:
    """A `devices` suite: hold one GPU and its host CPUs per bundle for the batch (resources.py)."""
    gpu_shapes: dict = {}
    cpu_requests: dict = {}
    for t in units:
        req = request_for(t, suite, on_gpu(t, gpu))
        key = json.dumps(req, sort_keys=True)
        if on_gpu(t, gpu):
            gpu_shapes.setdefault(key, [req, 0])[1] += 1
        else:
            cpu_requests[key] = req
    shapes = host_reservation([tuple(v) for v in gpu_shapes.values()], list(cpu_requests.values()), nodes, suite.name)
    return reserve_gpu_hosts(shapes, progress.note) if shapes else {}


def _collect(ray, ref, o, gpu, suite, RayTaskError, TaskCancelledError):
    """(record, fingerprint or None, ray info or None, log or None) for a landed ref; never raises."""
    attempts = max(o.attempts, 1)
    try:
        result = ray.get(ref)
        return result["record"], result["fingerprint"], result["ray"], result.get("log")
    except TaskCancelledError:
        reason = (f"timeout: no result {o.unit.timeout_s + DRIVER_TIMEOUT_GRACE_S:g} s after the trial "
                  f"started; cancelled by the driver" if o.cancelled_for_timeout else "cancelled")
    except RayTaskError as e:
        cause = e.cause if isinstance(getattr(e, "cause", None), BaseException) else None
        if isinstance(cause, TrialProcessDied):
            reason = f"worker process died without a result after {attempts} attempts: {cause}"
        else:
            text = str(cause or e).strip().splitlines()
            reason = f"ray task failed: {(text[-1] if text else type(e).__name__)}"
    except ray.exceptions.RayError as e:  # worker crashed, node died, OOM-killed: retries spent
        first = (str(e).strip().splitlines() or [""])[0]
        reason = f"{type(e).__name__} after {attempts} attempts (max_retries {suite.max_retries}): {first}"
    return failure_record(o.unit, reason[:600], gpu, "ray"), None, None, None


def _recheck_feasible(out, requests, suite, store, infeasible_since, ray) -> None:
    """Nodes lost mid-run: when no alive node can hold a waiting trial for a minute, stop cleanly."""
    waiting = {o.req_key for o in out.values() if o.started_at is None}
    if not waiting:
        infeasible_since.clear()
        return
    nodes = alive_nodes()
    grace = max(LIVE_INFEASIBLE_GRACE_S, float(os.environ.get(NODE_WAIT_ENV) or 0))
    for key in waiting:
        reason = infeasible_reason(requests[key], nodes, suite.name)
        if reason is None:
            infeasible_since.pop(key, None)
            continue
        since = infeasible_since.setdefault(key, time.monotonic())
        if time.monotonic() - since > grace:
            raise UserError(f"{reason} (the cluster lost the nodes that could; finished trials are kept: "
                            f"regbench run --resume {store.path})")
