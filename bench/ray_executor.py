"""The `ray` executor: one Ray task per trial, on every GPU and CPU of a cluster or of this machine.

How a trial runs
----------------
Each trial is one Ray task. The task runs in a (reusable) Ray worker and starts ONE fresh
interpreter for the trial, `python -c <bootstrap> TRIAL_JSON OUT_JSON --executor ray`, which is
exactly `python -m bench.worker` (the same trial process the `process` executor starts), so both
executors measure the same thing. We do not use `max_calls=1` + `run_trial` in the Ray worker
itself: starting a Ray worker costs ~0.6 s of CPU on an idle 2-core machine and 2-3 s on a loaded
one (Python + `import ray` + core-worker registration), all of it inside the trial's resource slot,
while a plain interpreter starts in ~0.05 s; and a trial process without Ray's background threads
times more cleanly. The trial process never imports Ray; it checks that no framework was imported
before `bench.runner.run_trial` sets KERAS_BACKEND and the thread counts, and it dies with its Ray
worker (PR_SET_PDEATHSIG), so a killed worker or a lost node leaves no orphan behind.

Resources: a GPU trial asks for `num_gpus=1` (never fractional; Ray sets CUDA_VISIBLE_DEVICES);
a CPU trial asks for `num_cpus=cpus_per_trial` and runs with CUDA_VISIBLE_DEVICES="" and explicit
thread counts. `device: auto` means GPU trials when the cluster has a GPU. Isolation `node` adds
one unit of the custom resource `regbench_node_slot` per trial: a local instance declares it,
cluster YAMLs must declare `resources: {regbench_node_slot: 1}` on every node type (a cluster
without it fails fast with that advice). `accelerator_type: H100` pins a trial to nodes whose
resource `accelerator_type:H100` exists (Ray sets it on GPU nodes; fake nodes in tests declare it).

Faults: a trial process or Ray worker killed mid-trial, or a node lost, is retried by Ray up to
the suite's `max_retries` (TrialProcessDied is the one exception type Ray retries); an exception,
OOM or NaN inside the trial is a record (written once, never retried). A trial past `timeout_s`
is killed in its worker and recorded as failed; the driver also cancels a task that has not
answered 60 s after that. A request that no node can satisfy fails before anything is submitted
(UserError, one line); REGBENCH_NODE_WAIT_S gives an autoscaling cluster that long to add a node.

Results stream back with `ray.wait` and are written the moment each lands (RunStore.write_trial is
atomic and exactly-once). The manifest gets every node's fingerprint and, per trial, the node
that ran it and how many attempts it took. Repeats keep the suite's interleaved order: tasks are
submitted in trial order and Ray grants leases of one shape first in, first out.

Code on the nodes: workers import the *installed* `bench` package (the cluster YAMLs pip-install
the project on every node; locally the venv has it). Each result carries a hash of the `bench`
sources its node ran, and the driver warns when it differs from its own. REGBENCH_RAY_SHIP_CODE=1
ships this checkout's `bench/` with the job instead (runtime_env py_modules).

Connecting: `ray.init()` with no address, so `ray submit`, `ray job submit` and RAY_ADDRESS join
that cluster and everything else starts a private local instance (no dashboard, logs not
forwarded, shut down at the end). RAY_ADDRESS=local forces a private instance. A caller that has
already called `ray.init()` (tests, notebooks) keeps its connection.
"""
from __future__ import annotations

import hashlib
import json
import os
import pathlib
import socket
import sys
import time

from bench.errors import UserError

NODE_SLOT = "regbench_node_slot"
NODE_WAIT_ENV = "REGBENCH_NODE_WAIT_S"
SHIP_CODE_ENV = "REGBENCH_RAY_SHIP_CODE"
LOG_ENV = "REGBENCH_RAY_LOG"
MARKER_ENV = "REGBENCH_RAY_MARKER_DIR"  # tests: each attempt writes its pids here
DRIVER_TIMEOUT_GRACE_S = 60.0
MANIFEST_FLUSH_S = 5.0
LIVE_RECHECK_S = 5.0
LIVE_INFEASIBLE_GRACE_S = 60.0


