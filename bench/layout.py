"""The run directory's layout, owned by the store: every name inside results/<run-id>/, once.

    manifest.json                      the plan and the run's status (RunStore.manifest)
    trials/<trial_id>.json             one record per finished trial (the source of truth)
    sessions/<session_id>.json         one record per paired session
    logs/<trial_id>.log                the end of each unit's process output
    history/trials/<id>.<round>.json   records a retry round replaced (bench/retry.py)
    trials.parquet, curves.parquet     tables derived from trials/ (RunStore.export_parquet)
    report/                            the report (analysis)
    .lock                              the driver's lock while one works on the run (bench/runlock.py)

RunStore writes it; the schema check, the retry rounds, analysis and the MLflow export read paths
through `RunLayout`, and `require_run` is the one place that says what is not a run.
"""
from __future__ import annotations

import dataclasses
import pathlib

from bench.errors import UserError

MANIFEST = "manifest.json"
UNIT_DIRS = {"trial": "trials", "session": "sessions"}  # unit kind -> folder of its records
LOGS = "logs"
HISTORY = "history"
REPORT = "report"
LOCK = ".lock"
TABLES = ("trials.parquet", "curves.parquet")


@dataclasses.dataclass(frozen=True)
class RunLayout:
    """The paths of one run directory (nothing is read or made here)."""

    path: pathlib.Path

    def __post_init__(self):
        object.__setattr__(self, "path", pathlib.Path(self.path))

    @property
    def manifest(self) -> pathlib.Path:
        return self.path / MANIFEST

    @property
    def trials(self) -> pathlib.Path:
        return self.unit_dir("trial")

    @property
    def sessions(self) -> pathlib.Path:
        return self.unit_dir("session")

    @property
    def report(self) -> pathlib.Path:
        return self.path / REPORT

    @property
    def lock(self) -> pathlib.Path:
        return self.path / LOCK

    def unit_dir(self, kind: str) -> pathlib.Path:
        return self.path / UNIT_DIRS[kind]

    def record(self, kind: str, unit_id: str) -> pathlib.Path:
        return self.unit_dir(kind) / f"{unit_id}.json"

    def log(self, unit_id: str) -> pathlib.Path:
        return self.path / LOGS / f"{unit_id}.log"

    @property
    def history_dir(self) -> pathlib.Path:
        return self.path / HISTORY

    def history(self, kind: str, unit_id: str, round_no: int) -> pathlib.Path:
        return self.history_dir / UNIT_DIRS[kind] / f"{unit_id}.{round_no}.json"

    def history_dirs(self) -> list[pathlib.Path]:
        return [self.history_dir / folder for folder in UNIT_DIRS.values()]

    def table(self, name: str) -> pathlib.Path:
        return self.path / name


def require_run(path, manifest: bool = True, error: type[Exception] = UserError) -> RunLayout:
    """The layout of `path`, or `error` with one line when it is not a run directory: missing, not a
    directory, or no manifest.json (with manifest=False a folder with trials/ alone is a run too:
    validate and analysis read what is there)."""
    run = RunLayout(path)
    if not run.path.is_dir():
        raise error(f"{path}: {'not a directory' if run.path.exists() else 'no such file or directory'}")
    if run.manifest.is_file() or (not manifest and run.trials.is_dir()):
        return run
    why = MANIFEST if manifest else f"{MANIFEST} and no {UNIT_DIRS['trial']}/"
    raise error(f"{path}: not a regbench run (no {why})")
