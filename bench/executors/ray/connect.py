"""Joining a Ray cluster, or starting a private local one, and cleaning up after a killed driver.

`ray.init()` with no address, so `ray submit`, `ray job submit` and RAY_ADDRESS join that
cluster and everything else starts a private local instance (no dashboard, logs not forwarded,
every port on 127.0.0.1, token auth on, shut down at the end). RAY_ADDRESS=local forces a private
instance. A caller that has already called `ray.init()` (tests, notebooks) keeps its connection.
REGBENCH_RAY_SHIP_CODE=1 ships this checkout's `bench/` with the job (runtime_env py_modules)
instead of the installed one.
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
        kwargs["runtime_env"] = {"py_modules": [str(pathlib.Path(__file__).resolve().parents[2])]}
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
    with _loopback_node():
        ray.init(include_dashboard=False, resources={NODE_SLOT: 1}, object_store_memory=128 * 2**20,
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
