"""Mixed-precision view: speedup of each precision over float32, per regularizer setting.

speedup = float32 step time / this precision's step time, paired per run, cell and repeat
(> 1: faster than float32). `verdict` says where a regularizer erases the gain the baseline has.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from analysis import stats
from analysis.cells import BASELINE, CELL_KEYS, with_keys
from analysis.overheads import Metric, _paired, summarize

REFERENCE = "float32"
_KEYS = [k for k in CELL_KEYS if k != "precision"] + ["setting"]
_STEP = Metric("speedup", "step_time_p50_s", "ratio", "x", "speedup over float32", False)

KEEPS = "keeps the gain"
LOSES_MOST = "loses most of the gain"
ERASES = "erases the mixed-precision gain"
NO_GAIN = "no gain at baseline"
SLOWER = "slower than float32"
UNKNOWN = "unknown"


def _gain(row) -> bool | None:
    """Does this row show a speedup > 1? None when it cannot tell."""
    if row["mark"] in (stats.NO_DATA, stats.NO_BASELINE) or not np.isfinite(row["speedup"]):
        return None
    if row["mark"] == stats.TOO_FEW:
        return row["speedup"] > 1.05
    return row["ci_low"] > 1.0


def precision_speedup(trials: pd.DataFrame) -> pd.DataFrame:
    """One row per cell (without precision), setting and non-float32 precision.

    speedup/ci_low/ci_high: float32 step time over this precision's (geometric mean, t interval);
    baseline_speedup: the same for setting "none"; verdict: keeps the gain | loses most of the gain |
    erases the mixed-precision gain | no gain at baseline | slower than float32 | unknown.
    """
    df = with_keys(trials)
    ok = df[df["status"] == "ok"]
    pairs = _paired(ok, "precision", REFERENCE, [_STEP.column], ["run"] + _KEYS + ["repeat"])
    table = summarize(pairs, _KEYS + ["precision"], [_STEP])
    if table.empty:
        return pd.DataFrame(columns=_KEYS + ["precision", "speedup", "ci_low", "ci_high", "n_repeats", "mark",
                                             "baseline_speedup", "gain_kept_pct", "verdict"])
    # ratio is p/float32 step time; speedup is its inverse (CI bounds swap)
    table = table.rename(columns={"estimate": "ratio"})
    table["speedup"] = 1.0 / table["ratio"]
    lo, hi = 1.0 / table["ci_high"], 1.0 / table["ci_low"]
    table["ci_low"], table["ci_high"] = lo, hi
    table["mark"] = table["mark"].replace({stats.NO_BASELINE: stats.NO_DATA})
    key = [k for k in _KEYS if k != "setting"] + ["precision"]
    base = table[table["setting"] == BASELINE].set_index(key)
    joined = table.join(base[["speedup", "ci_low", "mark"]].rename(
        columns={"speedup": "baseline_speedup", "ci_low": "baseline_ci_low", "mark": "baseline_mark"}), on=key)
    verdicts, kept = [], []
    for row in joined.itertuples(index=False):
        r = row._asdict()
        own = _gain(r)
        base_row = {"speedup": r["baseline_speedup"], "ci_low": r["baseline_ci_low"], "mark": r["baseline_mark"]}
        base_gain = _gain(base_row) if isinstance(r["baseline_mark"], str) else None
        b, s = r["baseline_speedup"], r["speedup"]
        kept.append((s - 1.0) / (b - 1.0) * 100.0 if np.isfinite(b) and b > 1.0 and np.isfinite(s) else np.nan)
        if own is None:
            verdicts.append(UNKNOWN)
        elif r["setting"] == BASELINE:
            verdicts.append(KEEPS if own else (SLOWER if s < 1.0 and r["ci_high"] < 1.0 else NO_GAIN))
        elif base_gain is None:
            verdicts.append(UNKNOWN)
        elif not base_gain:
            verdicts.append(NO_GAIN)
        elif not own:
            verdicts.append(ERASES)
        elif s - 1.0 < 0.5 * (b - 1.0):
            verdicts.append(LOSES_MOST)
        else:
            verdicts.append(KEEPS)
    joined["gain_kept_pct"] = kept
    joined["verdict"] = verdicts
    cols = _KEYS + ["precision", "speedup", "ci_low", "ci_high", "n_repeats", "mark", "baseline_speedup",
                    "gain_kept_pct", "verdict"]
    return joined[cols].reset_index(drop=True)


def format_speedup(r) -> str:
    """'1.65x [1.60, 1.70]' with the same marks as format_estimate."""
    if not np.isfinite(r["speedup"]):
        return r["mark"]
    s = f"{r['speedup']:.2f}x"
    if r["mark"] == stats.TOO_FEW:
        return s + " (too few repeats)"
    return s + f" [{r['ci_low']:.2f}, {r['ci_high']:.2f}]" + (" ~noise" if r["mark"] == stats.NOISE else "")
