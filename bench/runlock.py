"""One driver per run directory: RUN_DIR/.lock, held while a driver works on the run.

The lock is an flock(2) on RUN_DIR/.lock, whose text names the holder (bench/holder.py). The
kernel drops an flock when its process dies, even by SIGKILL, so a lock left by a killed driver
is taken over at once, with one line naming the driver that left it. While a driver holds it, a
second driver (`regbench run --resume` of the same run) is refused with one line naming the
holder's host and pid. Released cleanly, the file is removed. On a file system without flock the
holder's text decides alone: a live holder refuses, a gone one is taken over.
"""
from __future__ import annotations

import errno
import fcntl
import json
import os
import pathlib

from bench import holder, layout
from bench.errors import STORAGE_ERRNOS, StorageError, UserError

_NO_FLOCK = (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS)


class RunLock:
    """A held lock; `release()` (or leaving `with`) gives it up and removes the file."""

    def __init__(self, path: pathlib.Path, fd: int):
        self.path, self._fd = path, fd

    def release(self) -> None:
        if self._fd is None:
            return
        try:
            self.path.unlink(missing_ok=True)  # while still held: the next driver opens a new file
        finally:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> "RunLock":
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def _read(fd: int) -> dict:
    try:
        text = os.pread(fd, 4096, 0).decode(errors="replace")
        data = json.loads(text) if text.strip() else {}
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _refuse(run_dir: pathlib.Path, by: dict) -> UserError:
    return UserError(f"{run_dir}: another regbench driver is working on this run ({holder.describe(by)}); "
                     "wait for it to end, or stop it and resume")


def acquire(run_dir, note) -> RunLock:
    """Take RUN_DIR's lock or raise UserError naming its holder. `note(line)` tells of a takeover."""
    run_dir = pathlib.Path(run_dir)
    path = layout.RunLayout(run_dir).lock
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as e:
            if e.errno in STORAGE_ERRNOS:
                raise StorageError(f"{path}: cannot lock the run ({STORAGE_ERRNOS[e.errno]})") from None
            raise
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            by = _read(fd)
            os.close(fd)
            raise _refuse(run_dir, by) from None
        except OSError as e:
            if e.errno not in _NO_FLOCK:
                os.close(fd)
                raise
            by = _read(fd)
            if by and not holder.is_gone(by):
                os.close(fd)
                raise _refuse(run_dir, by) from None
        try:  # a holder releasing at this moment removed the file we opened: open the new one
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if not same:
            os.close(fd)
            continue
        before = _read(fd)
        if before:
            note(f"{run_dir}: taking over the lock of a driver that is gone ({holder.describe(before)})")
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(holder.me()).encode(), 0)
        os.fsync(fd)
        return RunLock(path, fd)