class TrialProcessDied(Exception):
    """The trial process ended without writing its record (killed, segfault): Ray retries it."""


# ---------------------------------------------------------------------------------------------
# The trial process (fresh interpreter; imports neither Ray nor a framework before the runner)
# ---------------------------------------------------------------------------------------------

BOOTSTRAP = "import sys; from bench.ray_executor import trial_process_main; sys.exit(trial_process_main(sys.argv[1:]))"
FRAMEWORKS = ("keras", "tensorflow", "jax", "torch")


def trial_process_main(argv: list[str]) -> int:
    """Entry of the trial process: die with the parent Ray worker, then run bench.worker."""
    try:  # Linux: SIGKILL this process when the Ray worker that started it dies
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, 9)  # PR_SET_PDEATHSIG, SIGKILL
    except (OSError, AttributeError):
        pass
    parent = os.environ.get("REGBENCH_PARENT_PID")
    if parent and os.getppid() != int(parent):  # the parent died before prctl took effect
        return 137
    early = [m for m in FRAMEWORKS if m in sys.modules]
    if early:
        print(f"regbench: {early} imported before the trial set its backend", file=sys.stderr)
        return 3
    from bench.worker import main

    code = main(argv)
    # The record is written and fsynced: skip the interpreter's teardown (TensorFlow's atexit
    # handlers and thread joins take 1-3 s of CPU that would delay the next trial on this slot).
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


# ---------------------------------------------------------------------------------------------
# The Ray task (runs in a Ray worker; the trial itself runs in a child process)
# ---------------------------------------------------------------------------------------------

_NODE_CACHE: dict = {}


def code_hash() -> str:
    """Hash of the `bench` package sources this process imports (same code => same hash)."""
    if "code_hash" not in _NODE_CACHE:
        root = pathlib.Path(__file__).resolve().parent
        h = hashlib.sha256()
        for p in sorted(root.rglob("*.py")) + sorted(root.rglob("*.yaml")):
            h.update(str(p.relative_to(root)).encode())
            h.update(p.read_bytes())
        _NODE_CACHE["code_hash"] = h.hexdigest()[:12]
    return _NODE_CACHE["code_hash"]


def _node_fingerprint() -> dict:
    from bench import env

    return env.fingerprint()  # cached per process by env


def _tail(path: pathlib.Path, n: int = 3) -> str:
    try:
        lines = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return " | ".join(line[-200:] for line in lines[-n:])


