"""The trial-file and manifest contract, owned by the project.

trial.schema.json and manifest.schema.json (JSON Schema, draft 2020-12) say what a file must hold;
this module adds what JSON Schema cannot say cleanly: in a trial with status ok a measured field is
null only with a reason in its section's `null_reasons` (fields whose schema carries `x-null-means`
have a documented null), p95 >= p50, and every measured number is finite. It also checks a whole
run: the manifest, and exactly one `<trial_id>.json` per planned trial, nothing else.

Every problem is one `Problem`: the file, the field (dotted path) and what is wrong.

    check_trial(record)      -> [Problem]   a trial record in memory
    check_manifest(manifest) -> [Problem]   a manifest in memory
    check_trial_file(path)   -> [Problem]   a file on disk (unreadable, corrupt, truncated, foreign, newer: one)
    check_run(run_dir)       -> RunCheck    the manifest, every trial file, the counts

A schema describes one schema_version (its `schema_version` const). When the format changes, bump
bench.SCHEMA_VERSION, keep the old schema as <kind>.v<N>.schema.json and list it in SCHEMAS.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import math
import pathlib
import re
from typing import Any

from bench import SCHEMA_VERSION, layout
from bench.schema.reading import NestedTooDeep, json_type as _json_type, parse_json

HERE = pathlib.Path(__file__).parent
#: kind -> {schema_version: schema file}; the versions this regbench reads.
SCHEMAS = {"trial": {1: "trial.schema.json"}, "manifest": {1: "manifest.schema.json"},
           "session": {1: "session.schema.json"}}
MEASURED = ("timing", "memory", "energy", "compute", "convergence")


@dataclasses.dataclass(frozen=True)
class Problem:
    """One thing wrong: `file: field: message` (file or field empty when not applicable)."""

    file: str
    field: str
    message: str

    def __str__(self) -> str:
        return ": ".join(part for part in (self.file, self.field, self.message) if part)


@functools.cache
def schema(kind: str, version: int = SCHEMA_VERSION) -> dict:
    """The JSON Schema of `kind` ("trial" or "manifest") at `version`."""
    return json.loads((HERE / SCHEMAS[kind][version]).read_text())


@functools.cache
def _validator(kind: str, version: int):
    import jsonschema

    return jsonschema.Draft202012Validator(schema(kind, version))


def version_problem(doc: dict, kind: str = "trial") -> str | None:
    """Why this regbench cannot read `doc`'s schema_version, or None when it can."""
    version = doc.get("schema_version")
    if not isinstance(version, int) or isinstance(version, bool):
        return f"schema_version missing or not an integer ({version!r})"
    known = SCHEMAS[kind]
    if version > max(known):
        return f"schema_version {version} is newer than this regbench reads ({max(known)}): upgrade regbench to read it"
    if version not in known:
        return f"schema_version {version} is not one this regbench reads ({', '.join(map(str, sorted(known)))})"
    return None


# ---- records in memory ------------------------------------------------------

def check_trial(record: Any, file: str = "") -> list[Problem]:
    """Problems of one trial record; [] when it meets the contract."""
    if not isinstance(record, dict):
        return [Problem(file, "", f"not a trial file: the top level is a JSON {_json_type(record)}, not an object")]
    if not {"trial_id", "trial"} & record.keys():
        what = "a run manifest" if {"run_id", "trial_ids"} <= record.keys() else "a JSON object"
        return [Problem(file, "", f"not a trial file: {what} without trial_id or trial")]
    why = version_problem(record, "trial")
    if why:
        return [Problem(file, "", why)]
    problems = _schema_problems("trial", record, file)
    if record.get("status") == "ok":
        fields = {p.field for p in problems}
        problems += [p for p in _null_reason_problems(record, file) + _nonfinite_problems(record, file)
                     if p.field not in fields]
    timing = record.get("timing")
    if isinstance(timing, dict):
        p50, p95 = timing.get("step_time_p50_s"), timing.get("step_time_p95_s")
        if _is_number(p50) and _is_number(p95) and p95 < p50:
            problems.append(Problem(file, "timing.step_time_p95_s", f"{p95} is less than step_time_p50_s {p50}"))
    return problems


