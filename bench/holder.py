"""Who holds a run's lock or a scratch directory: host, pid and the process's start time.

A holder is gone when it ran on this host and its pid is dead, or now belongs to a process that
started at another time (a reused pid). A holder on another host is never judged gone from here.
"""
from __future__ import annotations

import socket


def me() -> dict:
    """This process as a holder."""
    import os

    return {"host": socket.gethostname(), "pid": os.getpid(), "started_unix": _start_time(os.getpid())}


def _start_time(pid: int) -> float | None:
    import psutil

    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:  # dead, only not yet waited for by its parent
            return None
        return round(proc.create_time(), 2)
    except psutil.Error:
        return None


def is_gone(holder: dict) -> bool:
    """True when `holder` (me() of some process) is known to be dead."""
    if not isinstance(holder, dict) or holder.get("host") != socket.gethostname():
        return False
    pid = holder.get("pid")
    if not isinstance(pid, int) or pid <= 0:
        return False
    started = _start_time(pid)
    if started is None:
        return True
    was = holder.get("started_unix")
    return isinstance(was, (int, float)) and abs(started - was) > 1.0


def describe(holder: dict) -> str:
    return f"host {holder.get('host', '?')}, pid {holder.get('pid', '?')}"
