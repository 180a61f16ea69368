"""`regbench run --resume RUN --retry-failed`: run again the units recorded as `failed`.

Only `failed` (an exception, an OOM, a timeout, a process that died on every attempt) is retried:
`diverged` is a result of the training itself and `skipped` a decision about the device, and
running them again would give the same answer.

Each `--retry-failed` opens a retry round `k`, recorded in the manifest (`retries`: round, the
unit ids, started_at, finished_at) BEFORE anything moves. Then each failed record is moved, by an
atomic rename, from trials/<id>.json (sessions/<id>.json) to history/trials/<id>.<k>.json, which
makes the unit unfinished, so the run's plan runs it again and the new record lands once
(RunStore.write_record). The old record stays in history/, once per round.

Interrupted anywhere, the round stays open: the next `--resume` (with or without
`--retry-failed`) finishes it, moving what is left to move and running what has no record, and
never retries a unit twice in one round; the round is closed when the run completes.
"""
from __future__ import annotations

import os

from bench.store import RunStore, read_json
from bench.trial import now_iso

RETRIED = "failed"


def _failed(store: RunStore) -> list[tuple[str, str]]:
    out = []
    for kind in store.UNIT_DIRS:
        for path in sorted(store.unit_dir(kind).glob("*.json")):
            try:
                if read_json(path).get("status") == RETRIED:
                    out.append((kind, path.stem))
            except Exception:  # noqa: BLE001 - an unreadable record is not a failed one; resume rewrites it
                continue
    return out


def is_open(manifest: dict) -> bool:
    """Is a retry round open (begun, the run not completed since)?"""
    retries = manifest.get("retries") or []
    return bool(retries) and retries[-1].get("finished_at") is None


def begin(store: RunStore) -> tuple[int, list[str]]:
    """Open a retry round (or continue the open one) and move its failed records to history/.
    Returns (round number, unit ids of the round); (last round, []) when nothing failed."""
    manifest = store.manifest()
    retries = list(manifest.get("retries") or [])
    if is_open(manifest):
        current = retries[-1]  # an interrupted round: finish it, retry nothing twice
    else:
        failed = _failed(store)
        if not failed:
            return len(retries), []
        current = {"round": len(retries) + 1, "units": [{"kind": k, "id": i} for k, i in failed],
                   "started_at": now_iso(), "finished_at": None}
        store.update_manifest(retries=retries + [current])
    for unit in current["units"]:
        src = store.layout.record(unit["kind"], unit["id"])
        dst = store.layout.history(unit["kind"], unit["id"], current["round"])
        if dst.exists() or not src.exists():
            continue  # moved already (and maybe run again since)
        dst.parent.mkdir(parents=True, exist_ok=True)
        os.replace(src, dst)
    _fsync_dirs(store)
    return current["round"], [u["id"] for u in current["units"]]


def finish(store: RunStore) -> None:
    """Close the open retry round (the run completed: every unit of it has its new record)."""
    retries = list(store.manifest().get("retries") or [])
    if retries and retries[-1].get("finished_at") is None:
        retries[-1] = {**retries[-1], "finished_at": now_iso()}
        store.update_manifest(retries=retries)


def _fsync_dirs(store: RunStore) -> None:
    for d in [store.unit_dir(k) for k in store.UNIT_DIRS] + store.layout.history_dirs():
        if d.is_dir():
            fd = os.open(d, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