def check_session(record: Any, file: str = "") -> list[Problem]:
    """Problems of one paired-session record (bench/units/session_run.py); [] when it meets the contract."""
    if not isinstance(record, dict) or record.get("kind") != "paired_session":
        return [Problem(file, "", "not a paired-session record (kind is not paired_session)")]
    why = version_problem(record, "session")
    if why:
        return [Problem(file, "", why)]
    return _schema_problems("session", record, file)


def check_manifest(manifest: Any, file: str = "") -> list[Problem]:
    """Problems of a run manifest; [] when it meets the contract."""
    if not isinstance(manifest, dict):
        return [Problem(file, "", f"not a manifest: the top level is a JSON {_json_type(manifest)}, not an object")]
    why = version_problem(manifest, "manifest")
    if why:
        return [Problem(file, "", why)]
    return _schema_problems("manifest", manifest, file)


def _schema_problems(kind: str, doc: dict, file: str) -> list[Problem]:
    return validator_problems(_validator(kind, doc["schema_version"]), doc, file)


def validator_problems(validator, doc: Any, file: str = "") -> list[Problem]:
    """Every problem a jsonschema validator finds in `doc`, one Problem each (duplicates dropped)."""
    out: list[Problem] = []
    for error in validator.iter_errors(doc):
        out += [p for p in error_problems(error, file) if p not in out]
    return out


def error_problems(error, file: str = "") -> list[Problem]:
    """One-line Problems from one jsonschema ValidationError: the most specific cause of an anyOf,
    one per missing field of a `required`, and the schema's own `x-error` text where it has one
    (`x-when` says when a required field is required)."""
    import jsonschema.exceptions

    sub = error.schema if isinstance(error.schema, dict) else {}
    if error.validator in ("anyOf", "oneOf") and error.context and "x-error" not in sub:
        error = jsonschema.exceptions.best_match(error.context) or error
        sub = error.schema if isinstance(error.schema, dict) else {}
    path = list(error.absolute_path)
    if error.validator == "required" and isinstance(error.instance, dict):
        when = f" (required when {sub['x-when']})" if "x-when" in sub else ""
        missing = [Problem(file, field_path(path + [name]), f"missing{when}")
                   for name in error.validator_value if name not in error.instance]
        if missing:
            return missing
    message = sub.get("x-error") or " ".join(error.message.split())
    if len(message) > 200:
        message = message[:197] + "..."
    return [Problem(file, field_path(path), message)]


def _resolve(sub: dict, root: dict) -> dict:
    while "$ref" in sub and sub["$ref"].startswith("#/$defs/"):
        sub = {**root["$defs"][sub["$ref"].split("/")[-1]], **{k: v for k, v in sub.items() if k != "$ref"}}
    return sub


def _null_reason_problems(record: dict, file: str) -> list[Problem]:
    root = schema("trial", record["schema_version"])
    out = []
    for section in MEASURED:
        data = record.get(section)
        if not isinstance(data, dict):
            continue
        reasons = data.get("null_reasons") if isinstance(data.get("null_reasons"), dict) else {}
        for key, sub in root["$defs"][section]["properties"].items():
            if key == "null_reasons" or key not in data or data[key] is not None:
                continue
            if "x-null-means" in _resolve(sub, root):
                continue
            reason = reasons.get(key)
            if not (isinstance(reason, str) and reason.strip()):
                out.append(Problem(file, f"{section}.{key}", f"null without a reason in {section}.null_reasons"))
    return out


def _nonfinite_problems(record: dict, file: str) -> list[Problem]:
    out = []

    def walk(value, path):
        if isinstance(value, float) and not math.isfinite(value):
            out.append(Problem(file, field_path(path), f"{value} is not a finite number"))
        elif isinstance(value, dict):
            for k, v in value.items():
                walk(v, path + [k])
        elif isinstance(value, list):
            for i, v in enumerate(value):
                walk(v, path + [i])

    for section in MEASURED:
        walk(record.get(section), [section])
    return out


