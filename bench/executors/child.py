"""The trial process: runs ONE unit of work (a trial or a paired session) and writes its record.

    python -m bench.executors.child REQUEST_JSON OUT_JSON

Both start methods end here: a plain fresh interpreter runs this module; a zygote child (see
zygote.py) calls `main` right after the fork. The record is written atomically; exit code 0
whenever a record was written, whatever its status. The process dies with its parent
(PR_SET_PDEATHSIG), so a killed executor, Ray worker or zygote leaves no orphan behind.
"""
from __future__ import annotations

import json
import os
import pathlib
import sys
import time

FRAMEWORKS = ("keras", "tensorflow", "jax", "torch")
MEMORY_LIMIT_ENV = "REGBENCH_TRIAL_MEMORY_LIMIT_BYTES"


def preload(backend: str) -> None:
    """Import everything a trial needs, run nothing (a zygote does this once; an interpreter trial
    under a memory limit does it before the limit, so the limit counts from the same point)."""
    import keras  # noqa: F401 - imports the framework of KERAS_BACKEND
    import numpy  # noqa: F401
    import sklearn.datasets  # noqa: F401
    import sklearn.model_selection  # noqa: F401

    from bench import env, inputs, runner  # noqa: F401
    from bench.measure import compute, convergence, energy, memory, timing  # noqa: F401
    from bench.units import runners, session_run  # noqa: F401
    from bench.workloads import WORKLOADS  # noqa: F401

    env.fingerprint()  # once per zygote; children inherit the cached fingerprint


def limit_memory() -> int | None:
    """Cap this trial process's address space (RLIMIT_AS) at what it has mapped now (the framework
    imported, nothing run) plus $REGBENCH_TRIAL_MEMORY_LIMIT_BYTES, so a trial that outgrows it fails with an OOM record
    instead of the kernel's OOM killer taking a neighbour. Returns the limit's bytes, None if unset."""
    value = os.environ.get(MEMORY_LIMIT_ENV, "").strip()
    if not value:
        return None
    import resource

    limit = int(float(value))
    mapped = 0
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmSize:"):
                mapped = int(line.split()[1]) * 1024
    resource.setrlimit(resource.RLIMIT_AS, (mapped + limit, resource.RLIM_INFINITY))
    return limit


def die_with_parent(expected_parent: int | None = None) -> bool:
    """SIGKILL this process when its parent dies (Linux); False when the parent is already gone."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, 9)  # PR_SET_PDEATHSIG, SIGKILL
    except (OSError, AttributeError):
        pass
    return expected_parent is None or os.getppid() == expected_parent


def run_unit(request: dict) -> dict:
    """Run the request's unit of work (bench/units) in this process and return its record."""
    from bench.units import runners, unit_from_dict

    return runners.run(unit_from_dict(request["kind"], request["unit"]), request["executor"], request["gpu"])


def main(argv: list[str], start_method: str = "interpreter") -> int:
    entered_unix = time.time()
    request_path, out_path = pathlib.Path(argv[0]), pathlib.Path(argv[1])
    request = json.loads(request_path.read_text())
    if not die_with_parent(request.get("parent_pid")):
        return 137  # the parent died before PR_SET_PDEATHSIG took effect
    if start_method == "interpreter":
        early = [m for m in FRAMEWORKS if m in sys.modules]
        if early:
            print(f"regbench: {early} imported before the trial set its backend", file=sys.stderr)
            return 3
    cores = None
    if request.get("pin_cores"):
        from bench.executors.cores import claim

        cores = claim(request["pin_cores"], request.get("core_lock_dir"))
    if start_method == "interpreter" and os.environ.get(MEMORY_LIMIT_ENV):
        preload(os.environ.get("KERAS_BACKEND", "tensorflow"))  # the limit counts from here, as in a zygote child
    memory_limit = limit_memory()
    record = run_unit(request)
    from bench.backends import framework_config, recorded_environment

    record.setdefault("process", {}).update({
        "environment": recorded_environment(),  # the same under both executors (trial_process.trial_environment)
        "framework_config": framework_config(os.environ.get("KERAS_BACKEND", "tensorflow")),
        "zygote_device_kind": request.get("zygote_device_kind"),
        "memory_limit_bytes": memory_limit,
        "cpu_cores": cores,
        "pid": os.getpid(), "parent_pid": os.getppid(), "start_method": start_method,
        "start_note": request.get("start_note"),
        "launched_unix": request.get("launched_unix"), "entered_unix": entered_unix,
        "finished_unix": time.time()})
    from bench.store import write_json_atomic

    write_json_atomic(out_path, record)
    return 0


if __name__ == "__main__":
    code = main(sys.argv[1:])
    # The record is written and fsynced: skip the interpreter's teardown (TensorFlow's atexit
    # handlers and thread joins take 1-3 s of CPU that would delay the next trial on this slot).
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
