"""results/<run-id>/: manifest, one atomic JSON file per trial, derived Parquet tables.

The names inside the run directory are bench/layout.py's (`RunStore.layout`); the store writes them.

A finished trial file is never rewritten. Every write goes to a temporary file in the same
folder, is fsynced, then renamed, so a run killed at any moment leaves only whole files; resume
skips every trial that has a file.
"""
from __future__ import annotations

import datetime as dt
import errno
import json
import os
import pathlib
import subprocess
import tempfile

from bench import SCHEMA_VERSION
from bench import layout as run_layout
from bench.errors import STORAGE_ERRNOS, StorageError, UserError
from bench.schema import NestedTooDeep, parse_json, version_problem
from bench.trial import now_iso

LOG_MAX_BYTES = 256 * 1024  # per trial: the end of its processes' output


def write_text_atomic(path: pathlib.Path, text: str, replace: bool = True) -> bool:
    """Write to a temporary file in the same folder, fsync, rename, fsync the folder: a reader
    (or a run killed at any moment) sees the old file or the whole new one, never a part.
    replace=False creates `path` only if it does not exist, atomically against a concurrent
    writer (see _publish_new); returns False when it existed. A full disk, a read-only file
    system or a missing permission is a StorageError naming the path, with no temporary file
    left behind."""
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        if replace:
            os.replace(tmp, path)
            tmp = None
        elif not _publish_new(tmp, path):
            return False
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
        return True
    except OSError as e:
        if e.errno in STORAGE_ERRNOS:
            raise StorageError(f"{path}: cannot write ({STORAGE_ERRNOS[e.errno]})") from None
        raise
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)


_RENAME_NOREPLACE = 1


def _publish_new(tmp: str, path: pathlib.Path) -> bool:
    """Give the whole file `tmp` the name `path` unless that name exists: one call that fails if
    it does (a hard link, or renameat2(RENAME_NOREPLACE) where links are not supported), never a
    check then a write. False when `path` exists; `tmp` is left for the caller to remove."""
    try:
        os.link(tmp, path)
        return True
    except FileExistsError:
        return False
    except OSError as e:
        if e.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.EMLINK):
            raise
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    at_fdcwd = -100
    if libc.renameat2(at_fdcwd, os.fsencode(tmp), at_fdcwd, os.fsencode(str(path)), _RENAME_NOREPLACE) == 0:
        return True
    code = ctypes.get_errno()
    if code == errno.EEXIST:
        return False
    raise OSError(code, os.strerror(code), str(path))


def write_json_atomic(path: pathlib.Path, obj, replace: bool = True) -> bool:
    return write_text_atomic(path, json.dumps(obj, indent=1, allow_nan=True, default=str), replace)


def read_json(path: pathlib.Path) -> dict:
    """Read a manifest or trial file; corrupt or too-new files raise UserError naming the file."""
    try:
        obj = parse_json(path.read_text())
    except FileNotFoundError:
        raise UserError(f"{path}: file not found") from None
    except NestedTooDeep as e:
        raise UserError(f"{path}: {e}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(obj, dict):
        raise UserError(f"{path}: expected a JSON object")
    why = version_problem(obj)
    if why:
        raise UserError(f"{path}: {why}")
    return obj


def _mkdir_error(out: pathlib.Path, e: OSError) -> Exception:
    """Why the run directory cannot be made, in one line naming the path: a StorageError (read-only,
    full, no permission: exit 1), or a UserError when something on the way to --out is a file."""
    if e.errno in STORAGE_ERRNOS:
        return StorageError(f"{e.filename or out}: cannot create the run directory ({STORAGE_ERRNOS[e.errno]})")
    blocker = next((p for p in (out, *out.parents) if p.exists() and not p.is_dir()), None)
    if blocker is not None:
        return UserError(f"{out}: cannot create the run directory: {blocker} is a file, not a directory")
    return StorageError(f"{e.filename or out}: cannot create the run directory ({e.strerror or e})")


def git_commit() -> str | None:
    try:
        here = pathlib.Path(__file__).resolve().parent
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5)
        return out.stdout.strip() or None if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


