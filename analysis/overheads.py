"""Overhead of each regularizer against its paired baseline, with bootstrap 95% CIs over repeats.

A regularized trial is paired with the baseline (setting "none") of the same run, workload,
precision, batch size, backend, device model, epoch budget, learning rate and repeat. Per pair we take the
ratio (step time, throughput, memory, energy per sample, time to target) or the difference
(best val accuracy, generalization gap); a cell's estimate is the geometric mean of its ratios
(mean of its differences) with a bootstrap CI over repeats.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd

from analysis import stats


@dataclasses.dataclass(frozen=True)
class Metric:
    name: str
    column: str  # trials column
    kind: str  # "ratio" (regularized / baseline) or "delta" (regularized - baseline)
    unit: str  # unit of the raw column
    label: str
    lower_is_better: bool


METRICS = (
    Metric("step_time", "step_time_p50_s", "ratio", "s", "step time (p50)", True),
    Metric("throughput", "samples_per_s", "ratio", "samples/s", "throughput", False),
    Metric("train_time", "train_s", "ratio", "s", "training time", True),
    Metric("device_memory", "device_peak_bytes", "ratio", "bytes", "peak device memory", True),
    Metric("host_memory", "host_peak_bytes", "ratio", "bytes", "peak host memory", True),
    Metric("energy_per_sample", "energy_per_sample_j", "ratio", "J/sample", "energy per sample", True),
    Metric("time_to_target", "time_to_target_s", "ratio", "s", "time to target", True),
    Metric("best_val_accuracy", "best_val_accuracy", "delta", "accuracy (0-1)", "best val accuracy", False),
    Metric("generalization_gap", "generalization_gap", "delta", "accuracy (0-1)", "generalization gap", True),
)
METRIC_BY_NAME = {m.name: m for m in METRICS}
BASELINE = "none"

# What must match for two trials to be compared ("budget" columns are optional in trial files).
CELL_KEYS = ["workload", "precision", "batch_size", "backend", "device_name", "epochs", "learning_rate",
             "steps_per_epoch", "max_train_samples"]
PAIR_KEYS = ["run"] + CELL_KEYS + ["repeat"]
OVERHEAD_COLUMNS = CELL_KEYS + ["setting", "metric", "kind", "unit", "n_repeats", "estimate", "ci_low", "ci_high",
                                "change_pct", "ci_low_pct", "ci_high_pct", "mark", "baseline_mean",
                                "regularized_mean", "note"]


def with_keys(trials: pd.DataFrame, keys=CELL_KEYS + ["repeat", "run"]) -> pd.DataFrame:
    """Copy of trials with NaN key values replaced by sentinels, so pairing treats 'absent' as a value."""
    df = trials.copy()
    for k in keys:
        if k not in df.columns:
            df[k] = -1
        elif df[k].dtype == object:
            df[k] = df[k].fillna("unknown")
        else:
            df[k] = df[k].fillna(-1)
    return df


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


def summarize(pairs: pd.DataFrame, group_keys: list[str], metrics, *, seed: int = 0) -> pd.DataFrame:
    """One row per group and metric: estimate with bootstrap CI and mark. `pairs` from `_paired`."""
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
        res = stats.mean_ci([v[i] for i in index], seed=seed)
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


def overhead(trials: pd.DataFrame, metrics=METRICS, *, seed: int = 0) -> pd.DataFrame:
    """Overhead table: one row per cell (CELL_KEYS), regularizer setting and metric.

    estimate/ci_low/ci_high: ratio (regularized / baseline) or difference; change_pct: the same as a
    percent change (ratios) or percentage points (accuracy deltas). mark: significant | noise (CI
    includes 1 or 0) | too few repeats (< stats.MIN_REPEATS_FOR_CI pairs) | no baseline | no data.
    Only trials with status ok are used; note says why a cell has no baseline.
    """
    if isinstance(metrics, str):
        metrics = [METRIC_BY_NAME[metrics]]
    metrics = [METRIC_BY_NAME[m] if isinstance(m, str) else m for m in metrics]
    df = with_keys(trials)
    ok = df[df["status"] == "ok"]
    columns = [m.column for m in metrics]
    pairs = _paired(ok, "setting", BASELINE, columns, PAIR_KEYS)
    table = summarize(pairs, CELL_KEYS + ["setting"], metrics, seed=seed)
    if table.empty:
        return pd.DataFrame(columns=OVERHEAD_COLUMNS)
    table["note"] = ""
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
    return table[OVERHEAD_COLUMNS].reset_index(drop=True)


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