def trial_task(trial_dict: dict, gpu: bool | None, ledger, options: dict) -> dict:
    """One attempt of one trial. Returns {"record", "fingerprint", "ray"}; raises TrialProcessDied."""
    import signal
    import subprocess
    import tempfile

    import ray

    from bench.trial import Trial

    trial = Trial.from_dict(trial_dict)
    ctx = ray.get_runtime_context()
    info = {
        "node_id": ctx.get_node_id(),
        "node_ip": ray.util.get_node_ip_address(),
        "hostname": socket.gethostname(),
        "worker_pid": os.getpid(),
        "gpu_ids": [str(g) for g in ctx.get_accelerator_ids().get("GPU", [])],
        "code_hash": code_hash(),
    }
    if ledger is not None:  # wait for it: the driver counts attempts from these
        try:
            ray.get(ledger.started.remote(trial.trial_id, dict(info)), timeout=30)
        except ray.exceptions.RayError:
            pass

    t_task = time.time()
    with tempfile.TemporaryDirectory(prefix="regbench-ray-") as tmp:
        work = pathlib.Path(tmp)
        trial_file, out_file, log_file = work / "trial.json", work / "out.json", work / "trial.log"
        trial_file.write_text(json.dumps(trial_dict))
        envv = dict(os.environ)
        envv.pop("KERAS_BACKEND", None)
        envv["REGBENCH_PARENT_PID"] = str(os.getpid())
        pkg_root = str(pathlib.Path(__file__).resolve().parent.parent)  # the bench this worker runs
        envv["PYTHONPATH"] = os.pathsep.join(p for p in (pkg_root, envv.get("PYTHONPATH")) if p)
        args = [sys.executable, "-c", BOOTSTRAP, str(trial_file), str(out_file), "--executor", "ray"]
        if gpu is False:
            envv["CUDA_VISIBLE_DEVICES"] = ""
            args.append("--cpu")
        elif gpu is True:
            args.append("--gpu")
        with open(log_file, "wb") as log:
            t_spawn = time.time()
            proc = subprocess.Popen(args, env=envv, stdout=log, stderr=subprocess.STDOUT,
                                    start_new_session=True, cwd=tmp)
            info["trial_pid"] = proc.pid
            if options.get("marker_dir"):
                marker = pathlib.Path(options["marker_dir"]) / f"{trial.trial_id}.{proc.pid}.json"
                marker.write_text(json.dumps({**info, "trial_id": trial.trial_id}))
            try:
                code = proc.wait(timeout=trial.timeout_s)
                timed_out = False
            except subprocess.TimeoutExpired:
                timed_out, code = True, None
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                proc.wait()
        t_exit = time.time()
        info.update(t_start=t_task, t_end=t_exit, process_s=round(t_exit - t_spawn, 4),
                    spawn_s=round(t_spawn - t_task, 4))
        if out_file.exists():
            record = json.loads(out_file.read_text())
        elif timed_out:
            from bench.local_executor import failure_record

            record = failure_record(trial, f"timeout: killed after {trial.timeout_s:g} s", gpu is not False, "ray")
        else:
            raise TrialProcessDied(f"trial process exited with code {code} without a result on "
                                   f"{info['hostname']}; last output: {_tail(log_file)}")
    return {"record": record, "fingerprint": _node_fingerprint(), "ray": info}


class Ledger:
    """A tiny actor on the driver's node: tasks report each attempt's start (time, node, pids)."""

    def __init__(self):
        self.events: list = []

    def started(self, trial_id: str, info: dict) -> None:
        self.events.append((trial_id, time.time(), info))

    def drain(self) -> list:
        events, self.events = self.events, []
        return events


# ---------------------------------------------------------------------------------------------
# Driver
# ---------------------------------------------------------------------------------------------

def _flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def joins_cluster() -> bool:
    """True when `ray.init()` with no address would join an existing cluster (RAY_ADDRESS,
    `ray submit` / `ray job submit` on a node where `ray start` ran), False when it starts one."""
    addr = os.environ.get("RAY_ADDRESS", "").strip()
    if addr:
        return addr != "local"
    try:
        from ray._private import services

        return services.canonicalize_bootstrap_address(None) is not None
    except Exception:  # noqa: BLE001 - a stale address file: let ray.init decide and report
        return True


def _check_reachable(where: str) -> None:
    """ray.init() retries a dead GCS address for minutes: refuse it in seconds instead."""
    try:
        from ray._private import services

        addr = services.canonicalize_bootstrap_address(None)
    except Exception:  # noqa: BLE001 - "ray://" client addresses and the like: let ray.init judge
        return
    if not addr or "://" in addr or ":" not in addr:
        return
    host, port = addr.rsplit(":", 1)
    try:
        socket.create_connection((host, int(port)), timeout=10).close()
    except (OSError, ValueError) as e:
        raise UserError(f"cannot join the Ray cluster at {where} ({addr}: {e.strerror or e}); start it, fix "
                        "RAY_ADDRESS, or set RAY_ADDRESS=local to start a private instance") from None