# ---- files on disk ------------------------------------------------------------

def read_json_file(path: pathlib.Path, file: str | None = None) -> tuple[Any, Problem | None]:
    """(parsed JSON, None), or (None, the one Problem: unreadable, empty, corrupt, truncated)."""
    file = str(path) if file is None else file
    try:
        raw = pathlib.Path(path).read_bytes()
    except FileNotFoundError:
        return None, Problem(file, "", "file not found")
    except OSError as e:
        return None, Problem(file, "", f"cannot read ({e.strerror or e})")
    if not raw.strip():
        return None, Problem(file, "", "empty file (a write cut short?)")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        return None, Problem(file, "", f"not valid JSON: not UTF-8 text at byte {e.start} (corrupted file?)")
    try:
        return parse_json(text), None
    except NestedTooDeep as e:
        return None, Problem(file, "", str(e))
    except json.JSONDecodeError as e:
        end = text.rstrip()
        if e.pos >= len(end) or e.msg.startswith("Unterminated string") or _cut_short(end[e.pos:]):
            line, col = end.count("\n") + 1, len(end) - (end.rfind("\n") + 1) + 1
            return None, Problem(file, "", f"not valid JSON: truncated (the text ends at line {line}, "
                                           f"column {col} inside a value)")
        return None, Problem(file, "", f"not valid JSON: {e.msg} at line {e.lineno}, column {e.colno} "
                                       "(corrupted file?)")


def _cut_short(rest: str) -> bool:
    """`rest`, from where json stopped to the end of the text, is the start of a number or literal:
    the file was cut inside a value (1.5e, tr, -), not corrupted in the middle."""
    return bool(re.fullmatch(r"[-+.eE0-9]+", rest)) or any(
        w.startswith(rest) for w in ("true", "false", "null", "NaN", "Infinity", "-Infinity"))


def check_trial_file(path: pathlib.Path, file: str | None = None) -> list[Problem]:
    """Problems of one trial file on disk; [] when it meets the contract."""
    doc, problem = read_json_file(path, file)
    return [problem] if problem else check_trial(doc, str(path) if file is None else file)


def check_manifest_file(path: pathlib.Path) -> list[Problem]:
    doc, problem = read_json_file(path)
    return [problem] if problem else check_manifest(doc, str(path))


@dataclasses.dataclass
class RunCheck:
    """The result of check_run: problems (empty when valid) and what was counted."""

    run_dir: pathlib.Path
    problems: list[Problem]
    statuses: dict  # status -> number of trial files
    planned: int | None  # trial ids in the manifest; None when the manifest is unusable
    run_id: str | None
    manifest_status: str | None

    @property
    def ok(self) -> bool:
        return not self.problems

    def summary(self) -> str:
        files = sum(self.statuses.values())
        counts = ", ".join(f"{n} {s}" for s, n in sorted(self.statuses.items())) or "none"
        if self.ok:
            return (f"{self.run_dir}: valid run {self.run_id}: {files} trial files for {self.planned} planned "
                    f"trials ({counts}); manifest status {self.manifest_status}")
        n = len(self.problems)
        return f"{self.run_dir}: {n} problem{'s' if n != 1 else ''} (trial files: {counts})"