class RunStore:
    """One run directory."""

    def __init__(self, path: pathlib.Path):
        self.layout = run_layout.RunLayout(path)
        self.path = self.layout.path
        self.trials_dir = self.layout.trials
        self.manifest_path = self.layout.manifest

    # -- creation and opening ----------------------------------------------
    @classmethod
    def create(cls, out_dir: pathlib.Path, suite: dict, trial_ids: list[str], run_id: str | None = None) -> "RunStore":
        stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
        run_id = run_id or f"{stamp}-{suite.get('name', 'suite')}"
        out = pathlib.Path(out_dir)
        path = out / run_id
        n = 1
        while path.exists() or path.is_symlink():
            n += 1
            path = out / f"{run_id}-{n}"
        if path.resolve().parent != out.resolve():  # a run writes only inside --out (a symlinked --out: its target)
            raise UserError(f"{out}: the run directory {run_id!r} would lie outside it; a run directory is "
                            "one plain folder inside --out")
        store = cls(path)
        try:
            store.trials_dir.mkdir(parents=True)
        except OSError as e:
            raise _mkdir_error(out, e) from None
        write_json_atomic(store.manifest_path, {
            "schema_version": SCHEMA_VERSION, "run_id": path.name, "suite": suite, "trial_ids": trial_ids,
            "nodes": {}, "placements": {}, "git_commit": git_commit(), "started_at": now_iso(),
            "finished_at": None, "status": "running",
        })
        return store

    @classmethod
    def open(cls, path: pathlib.Path) -> "RunStore":
        store = cls(run_layout.require_run(path).path)
        store.manifest()  # validates
        return store

    def tidy(self) -> None:
        """Remove the temporary files of record writes cut short by a killed driver. Only for the
        driver holding the run's lock (bench/runlock.py): another one may be writing them now."""
        for kind in self.UNIT_DIRS:  # the folders are made by the first write into them
            for stale in self.unit_dir(kind).glob(".*.tmp"):
                stale.unlink(missing_ok=True)

    # -- manifest ------------------------------------------------------------
    def manifest(self) -> dict:
        return read_json(self.manifest_path)

    def update_manifest(self, **changes) -> None:
        m = self.manifest()
        for key, value in changes.items():
            if key in ("nodes", "placements") and isinstance(value, dict):
                m.setdefault(key, {}).update(value)
            else:
                m[key] = value
        write_json_atomic(self.manifest_path, m)

    # -- unit records: trials/<trial_id>.json, sessions/<session_id>.json ------------------
    UNIT_DIRS = run_layout.UNIT_DIRS
    ID_KEYS = {"trial": "trial_id", "session": "session_id"}

    def unit_dir(self, kind: str) -> pathlib.Path:
        return self.layout.unit_dir(kind)

    def trial_path(self, trial_id: str) -> pathlib.Path:
        return self.layout.record("trial", trial_id)

    def finished_ids(self, kind: str = "trial") -> set[str]:
        """Ids with a readable record file (a corrupt file does not count as finished)."""
        done = set()
        for p in self.unit_dir(kind).glob("*.json"):
            try:
                read_json(p)
            except UserError:
                continue
            done.add(p.stem)
        return done

    def write_record(self, kind: str, record: dict) -> bool:
        """Write a finished unit's record once: True when this call wrote it, False when the id
        already had one (the caller's result is dropped; exactly once even against a concurrent
        writer: the file appears whole under its name, or not at all). A corrupt leftover (a file
        torn by hand) is replaced by the real result."""
        path = self.layout.record(kind, record[self.ID_KEYS[kind]])
        if write_json_atomic(path, record, replace=False):
            return True
        try:
            read_json(path)
            return False
        except UserError:
            return write_json_atomic(path, record)

    def write_trial(self, record: dict) -> bool:
        return self.write_record("trial", record)

    def log_path(self, trial_id: str) -> pathlib.Path:
        return self.layout.log(trial_id)

    def write_log(self, trial_id: str, text: str, header: str = "") -> pathlib.Path:
        """Append one attempt's output to logs/<trial_id>.log (atomically; the file keeps its
        last LOG_MAX_BYTES)."""
        path = self.log_path(trial_id)
        old = path.read_text(errors="replace") if path.exists() else ""
        new = (old + (f"--- {header} ---\n" if header else "") + text.rstrip("\n") + "\n")[-LOG_MAX_BYTES:]
        write_text_atomic(path, new)
        return path

    def records(self, kind: str = "trial") -> list[dict]:
        return [read_json(p) for p in sorted(self.unit_dir(kind).glob("*.json"))]

    # -- derived tables ------------------------------------------------------
    def export_parquet(self) -> None:
        """trials.parquet (one row per trial, bench.records.COLUMNS) and curves.parquet (one row per epoch)."""
        import pandas as pd

        from bench.records import COLUMNS, curve_rows, flatten_trial

        records = self.records()
        trials, curves = run_layout.TABLES
        tables = {trials: pd.DataFrame([flatten_trial(r) for r in records], columns=list(COLUMNS)),
                  curves: pd.DataFrame([row for r in records for row in curve_rows(r)])}
        for name, df in tables.items():
            path = self.layout.table(name)
            tmp = path.with_name(f".{name}.tmp")
            try:
                df.to_parquet(tmp, index=False)
                os.replace(tmp, path)
            except OSError as e:
                tmp.unlink(missing_ok=True)
                raise StorageError(f"{path}: cannot write ({e.strerror or e})") from None
