"""CPU cores for a CPU trial: claimed with file locks, so slots never share a core.

A CPU trial process claims `n` free cores of this node (one lock file per core under
`lock_dir`, held until the process exits: the kernel releases flock on exit, even on SIGKILL)
and pins itself to them. This works the same under both executors and across concurrent
regbench runs on one node. Pinning also caps XLA's CPU thread pool, which JAX sizes from the
cores a process may run on.
"""
from __future__ import annotations

import fcntl
import os
import tempfile

_held: list[int] = []  # lock fds, kept open for the life of the process


def default_lock_dir() -> str:
    return os.path.join(tempfile.gettempdir(), f"regbench-cores-{os.getuid()}")


def claim(n: int, lock_dir: str | None = None) -> list[int] | None:
    """Claim and pin to `n` free cores; returns them, or None when fewer than n are free
    (the process then runs unpinned)."""
    lock_dir = lock_dir or default_lock_dir()
    os.makedirs(lock_dir, exist_ok=True)
    mine: list[tuple[int, int]] = []
    for core in sorted(os.sched_getaffinity(0)):
        fd = os.open(os.path.join(lock_dir, f"core-{core}.lock"), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            continue
        mine.append((core, fd))
        if len(mine) == n:
            break
    if len(mine) < n:
        for _, fd in mine:
            os.close(fd)
        return None
    cores = [c for c, _ in mine]
    os.sched_setaffinity(0, cores)
    _held.extend(fd for _, fd in mine)
    return cores
