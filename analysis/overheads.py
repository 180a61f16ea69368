"""Overhead of each regularizer against its baseline, with 95% confidence intervals.

Two sources, named in the `method` column:
- "paired sessions" (step time, when the run has them): the baseline and the regularized model
  alternate in short blocks inside one process; analysis/paired.py.
- "isolated trials" (everything else, and step time when there are no sessions): a regularized
  trial is paired with the baseline (setting "none") of the same run, workload, precision, batch
  size, backend, device model, epoch budget, learning rate, thread cap, float32 matmul policy (ieee or
  tf32: never paired across) and repeat. Per pair we take
  the ratio (throughputs, memory, energy per sample, time to target) or the difference (best val
  accuracy, generalization gap); a cell's estimate is the geometric mean of its ratios (mean of
  its differences) with a Student t interval over repeats.
Time to target scores a repeat that never reached the target as its whole training time, marked
(AlgoPerf's rule): a regularizer that sometimes fails to converge does not look faster for it.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd

from analysis import paired, stats
from analysis.cells import BASELINE, CELL_KEYS, PAIR_KEYS, with_keys
from analysis.flags import note_flags


@dataclasses.dataclass(frozen=True)
class Metric:
    name: str
    column: str  # trials column
    kind: str  # "ratio" (regularized / baseline) or "delta" (regularized - baseline)
    unit: str  # unit of the raw column
    label: str
    lower_is_better: bool


METRICS = (
    Metric("step_time", "step_time_p50_s", "ratio", "s", "step time, steady state", True),
    Metric("free_running_step_time", "free_running_step_s", "ratio", "s", "step time, free-running", True),
    Metric("end_to_end_throughput", "end_to_end_samples_per_s", "ratio", "samples/s",
           "end-to-end training throughput", False),
    Metric("steady_throughput", "samples_per_s", "ratio", "samples/s", "steady-state throughput", False),
    Metric("device_memory", "device_peak_bytes", "ratio", "bytes", "peak device memory", True),
    Metric("host_memory", "host_peak_bytes", "ratio", "bytes", "peak host memory", True),
    Metric("energy_per_sample", "energy_per_sample_j", "ratio", "J/sample", "energy per sample", True),
    Metric("time_to_target", "time_to_target_or_budget_s", "ratio", "s", "time to target", True),
    Metric("best_val_accuracy", "best_val_accuracy", "delta", "accuracy (0-1)", "best val accuracy", False),
    Metric("generalization_gap", "generalization_gap", "delta", "accuracy (0-1)", "generalization gap", True),
)
METRIC_BY_NAME = {m.name: m for m in METRICS}
OVERHEAD_COLUMNS = CELL_KEYS + ["setting", "metric", "method", "kind", "unit", "n_repeats", "estimate", "ci_low",
                                "ci_high", "change_pct", "ci_low_pct", "ci_high_pct", "mark", "baseline_mean",
                                "regularized_mean", "note"]
ISOLATED = "isolated trials"
PAIRED = "paired sessions"


def _paired(ok: pd.DataFrame, match: str, reference: str, columns: list[str], keys: list[str]) -> pd.DataFrame:
    """Rows of `ok` whose `match` column != reference, joined to the reference row of the same keys.

    Adds `<column>_ref` for each column and `has_reference`."""
    ref = ok[ok[match] == reference]
    other = ok[ok[match] != reference]
    ref = ref.groupby(keys, sort=False, dropna=False)[columns].mean().reset_index()
    ref = ref.rename(columns={c: f"{c}_ref" for c in columns})
    ref["has_reference"] = True
    out = other.merge(ref, on=keys, how="left")
    out["has_reference"] = out["has_reference"].fillna(False).astype(bool)
    return out


def paired_values(pairs: pd.DataFrame, column: str, kind: str) -> np.ndarray:
    """Per-pair log ratio (kind 'ratio', NaN unless both > 0) or difference (kind 'delta')."""
    x = pd.to_numeric(pairs[column], errors="coerce").to_numpy(dtype=float)
    r = pd.to_numeric(pairs[f"{column}_ref"], errors="coerce").to_numpy(dtype=float)
    if kind == "ratio":
        with np.errstate(divide="ignore", invalid="ignore"):
            v = np.log(x / r)
        v[~((x > 0) & (r > 0))] = np.nan
        return v
    return x - r


def summarize(pairs: pd.DataFrame, group_keys: list[str], metrics) -> pd.DataFrame:
    """One row per group and metric: estimate with t interval and mark. `pairs` from `_paired`."""
    if pairs.empty:
        return pd.DataFrame(columns=group_keys + ["metric"])
    groups = pairs.groupby(group_keys, sort=True, dropna=False).indices
    keys = list(groups.keys())
    index = list(groups.values())
    has_ref = pairs["has_reference"].to_numpy()
    any_ref = np.array([has_ref[i].any() for i in index])
    frames = []
    for m in metrics:
        v = paired_values(pairs, m.column, m.kind)
        x = pd.to_numeric(pairs[m.column], errors="coerce").to_numpy(dtype=float)
        r = pd.to_numeric(pairs[f"{m.column}_ref"], errors="coerce").to_numpy(dtype=float)
        res = stats.mean_ci([v[i] for i in index])
        est, lo, hi, n = res.T
        if m.kind == "ratio":
            est, lo, hi = np.exp(est), np.exp(lo), np.exp(hi)
            pct = lambda a: (a - 1.0) * 100.0  # noqa: E731
            null = 1.0
        else:
            pct = lambda a: a * 100.0  # noqa: E731  percentage points of accuracy
            null = 0.0
        mk = stats.marks(n, lo, hi, null)
        mk[~any_ref] = stats.NO_BASELINE
        frame = pd.DataFrame(keys, columns=group_keys) if len(group_keys) > 1 else pd.DataFrame({group_keys[0]: keys})
        frame["metric"] = m.name
        frame["kind"] = m.kind
        frame["unit"] = m.unit
        frame["n_repeats"] = n.astype(int)
        frame["estimate"] = est
        frame["ci_low"] = lo
        frame["ci_high"] = hi
        frame["change_pct"] = pct(est)
        frame["ci_low_pct"] = pct(lo)
        frame["ci_high_pct"] = pct(hi)
        frame["mark"] = mk
        frame["baseline_mean"] = [np.nanmean(r[i]) if np.isfinite(r[i]).any() else np.nan for i in index]
        frame["regularized_mean"] = [np.nanmean(x[i]) if np.isfinite(x[i]).any() else np.nan for i in index]
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)


def overhead(trials: pd.DataFrame, metrics=METRICS, *, sessions=None) -> pd.DataFrame:
    """Overhead table: one row per cell (CELL_KEYS), regularizer setting and metric.

    estimate/ci_low/ci_high: ratio (regularized / baseline) or difference; change_pct: the same as a
    percent change (ratios) or percentage points (accuracy deltas). mark: significant | noise (CI
    includes 1 or 0) | too few repeats | no baseline | no data. method: "paired sessions" for step
    time when `sessions` (RunData.sessions) cover the cell, else "isolated trials". Only records
    with status ok are used; note says why a cell has no baseline, or how often the target was hit,
    and the host-bound flags of the row's baseline and setting (analysis.flags).
    """
    if isinstance(metrics, str):
        metrics = [METRIC_BY_NAME[metrics]]
    metrics = [METRIC_BY_NAME[m] if isinstance(m, str) else m for m in metrics]
    df = with_keys(trials)
    ok = df[df["status"] == "ok"]
    columns = [m.column for m in metrics]
    pairs = _paired(ok, "setting", BASELINE, columns, PAIR_KEYS)
    table = summarize(pairs, CELL_KEYS + ["setting"], metrics)
    if table.empty:
        return pd.DataFrame(columns=OVERHEAD_COLUMNS)
    table["note"] = ""
    table["method"] = ISOLATED
    no_base = table["mark"] == stats.NO_BASELINE
    if no_base.any():
        base_all = df[df["setting"] == BASELINE]
        status_by_cell = base_all.groupby(CELL_KEYS, dropna=False)["status"].agg(lambda s: ", ".join(sorted(set(s))))
        for i in np.flatnonzero(no_base.to_numpy()):
            key = tuple(table.iloc[i][k] for k in CELL_KEYS)
            st = status_by_cell.get(key)
            table.iat[i, table.columns.get_loc("note")] = (
                f"baseline trials are {st}, none ok" if st else "no baseline trial in this run")
    missing = (table["mark"] == stats.NO_DATA)
    table.loc[missing, "note"] = "metric not recorded (null) in these trials"
    if "target_reached" in ok:
        _note_target_hits(table, ok)
    sessions = paired.session_records(sessions)
    if sessions:
        table = _with_paired_step_time(table, df, sessions)
    note_flags(table, df)  # host-bound baselines and settings (analysis/flags.py)
    _note_attention_path(table, df)
    return table[OVERHEAD_COLUMNS].reset_index(drop=True)


def attention_paths(trials: pd.DataFrame) -> dict:
    """(cell keys..., setting) -> "path (kernel)" of its ok trials' attention (timing.attention_path and
    attention_kernel; bench/attention.py), for the cells whose trials recorded one."""
    if trials.empty or "attention_path" not in trials.columns:
        return {}
    df = with_keys(trials, CELL_KEYS)
    ok = df[(df["status"] == "ok") & df["attention_path"].notna()]
    kernel = ok["attention_kernel"] if "attention_kernel" in ok else pd.Series(None, index=ok.index, dtype=object)
    label = [f"{p} ({k})" if isinstance(k, str) else str(p) for p, k in zip(ok["attention_path"], kernel)]
    groups = ok.assign(_attention=label).groupby(CELL_KEYS + ["setting"], dropna=False)["_attention"]
    return {key: " / ".join(sorted(set(v))) for key, v in groups}


def attention_note(paths: dict, cell: tuple, setting: str) -> str:
    """'attention: explicit (einsum), baseline fused (cudnn)' when the setting's step ran another
    attention path or kernel than its baseline's (attention dropout does, on JAX and torch), else ''."""
    mine, base = paths.get((*cell, setting)), paths.get((*cell, BASELINE))
    if setting == BASELINE or mine is None or base is None or mine == base:
        return ""
    return f"attention: {mine}, baseline {base}"


