"""Joining a Ray cluster when told to, or starting a private local one, and cleaning up after a
killed driver.

A run joins a cluster only when told: `regbench run --address ADDR` (`auto`: the cluster this
node belongs to, the one its last `ray start` announced), else RAY_ADDRESS (`ray job submit` sets
it; RAY_ADDRESS=local means private). Without either it starts a private local instance (no
dashboard, logs not forwarded, every port on 127.0.0.1, token auth on, shut down at the end),
even where /tmp/ray/ray_current_cluster names a cluster: any user of the machine can write that
file, and a run must not land on someone else's cluster. Seeing such a file, it says in one line
how to join it. Joining, it says where and how many nodes. `clusters/regbench_job.py` passes
`--address auto` for `ray submit`. A caller that has already called `ray.init()` (tests,
notebooks) keeps its connection. REGBENCH_RAY_SHIP_CODE=1 ships this checkout's `bench/` with the
job (runtime_env py_modules) instead of the installed one.
"""
from __future__ import annotations

import contextlib
import os
import pathlib
import socket
import sys
import time

from bench.errors import UserError
from bench.executors.ray.resources import NODE_SLOT

SHIP_CODE_ENV = "REGBENCH_RAY_SHIP_CODE"
LOG_ENV = "REGBENCH_RAY_LOG"


def _flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def requested_address(address: str | None = None) -> str | None:
    """The cluster to join: `address` (from --address), else RAY_ADDRESS; None for a private one."""
    addr = (address or os.environ.get("RAY_ADDRESS", "")).strip()
    return None if addr in ("", "local") else addr


def joins_cluster(address: str | None = None) -> bool:
    """True when this run joins a cluster (told by --address or RAY_ADDRESS), False when it starts
    a private instance. A cluster file alone (the last `ray start`) never makes it join."""
    return requested_address(address) is not None


def announced_cluster() -> str | None:
    """The address the last `ray start` on this node wrote ($RAY_TMPDIR or /tmp: ray/ray_current_cluster)."""
    try:
        from ray._private import utils

        return utils.read_ray_address() or None
    except Exception:  # noqa: BLE001 - unreadable: nothing announced
        return None


def _resolve(address: str) -> tuple[str, str]:
    """(address for ray.init, words for messages). `auto` is this node's announced cluster."""
    if address != "auto":
        return address, address
    found = announced_cluster()
    if not found:
        raise UserError("--address auto: no Ray cluster on this node (no `ray start` here: "
                        "ray/ray_current_cluster missing in the Ray temp dir); start one, or give its address")
    return found, f"{found} (the cluster this node belongs to)"


def _check_reachable(addr: str, where: str) -> None:
    """ray.init() retries a dead GCS address for minutes: refuse it in seconds instead."""
    if "://" in addr or ":" not in addr:  # "ray://" client addresses and the like: let ray.init judge
        return
    host, port = addr.rsplit(":", 1)
    try:
        socket.create_connection((host, int(port)), timeout=10).close()
    except (OSError, ValueError) as e:
        raise UserError(f"cannot join the Ray cluster at {where} ({e.strerror or e}); start it, fix "
                        "--address or RAY_ADDRESS, or leave both out to start a private instance") from None


def connect(address: str | None = None, note=None) -> bool:
    """Join the cluster at `address` or RAY_ADDRESS, or start a private local instance. True
    when we started it. `note(line)` gets the one line saying which (default: stderr)."""
    import logging

    import ray

    note = note or (lambda line: print(line, file=sys.stderr))
    if ray.is_initialized():
        return False
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    kwargs = dict(log_to_driver=_flag(LOG_ENV), logging_level=logging.WARNING, namespace="regbench")
    if _flag(SHIP_CODE_ENV):
        kwargs["runtime_env"] = {"py_modules": [str(pathlib.Path(__file__).resolve().parents[2])]}
    wanted = requested_address(address)
    if wanted is not None:
        addr, where = _resolve(wanted)
        _check_reachable(addr, where)
        try:
            ray.init(address=addr, **kwargs)
        except (ConnectionError, TimeoutError) as e:
            raise UserError(f"cannot join the Ray cluster at {where}: {str(e).splitlines()[0][:200]}; "
                            "leave out --address and RAY_ADDRESS to start a private instance instead") from None
        nodes = sum(1 for n in ray.nodes() if n.get("Alive"))
        note(f"ray: joined the Ray cluster at {addr} ({nodes} node{'s' if nodes != 1 else ''})")
        return False
    announced = announced_cluster()
    if announced:
        note(f"ray: a Ray cluster was started on this machine ({announced}); this run starts its own private "
             "instance. To run on that cluster: regbench run --address auto")
    # A new local instance gets Ray's default token auth (a token in ~/.ray/auth_token is made on
    # first use); Ray announces that with a warning on every run, which we keep off stderr.
    # RAY_AUTH_MODE=disabled still opts out.
    logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(logging.ERROR)
    with _loopback_node():  # address "local": ray.init() alone would join the announced cluster
        ray.init(address="local", include_dashboard=False, resources={NODE_SLOT: 1}, object_store_memory=128 * 2**20,
                 _node_ip_address=LOOPBACK, **kwargs)
    return True


LOOPBACK = "127.0.0.1"


@contextlib.contextmanager
def _loopback_node():
    """While starting a private local instance, let its node keep 127.0.0.1 as its IP.

    Every Ray 2.60 service binds by the node's IP: the GCS, the raylet (node and object manager),
    core workers, the dashboard and runtime-env agents and the metrics servers of the monitor, the
    dashboard head and the agent listen on 127.0.0.1 only when the node's IP is 127.0.0.1, and on
    all interfaces (or the outward address) otherwise. But ray.init() rewrites a requested
    127.0.0.1 to the machine's outward IP, except where Ray clusters are off (its macOS/Windows
    default, RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0), which only changes that lookup
    (services.get_node_ip_address). That switch is read at import, so it is turned off here for
    the one ray.init() call and restored after; the processes Ray starts get the address on their
    command line. Joining a cluster never comes here. tests/test_ray_local_security.py checks the
    result: every listening socket of a local run is on loopback."""
    from ray._private import ray_constants

    was = getattr(ray_constants, "ENABLE_RAY_CLUSTER", True)
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = was


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


def start_reaper():
    import subprocess

    code = f"from bench.executors.ray.connect import reaper_main; reaper_main({os.getpid()})"
    return subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