def check_run(run_dir: pathlib.Path) -> RunCheck:
    """Check a run directory: manifest.json, every file in trials/, one file per planned trial.

    Raises UserError (one line) when `run_dir` is not a run directory at all."""
    run = layout.require_run(run_dir, manifest=False)
    run_dir, manifest_path, trials_dir = run.path, run.manifest, run.trials
    problems: list[Problem] = []
    planned = run_id = manifest_status = None
    manifest, problem = read_json_file(manifest_path)
    if problem:
        problems.append(Problem(problem.file, "", problem.message if manifest_path.exists()
                                else "missing: the run's plan is unknown, trial counts are not checked"))
    else:
        found = check_manifest(manifest, str(manifest_path))
        problems += found
        if isinstance(manifest, dict):
            run_id, manifest_status = manifest.get("run_id"), manifest.get("status")
            ids = manifest.get("trial_ids")
            readable = not any(p.field == "" for p in found)
            if readable and isinstance(ids, list) and all(isinstance(i, str) for i in ids):
                planned = ids

    statuses: dict[str, int] = {}
    names: set[str] = set()
    planned_set = set(planned or ())
    entries = sorted(trials_dir.iterdir()) if trials_dir.is_dir() else []
    if not trials_dir.is_dir():
        problems.append(Problem(str(trials_dir), "", "missing: a run keeps its trial files in trials/"))
    for path in entries:
        file = str(path)
        if path.name.startswith(".") and path.name.endswith(".tmp"):
            problems.append(Problem(file, "", "leftover temporary file of an interrupted write "
                                              "(`regbench run --resume` removes it)"))
            continue
        if path.suffix != ".json" or not path.is_file():
            problems.append(Problem(file, "", "stray file: trials/ holds only <trial_id>.json files"))
            continue
        names.add(path.stem)
        doc, problem = read_json_file(path)
        found = [problem] if problem else check_trial(doc, file)
        problems += found
        if problem or any(p.field == "" for p in found):
            continue  # unreadable, foreign or unreadable version: that one line says it
        if isinstance(doc.get("status"), str):
            statuses[doc["status"]] = statuses.get(doc["status"], 0) + 1
        trial_id = doc.get("trial_id")
        if isinstance(trial_id, str) and trial_id != path.stem:
            problems.append(Problem(file, "trial_id", f"{trial_id!r} does not match the file name "
                                                      f"(a trial file is named <trial_id>.json)"))
        elif planned is not None and path.stem not in planned_set:
            problems.append(Problem(file, "", f"stray trial file: {path.stem} is not planned in "
                                              f"{manifest_path.name} trial_ids"))
    hint = "" if manifest_status == "complete" else (
        f" (run status {manifest_status}: `regbench run --resume {run_dir}` finishes it)")
    if planned is not None:
        for trial_id in planned:
            if trial_id not in names:
                problems.append(Problem(str(run.record("trial", trial_id)), "",
                                        f"missing: planned in {manifest_path.name}, no file{hint}"))
    problems += _session_problems(run, manifest if isinstance(manifest, dict) else {}, hint)
    return RunCheck(run_dir, problems, statuses, len(planned) if planned is not None else None, run_id,
                    manifest_status)


def _session_problems(run: layout.RunLayout, manifest: dict, hint: str) -> list[Problem]:
    """sessions/: every file a valid session record named <session_id>.json, one per session the
    manifest planned (session_ids, adaptive additions included)."""
    folder, problems = run.sessions, []
    planned = manifest.get("session_ids")
    planned = set(planned) if isinstance(planned, list) else None
    seen = set()
    for path in sorted(folder.iterdir()) if folder.is_dir() else []:
        file = str(path)
        if path.suffix != ".json" or not path.is_file():
            problems.append(Problem(file, "", "stray file: sessions/ holds only <session_id>.json files"))
            continue
        doc, problem = read_json_file(path)
        found = [problem] if problem else check_session(doc, file)
        problems += found
        if problem or any(p.field == "" for p in found):
            continue
        seen.add(path.stem)
        if doc.get("session_id") != path.stem:
            problems.append(Problem(file, "session_id", "does not match the file name"))
        elif planned is not None and path.stem not in planned:
            problems.append(Problem(file, "", f"stray session file: not planned in {layout.MANIFEST} session_ids"))
    for sid in sorted((planned or set()) - seen):
        problems.append(Problem(str(run.record("session", sid)), "", f"missing: planned in {layout.MANIFEST}, no file{hint}"))
    return problems


# ---- helpers ------------------------------------------------------------------

def field_path(parts) -> str:
    """['convergence', 'curve', 2, 'wall_s'] -> 'convergence.curve[2].wall_s'."""
    out = ""
    for part in parts:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)