def _note_attention_path(table: pd.DataFrame, trials: pd.DataFrame) -> None:
    """Note every overhead row of a setting whose attention path differs from its baseline's: its
    overheads include the kernel switch (e.g. cuDNN flash attention lost to attention dropout)."""
    paths = attention_paths(trials)
    if not paths or table.empty:
        return
    keyed = with_keys(table, CELL_KEYS)
    col = table.columns.get_loc("note")
    for i, (*cell, setting) in enumerate(keyed[CELL_KEYS + ["setting"]].itertuples(index=False, name=None)):
        note = attention_note(paths, tuple(cell), setting)
        if note:
            table.iat[i, col] = "; ".join(n for n in (note, table.iat[i, col]) if n)


def _note_target_hits(table: pd.DataFrame, ok: pd.DataFrame) -> None:
    """Time-to-target rows: say how many repeats reached the target, on each side, when any missed."""
    reached = ok["target_reached"].map(lambda v: v is True or v == 1.0)
    known = ok["target_reached"].map(lambda v: v is not None and v == v)
    hits = ok.assign(hit=reached, known=known).groupby(CELL_KEYS + ["setting"], dropna=False)[["hit", "known"]].sum()
    rows = np.flatnonzero((table["metric"] == "time_to_target").to_numpy())
    for i in rows:
        key = tuple(table.iloc[i][k] for k in CELL_KEYS)
        counts, parts = [], []
        for who, setting in ((table.iloc[i]["setting"], table.iloc[i]["setting"]), ("baseline", BASELINE)):
            if (*key, setting) in hits.index:
                h, n = hits.loc[(*key, setting)]
                counts.append((int(h), int(n)))
                parts.append(f"{who} {int(h)}/{int(n)}")
        if any(h < n for h, n in counts):
            table.iat[i, table.columns.get_loc("note")] = (
                "reached the target: " + ", ".join(parts) + "; a miss counts as its whole training time")