def connect() -> bool:
    """Join the cluster (or start a private local instance). True when we started it."""
    import logging

    import ray

    if ray.is_initialized():
        return False
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    kwargs = dict(log_to_driver=_flag(LOG_ENV), logging_level=logging.WARNING, namespace="regbench")
    if _flag(SHIP_CODE_ENV):
        kwargs["runtime_env"] = {"py_modules": [str(pathlib.Path(__file__).resolve().parent)]}
    if joins_cluster():
        where = os.environ.get("RAY_ADDRESS") or "the address in /tmp/ray/ray_current_cluster (last `ray start`)"
        _check_reachable(where)
        try:
            ray.init(**kwargs)
        except (ConnectionError, TimeoutError) as e:
            raise UserError(f"cannot join the Ray cluster at {where}: {str(e).splitlines()[0][:200]}; "
                            "set RAY_ADDRESS=local to start a private instance instead") from None
        return False
    # A new local instance gets Ray's default token auth (a token in ~/.ray/auth_token is made on
    # first use); Ray announces that with a warning on every run, which we keep off stderr.
    # RAY_AUTH_MODE=disabled still opts out.
    logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(logging.ERROR)
    ray.init(include_dashboard=False, resources={NODE_SLOT: 1}, object_store_memory=128 * 2**20, **kwargs)
    return True


def reaper_main(driver_pid: int, poll_s: float = 1.0, grace_s: float = 3.0) -> None:
    """Watch the driver that started a local Ray instance; if it dies without shutting Ray down
    (SIGKILL), kill what is left of that instance. Ray's own fate-sharing stops the GCS and the
    raylet, but its agents (and, for a moment, workers) outlive a SIGKILLed driver (Ray 2.60).
    Only processes seen as the driver's descendants are touched (psutil checks pid + start time)."""
    import psutil

    try:
        driver = psutil.Process(driver_pid)
    except psutil.NoSuchProcess:
        return
    known: dict = {}
    while True:
        try:
            if not driver.is_running() or driver.status() == psutil.STATUS_ZOMBIE:
                break
            for child in driver.children(recursive=True):
                if child.pid != os.getpid():
                    known.setdefault(child.pid, child)
        except psutil.NoSuchProcess:
            break
        time.sleep(poll_s)
    time.sleep(grace_s)
    for proc in known.values():
        try:
            if proc.is_running():
                proc.kill()
        except psutil.Error:
            pass


def _start_reaper():
    import subprocess

    code = f"from bench.ray_executor import reaper_main; reaper_main({os.getpid()})"
    return subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)


def alive_nodes() -> list[dict]:
    import ray

    return [n for n in ray.nodes() if n.get("Alive")]


def wants_gpu(suite, nodes: list[dict]) -> bool:
    if suite.device == "gpu":
        return True
    if suite.device == "cpu":
        return False
    return any(n["Resources"].get("GPU", 0) >= 1 for n in nodes)


def request_for(trial, suite, gpu: bool) -> dict:
    """The Ray resources one trial asks for: {'CPU': n, 'GPU': 0|1, custom...}."""
    req = {"CPU": float(trial.cpu_threads or (suite.cpus_per_trial if not gpu else 1))}
    if gpu:
        req["GPU"] = 1.0
    if suite.isolation == "node":
        req[NODE_SLOT] = 1.0
    if trial.accelerator_type:
        req[f"accelerator_type:{trial.accelerator_type}"] = 0.001
    return req


