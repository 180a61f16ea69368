"""A run's scratch directory on a node: <temp dir>/regbench-<run id>/.

It holds everything a run writes outside its run directory on that node: the trial processes'
work dirs (requests, records before they are collected, logs), the calibration cache, and tmp/,
the TMPDIR of every trial process (so TensorFlow's __autograph_generated_file*.py land there
instead of piling up in /tmp). Each process that uses it records itself as a holder
(.holder-<host>-<pid>.json, bench/holder.py). The driver removes it when the run ends, whatever
the exit (done, error, Ctrl-C, SIGTERM); on a joined Ray cluster it asks every node to remove its
own. A scratch whose holders are all gone (a driver killed with SIGKILL) is removed by the next
`claim` on that node. A folder without a holder file is never touched.
"""
from __future__ import annotations

import contextlib
import json
import os
import pathlib
import shutil
import tempfile

from bench import holder

PREFIX = "regbench-"
HOLDER_GLOB = ".holder-*.json"


def path_for(run_id: str) -> pathlib.Path:
    """This node's scratch of run `run_id` (in the temp dir this process sees)."""
    return pathlib.Path(tempfile.gettempdir()) / f"{PREFIX}{run_id}"


def tmp_dir(scratch: pathlib.Path) -> pathlib.Path:
    """The TMPDIR of the run's trial processes."""
    return scratch / "tmp"


def _holders(scratch: pathlib.Path) -> list[dict]:
    found = []
    for mark in scratch.glob(HOLDER_GLOB):
        try:
            found.append(json.loads(mark.read_text()))
        except (OSError, ValueError):
            found.append({})  # unreadable: not known to be gone
    return found


def sweep(root: pathlib.Path | None = None, keep: pathlib.Path | None = None) -> list[pathlib.Path]:
    """Remove the scratch folders under `root` (the temp dir) whose holders are all gone, but not
    `keep` (the run being claimed: its workers come and go, and one that starts while another
    claims must not lose the folder it has just made)."""
    root = pathlib.Path(root or tempfile.gettempdir())
    removed = []
    for scratch in root.glob(f"{PREFIX}*"):
        if keep is not None and scratch == keep:
            continue
        try:
            holders = _holders(scratch) if scratch.is_dir() and not scratch.is_symlink() else []
        except OSError:
            continue
        if holders and all(holder.is_gone(h) for h in holders):
            shutil.rmtree(scratch, ignore_errors=True)
            removed.append(scratch)
    return removed


def claim(run_id: str) -> pathlib.Path:
    """Remove stale scratch folders, then make this run's (with tmp/) and record this process
    as one of its holders. Returns the folder."""
    scratch = path_for(run_id)
    sweep(keep=scratch)
    tmp_dir(scratch).mkdir(parents=True, exist_ok=True)
    me = holder.me()
    mark = scratch / f".holder-{me['host']}-{me['pid']}.json"
    if not mark.exists():
        fd, part = tempfile.mkstemp(dir=scratch, prefix=".part-")
        with os.fdopen(fd, "w") as f:
            json.dump(me, f)
        os.replace(part, mark)
    return scratch


def remove(run_id: str) -> None:
    shutil.rmtree(path_for(run_id), ignore_errors=True)


@contextlib.contextmanager
def held(run_id: str):
    """The run's scratch on this node for the duration of the block, removed on every way out."""
    scratch = claim(run_id)
    try:
        yield scratch
    finally:
        remove(run_id)
