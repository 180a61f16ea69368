"""The report's tables: analysis results as display frames (one row per cell and setting, text
columns formatted), and the notes that explain them. The single-run report (analysis/report.py)
and the comparison pages (analysis/comparison.py) both show them.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from analysis import stats
from analysis.cells import BASELINE, CELL_KEYS
from analysis.flags import cell_flags
from analysis.overheads import METRIC_BY_NAME, format_estimate
from analysis.runs import RunData
from analysis.speedups import format_speedup

METHOD_NOTE = (
    "Overhead is a regularizer's figure over its baseline's in the same cell. Step time comes from paired sessions "
    "where the run has them (baseline and regularized models alternate in one fresh process; a 95% Student t "
    "interval over sessions), every other column from isolated trials paired by repeat (geometric mean of the "
    "ratios, mean of the accuracy differences in percentage points, a 95% t interval over repeats). '~noise': the "
    "interval includes no change; 'too few repeats': one value, no interval.")
METHOD_LINKS = (("how each figure is measured", "bench/README.md", "how-a-trial-is-measured"),
                ("how the overheads and intervals are formed", "analysis/README.md", "the-report"))
"""Where METHOD_NOTE is said in full: (text, file in the repository, anchor)."""
_ROOT = Path(__file__).resolve().parents[1]


def method_links(from_dir: Path) -> list[tuple[str, str]]:
    """(text, href) of METHOD_LINKS, relative to `from_dir` (the page's folder)."""
    out = []
    for text, doc, anchor in METHOD_LINKS:
        try:
            href = os.path.relpath(_ROOT / doc, from_dir)
        except ValueError:  # another drive (Windows)
            href = (_ROOT / doc).as_uri()
        out.append((text, f"{Path(href).as_posix()}#{anchor}"))
    return out


FLAGS_NOTE = (
    "Cells, regularized ones and baselines alike, whose figures measure the host: not GPU-bound (steady GPU "
    "utilization under 80% or unmeasured), input-side bound (the step waits for the host's batch work: gather, "
    "augmentation, mixup or cutmix in NumPy; timing.input_time_per_batch_s is the input side's time per batch "
    "measured on the feed alone), or synced and free-running step times more than 10% apart (the synced step "
    "carries host work the device would overlap). A row's overheads are host cost, not the regularizer's device cost.")


def varying_keys(df: pd.DataFrame, keys=CELL_KEYS) -> list[str]:
    """The cell keys that take more than one value in df (workload and precision always shown)."""
    return [k for k in keys if k in df and (k in ("workload", "precision") or df[k].nunique(dropna=False) > 1)]


def overhead_wide(table: pd.DataFrame) -> pd.DataFrame:
    """One row per cell and setting, one formatted column per metric that has any data."""
    if table.empty:
        return pd.DataFrame()
    keys = varying_keys(table) + ["setting"]
    t = table.copy()
    t["value"] = [format_estimate(r) for r in t[["mark", "kind", "change_pct", "ci_low_pct", "ci_high_pct",
                                                   "n_repeats"]].to_dict("records")]
    has_data = t.groupby("metric")["mark"].agg(lambda m: (m != stats.NO_DATA).any())
    metrics = [m for m in METRIC_BY_NAME if has_data.get(m, False)]
    t = t[t["metric"].isin(metrics)]
    wide = t.pivot_table(index=keys, columns="metric", values="value", aggfunc="first").reindex(columns=metrics)
    trial_metrics = [m for m in metrics if m != "step_time" or (t.loc[t["metric"] == m, "method"] != "paired sessions").all()]
    n = t[t["metric"] == trial_metrics[0]].set_index(keys)["n_repeats"] if trial_metrics else None
    wide.columns = [_metric_header(m, set(t.loc[t["metric"] == m, "method"].dropna())) for m in metrics]
    wide = wide.reset_index()
    if n is not None:
        wide.insert(len(keys), "repeats", n.reindex(pd.MultiIndex.from_frame(wide[keys])).to_numpy()
                    if len(keys) > 1 else n.reindex(wide[keys[0]]).to_numpy())
    return wide


def _metric_header(name: str, methods=()) -> str:
    m = METRIC_BY_NAME[name]
    how = f", {' / '.join(sorted(methods))}" if name == "step_time" and methods else ""
    return f"{m.label}{how} ({'pp' if m.kind == 'delta' else '%'})"


def speedup_display(speedup: pd.DataFrame) -> pd.DataFrame:
    if speedup.empty:
        return pd.DataFrame()
    keys = [k for k in varying_keys(speedup, [k for k in CELL_KEYS if k != "precision"])] + ["precision", "setting"]
    out = speedup[keys].copy()
    out["speedup over float32"] = [format_speedup(r) for r in speedup.to_dict("records")]
    out["baseline speedup"] = speedup["baseline_speedup"].map(lambda v: f"{v:.2f}x" if np.isfinite(v) else "")
    out["verdict"] = speedup["verdict"]
    return out.sort_values(keys).reset_index(drop=True)


def failures(data: RunData, link_from: Path | None = None) -> pd.DataFrame:
    """Every trial that is not ok, and every file that could not be used, with its reason. `log`:
    the trial process's output kept in the run (RUN/logs/<trial_id>.log), as a path relative to
    `link_from` (default: the run's report/ folder), or "" when the run kept none."""
    t = data.trials
    bad = t[t["status"] != "ok"]
    logs = []
    for run_dir, trial_id in zip(bad["run_dir"], bad["trial_id"]):
        log = Path(run_dir) / "logs" / f"{trial_id}.log"
        logs.append(os.path.relpath(log, link_from or Path(run_dir) / "report") if log.is_file() else "")
    rows = pd.DataFrame({"run": bad["run"], "trial_id": bad["trial_id"], "status": bad["status"],
                         "workload": bad["workload"], "setting": bad["setting"], "precision": bad["precision"],
                         "device": bad["device_name"], "reason": bad["reason"].fillna("(no reason recorded)"),
                         "log": pd.Series(logs, index=bad.index, dtype=object)})
    if not data.problems.empty:
        pr = data.problems
        rows = pd.concat([rows, pd.DataFrame({
            "run": pr["run"], "trial_id": pr["file"].map(lambda f: Path(f).name), "status": "unreadable",
            "workload": None, "setting": None, "precision": None, "device": None, "reason": pr["reason"],
            "log": ""})], ignore_index=True)
    return rows.reset_index(drop=True)


def baselines(trials: pd.DataFrame) -> pd.DataFrame:
    """Absolute baseline numbers per cell: median step time (ms), throughput, peak host memory, accuracy."""
    ok = trials[(trials["status"] == "ok") & (trials["setting"] == BASELINE)]
    if ok.empty:
        return pd.DataFrame()
    keys = varying_keys(ok)
    ok = ok.assign(gpu_util_steady=pd.to_numeric(ok["steady_gpu_util_mean"], errors="coerce")
                   if "steady_gpu_util_mean" in ok else np.nan)
    g = ok.groupby(keys, dropna=False)
    out = pd.DataFrame({
        "repeats": g.size(),
        "step time p50 (ms)": g["step_time_p50_s"].median() * 1e3,
        "input side per batch (ms)": _median(g, "input_time_per_batch_s") * 1e3,
        "throughput (samples/s)": g["samples_per_s"].median(),
        "peak host memory (MiB)": g["host_peak_bytes"].median() / 2**20,
        "peak device memory (MiB)": g["device_peak_bytes"].median() / 2**20,
        "best val accuracy": g["best_val_accuracy"].median(),
        "GPU util, steady (%)": g["gpu_util_steady"].median(),
        "jit": g["jit_compile"].agg(lambda s: ", ".join(sorted({str(v) for v in s}))),
    }).reset_index()
    return out.dropna(axis=1, how="all").round(4)


def _median(g, column: str):
    """Per group median of a column that older runs lack (NaN there)."""
    return g[column].agg(lambda v: pd.to_numeric(v, errors="coerce").median()) if column in g.obj else g.size() * np.nan


def flagged_cells(trials: pd.DataFrame) -> pd.DataFrame:
    """The report's table of analysis.flags.cell_flags: the varying cell keys, setting, flag, why."""
    flags = cell_flags(trials)
    if flags.empty:
        return pd.DataFrame()
    return flags[varying_keys(flags) + ["setting", "flag", "why"]].reset_index(drop=True)


def run_metadata(data: RunData, manifest: dict) -> pd.DataFrame:
    t = data.trials
    suite = manifest.get("suite") or {}
    devices = ", ".join(sorted({str(d) for d in t["device_name"].dropna().unique()})) or "unknown"
    counts = t["status"].value_counts()
    rows = [("run", manifest.get("run_id") or ", ".join(data.manifests)),
            ("suite", suite.get("name") if isinstance(suite, dict) else str(suite)),
            ("status", manifest.get("status")), ("git commit", manifest.get("git_commit")),
            ("started", manifest.get("started_at")), ("finished", manifest.get("finished_at")),
            ("devices", devices), ("backends", ", ".join(sorted(t["backend"].dropna().unique()))),
            ("trials", f"{len(t)} read: " + ", ".join(f"{n} {s}" for s, n in counts.items())),
            ("unreadable or missing files", str(len(data.problems)))]
    for r in manifest.get("retries") or []:
        rows.append((f"retry round {r.get('round')}", f"{len(r.get('units') or [])} failed unit(s) run again "
                     f"({'finished' if r.get('finished_at') else 'interrupted'}); old records in history/"))
    return pd.DataFrame([(k, "" if v is None else str(v)) for k, v in rows], columns=["field", "value"])