def infeasible_reason(req: dict, nodes: list[dict], suite_name: str) -> str | None:
    """None when some alive node can hold `req`, else one line saying what is missing."""
    if any(all(n["Resources"].get(k, 0.0) >= v for k, v in req.items()) for n in nodes):
        return None
    have = lambda key: [n for n in nodes if n["Resources"].get(key, 0.0) >= req[key]]  # noqa: E731
    summary = "; ".join(
        f"{n.get('NodeManagerAddress', '?')}: CPU {n['Resources'].get('CPU', 0):g}, GPU {n['Resources'].get('GPU', 0):g}"
        for n in nodes[:6]) or "no alive node"
    accel = [k for k in req if k.startswith("accelerator_type:")]
    if accel and not have(accel[0]):
        offered = sorted({k.split(":", 1)[1] for n in nodes for k in n["Resources"] if k.startswith("accelerator_type:")})
        return (f"suite {suite_name}: trials pinned to accelerator_type {accel[0].split(':', 1)[1]} but no node of "
                f"this Ray cluster offers it (offered: {', '.join(offered) or 'none'})")
    if "GPU" in req and not have("GPU"):
        return (f"suite {suite_name} asks for 1 GPU per trial but no node of this Ray cluster has a GPU "
                f"({len(nodes)} node(s): {summary}); use device: cpu or a cluster with GPUs")
    if NODE_SLOT in req and not have(NODE_SLOT):
        return (f"suite {suite_name} uses isolation: node, which needs the custom resource {NODE_SLOT}: 1 on "
                f"every node; declare resources: {{{NODE_SLOT}: 1}} in the cluster YAML's node types "
                f"(or ray start --resources='{{\"{NODE_SLOT}\": 1}}')")
    if not have("CPU"):
        return (f"suite {suite_name} asks for {req['CPU']:g} CPUs per trial but no node of this Ray cluster has "
                f"that many ({summary}); lower cpus_per_trial")
    return (f"suite {suite_name}: no single node of this Ray cluster has all of {json.dumps(req)} "
            f"({summary})")


def check_feasible(requests: dict, suite_name: str, note=None) -> list[dict]:
    """Fail fast (UserError) when a request fits no node. REGBENCH_NODE_WAIT_S (default 0) first
    waits that long for such a node to join: set it where nodes are still coming (right after
    `ray up`, autoscaling node types with min_workers: 0)."""
    wait_s = float(os.environ.get(NODE_WAIT_ENV) or 0)
    deadline = time.monotonic() + wait_s
    while True:
        nodes = alive_nodes()
        reasons = [r for r in (infeasible_reason(req, nodes, suite_name) for req in requests.values()) if r]
        if not reasons:
            return nodes
        if time.monotonic() >= deadline:
            waited = f" (after waiting {wait_s:g} s for nodes)" if wait_s else ""
            raise UserError(reasons[0] + waited)
        if note is not None:
            note(f"waiting up to {deadline - time.monotonic():.0f} s more ({NODE_WAIT_ENV}) for a node: {reasons[0]}")
            note = None
        time.sleep(2.0)


class _Outstanding:
    def __init__(self, trial, ref, req_key):
        self.trial, self.ref, self.req_key = trial, ref, req_key
        self.attempts = 0
        self.started_at: float | None = None  # ledger time of the latest attempt's start
        self.cancelled_for_timeout = False


def _failed(trial, reason: str, gpu: bool) -> dict:
    from bench.local_executor import failure_record

    return failure_record(trial, reason, gpu, executor="ray")


def run_ray(trials, store, suite, progress) -> None:
    """Run `trials` as Ray tasks; write each record into `store` as it lands."""
    import ray

    started_here = connect()
    reaper = _start_reaper() if started_here else None
    try:
        # A private instance is torn down by ray.shutdown(), which stops every task; force-cancelling
        # tasks first races with replies from workers that Ctrl-C already hit and can abort the
        # driver inside Ray ("Tried to complete task that was not pending"). Only a joined
        # cluster, which outlives this driver, needs its tasks cancelled.
        _run(trials, store, suite, progress, ray, cancel_on_exit=not started_here)
    finally:
        if started_here:
            ray.shutdown()
        if reaper is not None:
            reaper.kill()
            reaper.wait()


