"""Read run directories into tidy DataFrames: one row per trial, one row per epoch.

A run directory holds manifest.json and trials/<trial_id>.json (bench/layout.py; see the trial-file contract).
trials/*.json are the source of truth (the Parquet files next to them are derived), so they are
what is read here. A corrupt, partial or newer-schema trial file inside a good run is not fatal:
it becomes a row of `problems` (and a warning on stderr). A path that is not a run is fatal.
"""
from __future__ import annotations

import dataclasses
import json
import os
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Iterable

import pandas as pd

from analysis.errors import AnalysisInputError
from bench import layout, records
from bench.schema.reading import NestedTooDeep, parse_json, read_type_problems

SCHEMA_VERSION_READ = 1
"""Newest trial-file / manifest schema_version this package understands."""

TRIAL_COLUMNS = ("run", "run_dir", "file") + records.COLUMNS  # the flattener trials.parquet uses too
CURVE_COLUMNS = ("run", "trial_id", "setting", "workload", "precision", "batch_size", "backend", "device_name",
                 "repeat") + records.CURVE_FIELDS
PROBLEM_COLUMNS = ("run", "file", "reason")
SESSION_COLUMNS = ("run", "session_id", "status", "reason", "group_id", "workload", "precision", "batch_size",
                   "backend", "device_name", "repeat", "rounds", "baseline_step_time_s", "wall_s", "record")
STATUSES = records.STATUSES


@dataclasses.dataclass
class RunData:
    """What `load` returns.

    trials:    one row per readable trial file; nested sections flattened (timing.step_time_p50_s ->
               step_time_p50_s); `run` names the run directory, `file` the trial file.
    curves:    one row per trial and epoch (wall_s is seconds since training start).
    problems:  files that could not be used (unreadable, partial, newer schema, planned but missing),
               with a one-line reason each.
    manifests: run name -> parsed manifest.json ({} when absent or unreadable).
    run_dirs:  the run directories read, in the order given.
    sessions:  one row per paired-session record (sessions/*.json; bench/units/session_run.py): its
               keys (SESSION_COLUMNS) and, in `record`, the record as read with "_run" added (what
               analysis.overhead, compare and paired.estimates read; a list of records works too).
    """

    trials: pd.DataFrame
    curves: pd.DataFrame
    problems: pd.DataFrame
    manifests: dict
    run_dirs: list
    sessions: pd.DataFrame = dataclasses.field(default_factory=lambda: session_frame([]))


def session_frame(records: list[dict]) -> pd.DataFrame:
    """RunData.sessions: one row per paired-session record, the record itself in `record`."""
    rows = [(r.get("_run"), r.get("session_id"), r.get("status"), r.get("reason"), s.get("group_id"),
             s.get("workload"), s.get("precision"), s.get("batch_size"), s.get("backend"),
             (r.get("node") or {}).get("device_name"), s.get("repeat"), s.get("rounds"),
             (r.get("timing") or {}).get("baseline_step_time_s"), r.get("wall_s"), r)
            for r in records for s in [r.get("session") or {}]]
    return pd.DataFrame(rows, columns=list(SESSION_COLUMNS))


class _Unusable(Exception):
    """A trial file that cannot be used; the message is the reason."""


def _read_manifest(run_dir: layout.RunLayout, run: str, problems: list) -> dict:
    path = run_dir.manifest
    if not path.exists():
        problems.append((run, str(path), f"{path.name} missing: run metadata unknown"))
        return {}
    try:
        manifest = parse_json(path.read_bytes())
        if not isinstance(manifest, dict):
            raise ValueError("top level is not an object")
    except (ValueError, OSError) as e:
        problems.append((run, str(path), f"unreadable manifest: {_one_line(e)}"))
        return {}
    version = manifest.get("schema_version")
    if isinstance(version, int) and version > SCHEMA_VERSION_READ:
        raise AnalysisInputError(f"{path}: schema_version {version} is newer than this regbench reads "
                                 f"({SCHEMA_VERSION_READ})")
    return manifest


def _one_line(err: Exception) -> str:
    return " ".join(str(err).split()) or type(err).__name__


def _parse(raw: bytes, path: str) -> dict:
    """Parse and validate one trial file; raise _Unusable with the reason."""
    try:
        doc = parse_json(raw)
    except NestedTooDeep as e:
        raise _Unusable(str(e)) from None
    except ValueError as e:  # JSONDecodeError and UnicodeDecodeError
        raise _Unusable(f"not valid JSON (partial or corrupt file?): {_one_line(e)}") from None
    if not isinstance(doc, dict):
        raise _Unusable("top level is not a JSON object")
    version = doc.get("schema_version")
    if not isinstance(version, int):
        raise _Unusable(f"schema_version missing or not an integer ({version!r})")
    if version > SCHEMA_VERSION_READ:
        raise _Unusable(f"schema_version {version} is newer than this regbench reads ({SCHEMA_VERSION_READ})")
    if doc.get("status") not in STATUSES:
        raise _Unusable(f"status {doc.get('status')!r} is not one of {', '.join(STATUSES)}")
    trial = doc.get("trial")
    if not isinstance(trial, dict) or not trial.get("workload"):
        raise _Unusable("trial section missing or has no workload")
    if not isinstance(doc.get("trial_id"), str):
        raise _Unusable("trial_id missing")
    wrong = read_type_problems(doc, version)
    if wrong:
        more = f" (and {len(wrong) - 1} more)" if len(wrong) > 1 else ""
        raise _Unusable(f"wrong type: {wrong[0][0]}: {wrong[0][1]}{more}")
    return doc