def _with_paired_step_time(table: pd.DataFrame, trials: pd.DataFrame, sessions: list) -> pd.DataFrame:
    """Replace step-time rows by the paired sessions' estimates where a session covers the cell."""
    est = paired.estimates(sessions)
    est = est[est["setting"] != paired.AA_LABEL]
    if est.empty:
        return table
    cells = trials.drop_duplicates(["run", "cell_id"]).set_index(["run", "cell_id"])[CELL_KEYS]
    rows = []
    for r in est.to_dict("records"):
        key = (r["run"], r["cell_id"])
        if key not in cells.index:
            continue  # a session without isolated trials of its cell in this run: no cell keys to file it under
        rows.append({**cells.loc[key].to_dict(), "setting": r["setting"], "metric": "step_time", "method": PAIRED,
                     "kind": "ratio", "unit": "s", "n_repeats": r["n_sessions"], "estimate": r["estimate"],
                     "ci_low": r["ci_low"], "ci_high": r["ci_high"], "change_pct": r["change_pct"],
                     "ci_low_pct": r["ci_low_pct"], "ci_high_pct": r["ci_high_pct"], "mark": r["mark"],
                     "baseline_mean": r["baseline_step_time_s"],
                     "regularized_mean": r["baseline_step_time_s"] * r["estimate"],
                     "note": r["note"] or f"{r['n_sessions']} sessions x {r['rounds'] // max(1, r['n_sessions'])} rounds"})
    if not rows:
        return table
    new = with_keys(pd.DataFrame(rows), CELL_KEYS)
    key_cols = CELL_KEYS + ["setting"]
    covered = pd.MultiIndex.from_frame(new[key_cols])
    step = table["metric"] == "step_time"
    drop = step & pd.MultiIndex.from_frame(table[key_cols]).isin(covered)
    return pd.concat([table[~drop], new], ignore_index=True)


def format_estimate(row, digits: int = 1) -> str:
    """'+20.3% [+18.1, +22.4]' with a mark suffix: '~' noise, '?' too few repeats."""
    if row["mark"] in (stats.NO_BASELINE, stats.NO_DATA):
        return row["mark"]
    unit = "%" if row["kind"] == "ratio" else " pp"
    s = f"{row['change_pct']:+.{digits}f}{unit}"
    if row["mark"] == stats.TOO_FEW:
        return f"{s} (too few repeats)"
    s += f" [{row['ci_low_pct']:+.{digits}f}, {row['ci_high_pct']:+.{digits}f}]"
    return s + (" ~noise" if row["mark"] == stats.NOISE else "")