def _run(trials, store, suite, progress, ray, cancel_on_exit: bool = True) -> None:
    from ray.exceptions import RayTaskError, TaskCancelledError
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    from bench import env
    from bench.runner import precheck

    nodes = alive_nodes()
    gpu = wants_gpu(suite, nodes)
    requests = {}
    for t in trials:
        req = request_for(t, suite, gpu)
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

    # CPU trials the runner would skip (e.g. mixed_float16 without XLA) are decided here, without
    # starting a process: the decision depends on the precision, backend and jit setting only.
    todo = []
    for t in trials:
        skipped = None if gpu else precheck(t, "ray", gpu=False)
        if skipped:
            skipped["node"]["ray"] = {"evaluated_on": "driver"}
            store.write_trial(skipped)
            manifest_nodes[driver_fp["fingerprint_id"]] = driver_fp
            progress.finished(skipped, was_running=False)
        else:
            todo.append(t)
    flush(force=True)
    if not todo:
        return

    driver_node = ray.get_runtime_context().get_node_id()
    ledger = ray.remote(num_cpus=0, max_restarts=-1)(Ledger).options(
        scheduling_strategy=NodeAffinitySchedulingStrategy(driver_node, soft=True)).remote()
    task = ray.remote(trial_task)
    options = {"marker_dir": os.environ.get(MARKER_ENV)}
    out: dict = {}  # ref -> _Outstanding
    by_trial: dict = {}
    for t in todo:
        req = request_for(t, suite, gpu)
        custom = {k: v for k, v in req.items() if k not in ("CPU", "GPU")}
        ref = task.options(
            num_cpus=req["CPU"], num_gpus=req.get("GPU", 0), resources=custom or None,
            max_retries=suite.max_retries, retry_exceptions=[TrialProcessDied],
            name=f"regbench:{t.trial_id}"[:120],
        ).remote(t.to_dict(), None if gpu else False, ledger, options)
        o = _Outstanding(t, ref, json.dumps(req, sort_keys=True))
        out[ref] = o
        by_trial[t.trial_id] = o
    progress.note(f"ray: {len(todo)} trials submitted to {len(nodes)} node(s) "
                  f"({'1 GPU' if gpu else f'{suite.cpus_per_trial} CPU'} per trial, isolation {suite.isolation})")

    warned_hash: set = set()
    drain_ref = ledger.drain.remote()
    infeasible_since: dict = {}
    last_recheck = time.monotonic()
    try:
        while out:
            ready, _ = ray.wait(list(out), num_returns=1, timeout=0.5)
            if ready:
                ready, _ = ray.wait(list(out), num_returns=len(out), timeout=0)
            # attempts that started since the last look; before writing results, a drain asked
            # for after they landed (each attempt registered its start before its trial ran)
            if drain_ref is not None and (ready or ray.wait([drain_ref], timeout=0)[0]):
                try:
                    events = ray.get(drain_ref, timeout=30)
                    if ready:
                        events += ray.get(ledger.drain.remote(), timeout=30)
                    for trial_id, t_start, _info in events:
                        o = by_trial.get(trial_id)
                        if o is not None:
                            o.attempts += 1
                            o.started_at = t_start
                    drain_ref = ledger.drain.remote()
                except ray.exceptions.RayError:
                    drain_ref = None  # ledger gone: no running count, no driver-side timeout
            for ref in ready:
                o = out.pop(ref)
                by_trial.pop(o.trial.trial_id, None)
                record, fp, info = _collect(ray, ref, o, gpu, suite, RayTaskError, TaskCancelledError)
                if info:
                    record.setdefault("node", {})["ray"] = info
                    placements[o.trial.trial_id] = {
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
                store.write_trial(record)
                progress.finished(record, was_running=o.started_at is not None)
            now = time.time()
            for o in list(out.values()):  # driver-side net behind the in-worker timeout
                if (o.started_at is not None and not o.cancelled_for_timeout
                        and now - o.started_at > o.trial.timeout_s + DRIVER_TIMEOUT_GRACE_S):
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
                ray.kill(ledger)
            except Exception:  # noqa: BLE001
                pass


def _collect(ray, ref, o, gpu, suite, RayTaskError, TaskCancelledError):
    """(record, fingerprint or None, ray info or None) for a landed ref; never raises."""
    attempts = max(o.attempts, 1)
    try:
        result = ray.get(ref)
        return result["record"], result["fingerprint"], result["ray"]
    except TaskCancelledError:
        reason = (f"timeout: no result {o.trial.timeout_s + DRIVER_TIMEOUT_GRACE_S:g} s after the trial "
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
    return _failed(o.trial, reason[:600], gpu), None, None


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