def _read_one(path: str) -> tuple[str, bytes | None, str | None]:
    try:
        with open(path, "rb") as f:
            return path, f.read(), None
    except OSError as e:
        return path, None, f"cannot read: {_one_line(e)}"


def _read_sessions(run_dir: layout.RunLayout, run: str, problems: list) -> list[dict]:
    out = []
    for path in sorted(run_dir.sessions.glob("*.json")):
        try:
            doc = parse_json(path.read_bytes())
            if not isinstance(doc, dict) or doc.get("kind") != "paired_session":
                raise ValueError("not a paired-session record")
            version = doc.get("schema_version")
            if not isinstance(version, int) or version > SCHEMA_VERSION_READ:
                raise ValueError(f"schema_version {version!r} is not one this regbench reads")
        except (ValueError, OSError) as e:
            problems.append((run, str(path), f"unusable session file: {_one_line(e)}"))
            continue
        out.append({**doc, "_run": run})
    return out


def _read_run(run_dir: layout.RunLayout, run: str, trial_cols: dict, curve_cols: dict, problems: list,
              pool: ThreadPoolExecutor) -> dict:
    manifest = _read_manifest(run_dir, run, problems)
    trials_dir = run_dir.trials
    try:
        names = sorted(e.name for e in os.scandir(trials_dir) if e.name.endswith(".json"))
    except OSError:
        names = []
    paths = [str(trials_dir / n) for n in names]
    seen = set()
    bad = set()
    tc, cc = trial_cols, curve_cols
    for path, raw, err in pool.map(_read_one, paths, chunksize=64):
        try:
            if err:
                raise _Unusable(err)
            doc = _parse(raw, path)
        except _Unusable as e:
            problems.append((run, path, str(e)))
            bad.add(os.path.basename(path)[:-5])
            continue
        seen.add(doc["trial_id"])
        row = records.flatten_trial(doc)
        row.update(run=run, run_dir=str(run_dir.path), file=path)
        for col in TRIAL_COLUMNS:
            tc[col].append(row[col])
        trial, node = doc["trial"], doc.get("node") or {}
        keys = (run, doc["trial_id"], row["setting"], trial.get("workload"), trial.get("precision"),
                trial.get("batch_size"), trial.get("backend"), node.get("device_name"), trial.get("repeat"))
        for point in records.curve_rows(doc):
            for col, value in zip(CURVE_COLUMNS[:9], keys):
                cc[col].append(value)
            for f in records.CURVE_FIELDS:
                cc[f].append(point[f])
    for trial_id in manifest.get("trial_ids") or []:
        if trial_id not in seen and trial_id not in bad:
            problems.append((run, str(run_dir.record("trial", trial_id)), "planned but no result (run interrupted?)"))
    return manifest


_TEXT_COLUMNS = ("run", "run_dir", "file", "trial_id", "status", "reason", "started_at", "finished_at",
                 "regularizers", "null_reasons", "regularizer_placements", "workload", "setting", "precision",
                 "backend", "cell_id",
                 "hostname", "device_kind", "device_name", "executor", "fingerprint_id", "accelerator_type",
                 "gpu_uuid", "start_method", "attention_path", "attention_kernel", "input_feed")
_FLAG_COLUMNS = ("jit_compile", "input_bound", "applicable", "target_reached", "host_sync_per_step",
                 "input_overlaps_step", "input_side_bound")


def _frame(columns: dict, names: Iterable[str]) -> pd.DataFrame:
    data = {}
    for name in names:
        values = columns[name]
        if name in _TEXT_COLUMNS:
            data[name] = pd.Series(values, dtype="object")
        else:
            s = pd.Series(values)
            if s.dtype == object:  # mixed None/number or bool
                s = pd.to_numeric(s, errors="coerce") if name not in _FLAG_COLUMNS else s.astype("object")
            data[name] = s
    return pd.DataFrame(data)


def load(paths, *, warn: bool = True) -> RunData:
    """Read one run directory or several (a path or a list of paths) into a RunData.

    Raises AnalysisInputError for a path that is not a run, or a manifest of a newer schema.
    Unreadable trial files are listed in `problems` and, when `warn`, reported on stderr.
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    runs = [layout.require_run(Path(p), manifest=False, error=AnalysisInputError) for p in paths]
    if not runs:
        raise AnalysisInputError("no run directory given")
    tc = {c: [] for c in TRIAL_COLUMNS}
    cc = {c: [] for c in CURVE_COLUMNS}
    problems: list = []
    manifests = {}
    sessions: list = []
    with ThreadPoolExecutor(max_workers=4) as pool:
        for run_dir in runs:
            name = run_dir.path.name
            if name in manifests:  # two runs with the same directory name: keep them apart
                name = str(run_dir.path)
            manifests[name] = _read_run(run_dir, name, tc, cc, problems, pool)
            sessions += _read_sessions(run_dir, name, problems)
    trials = _frame(tc, TRIAL_COLUMNS)
    curves = _frame(cc, CURVE_COLUMNS)
    problem_frame = pd.DataFrame(problems, columns=list(PROBLEM_COLUMNS))
    if warn and problems:
        for run, path, reason in problems[:20]:
            print(f"warning: {path}: {reason}", file=sys.stderr)
        if len(problems) > 20:
            print(f"warning: {len(problems) - 20} more unusable trial files (listed in the report)", file=sys.stderr)
    return RunData(trials=trials, curves=curves, problems=problem_frame, manifests=manifests,
                   run_dirs=[r.path for r in runs], sessions=session_frame(sessions))


