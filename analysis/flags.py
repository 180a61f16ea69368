"""Cells whose figures measure the host rather than the regularizer's device cost: one row per cell
(CELL_KEYS) and setting, regularized settings and baselines alike, from their ok trials.

- `not_gpu_bound`: a GPU cell whose median steady-state GPU utilization is under 80% (the trials'
  `input_bound` threshold), or was not measured: its step waits for host and launch work.
- `input_side_bound`: the step waits for the input side (`timing.input_side_bound`,
  bench.inputs.input_side_bound) in half of the cell's repeats or more: the host's batch work
  (gather, augmentation, mixup/cutmix in NumPy) is slower than what it must keep up with, so the
  cell's overhead is host cost, not device cost.
- `sync_gap`: the synced median step time and the free-running one differ by more than
  SYNC_GAP_LIMIT (median over repeats): the synced step carries host work the device would
  overlap, and so do the overheads computed from it.

`value` is the utilization (%), the input side's median seconds per batch, or the relative gap
(free-running / synced - 1); `why` says it in a sentence.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from analysis.cells import BASELINE, CELL_KEYS, with_keys
from bench.measure.energy import INPUT_BOUND_UTIL_PERCENT as GPU_BOUND_UTIL_PERCENT  # the trials' input_bound threshold

SYNC_GAP_LIMIT = 0.10
FLAG_COLUMNS = CELL_KEYS + ["setting", "flag", "value", "why"]
FLAG_TEXT = {"not_gpu_bound": "are not GPU-bound (steady GPU utilization under 80% or unmeasured)",
             "input_side_bound": "are input-side bound (the step waits for the host's batch work)",
             "sync_gap": f"have synced and free-running step times more than {SYNC_GAP_LIMIT:.0%} apart"}


def _numbers(g: pd.DataFrame, column: str) -> pd.Series:
    return pd.to_numeric(g[column], errors="coerce").dropna() if column in g else pd.Series(dtype=float)


def _who(setting: str) -> str:
    return "baseline" if setting == BASELINE else setting


def _gpu_util(setting: str, g: pd.DataFrame):
    if "device_kind" not in g or not (g["device_kind"] == "gpu").all():
        return None
    util = _numbers(g, "steady_gpu_util_mean")
    if util.empty:
        return np.nan, (f"{_who(setting)}: steady-state GPU utilization not measured (window too short, MIG or no "
                        "NVML): not shown to be GPU-bound")
    if util.median() < GPU_BOUND_UTIL_PERCENT:
        return float(util.median()), (f"{_who(setting)} GPU utilization {util.median():.0f}% < "
                                      f"{GPU_BOUND_UTIL_PERCENT:.0f}%: not measuring the regularizer")
    return None


def _input_side(setting: str, g: pd.DataFrame):
    if "input_side_bound" not in g:
        return None
    known = pd.to_numeric(g["input_side_bound"].map(lambda v: np.nan if v is None else float(v)), errors="coerce")
    if known.dropna().empty or known.dropna().mean() < 0.5:
        return None
    t, step = _numbers(g, "input_time_per_batch_s").median(), _numbers(g, "step_time_p50_s").median()
    return float(t), (f"{_who(setting)} input-side bound: the input side takes {t * 1e3:.1f} ms a batch against a "
                      f"synced step of {step * 1e3:.1f} ms; its overhead is host cost, not device cost")


def _sync_gap(setting: str, g: pd.DataFrame):
    if "free_running_step_s" not in g:
        return None
    synced, free = (pd.to_numeric(g[c], errors="coerce") for c in ("step_time_p50_s", "free_running_step_s"))
    ratio = (free / synced)[(synced > 0) & (free > 0)]
    if ratio.empty or abs(ratio.median() - 1) <= SYNC_GAP_LIMIT:
        return None
    gap = float(ratio.median() - 1)
    return gap, (f"{_who(setting)} synced step {synced.median() * 1e3:.1f} ms vs free-running "
                 f"{free.median() * 1e3:.1f} ms ({gap * 100:+.0f}%, more than {SYNC_GAP_LIMIT:.0%} apart): its "
                 "overheads include host work the device would overlap")


CHECKS = (("not_gpu_bound", _gpu_util), ("input_side_bound", _input_side), ("sync_gap", _sync_gap))


def cell_flags(trials: pd.DataFrame) -> pd.DataFrame:
    """Every flag of every cell and setting (columns FLAG_COLUMNS), from the ok trials."""
    if trials.empty or not {"status", "setting"} <= set(trials.columns):
        return pd.DataFrame(columns=FLAG_COLUMNS)
    df = with_keys(trials, CELL_KEYS)
    ok = df[df["status"] == "ok"]
    rows = []
    for key, g in ok.groupby(CELL_KEYS + ["setting"], dropna=False, sort=True):
        for flag, check in CHECKS:
            hit = check(key[-1], g)
            if hit is not None:
                rows.append((*key, flag, *hit))
    return pd.DataFrame(rows, columns=FLAG_COLUMNS)


def gpu_baselines_not_gpu_bound(trials: pd.DataFrame) -> pd.DataFrame:
    """GPU baseline cells that are not GPU-bound: their every overhead measures host and launch
    work, not the regularizer. One row per cell (CELL_KEYS) with `util` (NaN when unmeasured) and `why`."""
    flags = cell_flags(trials)
    base = flags[(flags["flag"] == "not_gpu_bound") & (flags["setting"] == BASELINE)]
    return base.rename(columns={"value": "util"})[CELL_KEYS + ["util", "why"]].reset_index(drop=True)


def note_flags(table: pd.DataFrame, trials: pd.DataFrame) -> None:
    """Add to the note of every overhead row its baseline's flags and its own setting's."""
    flags = cell_flags(trials)
    if flags.empty or table.empty:
        return
    why: dict = {}
    for r in flags.to_dict("records"):
        why.setdefault(tuple(r[k] for k in CELL_KEYS + ["setting"]), []).append(r["why"])
    keyed = with_keys(table, CELL_KEYS)
    col = table.columns.get_loc("note")
    for i, row in enumerate(keyed[CELL_KEYS + ["setting"]].itertuples(index=False, name=None)):
        found = why.get((*row[:-1], BASELINE), []) + (why.get(row, []) if row[-1] != BASELINE else [])
        if found:
            table.iat[i, col] = "; ".join([*found, table.iat[i, col]] if table.iat[i, col] else found)


def flag_findings(flags: pd.DataFrame) -> list[str]:
    """One sentence per kind of flag on regularized cells and on any cell for the other kinds (GPU
    baselines that are not GPU-bound have their own sentence each in the report)."""
    out = []
    for flag, text in FLAG_TEXT.items():
        hit = flags[(flags["flag"] == flag) & ((flags["setting"] != BASELINE) | (flag != "not_gpu_bound"))]
        if len(hit):
            names = ", ".join(f"{r['setting']} on {r['workload']} ({r['precision']})"
                              for r in hit.head(6).to_dict("records")) + (", ..." if len(hit) > 6 else "")
            out.append(f"WARNING: {len(hit)} cell(s) {text}: {names}; their overheads are host cost (see Flagged "
                       "cells).")
    return out
