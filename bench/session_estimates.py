"""Step-time overheads from paired session records: the estimates table and what its A/A control
says about the noise. The run plans its adaptive sessions on this table (bench/plan.py) and prints
its noise lines; analysis reports it (analysis/paired.py). The ratio rule is the session's own
(bench/units/session.py `round_log_ratios`, the one function both use).

Per session k and round r, a setting's log ratio L_kr = log(its block's median step time / the
round's reference), the reference being the median of the three baseline instances' blocks of
that round (`round_log_ratios`; sessions recorded before the third instance: the geometric mean
of two). A session's estimate is the median over its rounds (a block hit by a burst of steal time
moves it little). The overhead of a setting is the mean over sessions of those medians, with a
Student t interval over sessions (df = sessions - 1): the spread between fresh processes is part
of the uncertainty, so the interval is honest for a next run, not only for this one. The A/A
control (the second baseline instance over the first, in every session) has a true ratio of
exactly 1: its estimate and interval are the noise floor the run measured.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from bench import stats
from bench.units.session import AA_LABEL, round_log_ratios

SAME_STEP_NOTE = "same training step as the baseline (acts only between epochs): the A/A control"
CONFIDENCE = stats.CONFIDENCE
GROUP_KEYS = ["run", "workload", "precision", "batch_size", "backend", "device_name"]
COLUMNS = GROUP_KEYS + ["group_id", "setting", "cell_id", "n_sessions", "rounds", "estimate", "ci_low", "ci_high",
                        "change_pct", "ci_low_pct", "ci_high_pct", "half_width_pct", "mark",
                        "baseline_step_time_s", "within_sd", "between_sd", "note"]


def session_records(sessions) -> list[dict]:
    """The session records of `sessions`: a list of records, or a table of them in a `record` column
    (analysis' RunData.sessions); None is none."""
    if isinstance(sessions, pd.DataFrame):
        return list(sessions["record"]) if "record" in sessions else []
    return list(sessions or [])


def session_table(sessions) -> pd.DataFrame:
    """One row per ok session record and setting (`sessions`: see session_records): the session's
    median log ratio and its rounds."""
    rows = []
    for rec in session_records(sessions):
        if rec.get("status") != "ok":
            continue
        s, node = rec["session"], rec.get("node") or {}
        aa_row = None
        for label, L in round_log_ratios(rec).items():
            rows.append({"run": rec.get("_run"), "workload": s["workload"], "precision": s["precision"], "batch_size": s["batch_size"],
                         "backend": s["backend"], "device_name": node.get("device_name"),
                         "group_id": s["group_id"], "setting": label, "cell_id": s["cell_ids"].get(label),
                         "session": s["repeat"], "rounds": int(L.size), "median_log_ratio": float(np.median(L)),
                         "within_sd": float(1.4826 * np.median(np.abs(L - np.median(L)))),
                         "baseline_step_time_s": rec["timing"]["baseline_step_time_s"], "log_ratios": L,
                         "same_as_aa": False})
            aa_row = rows[-1] if label == AA_LABEL else aa_row
        for label in s.get("same_step_as_baseline") or []:  # same training step as the baseline: the A/A figure
            rows.append({**aa_row, "setting": label, "cell_id": s["cell_ids"].get(label), "same_as_aa": True})
    return pd.DataFrame(rows)


def estimates(sessions) -> pd.DataFrame:
    """Step-time overhead per cell group and setting (the A/A control included), from session records.

    estimate/ci_low/ci_high are ratios (paired step time over the baseline's); *_pct the same as
    percent changes; half_width_pct is half the interval's width in percentage points. mark:
    significant | noise (the interval includes no change) | too few repeats (one session)."""
    table = session_table(sessions)
    if table.empty:
        return pd.DataFrame(columns=COLUMNS)
    out = []
    for keys, g in table.groupby(GROUP_KEYS + ["group_id", "setting"], sort=True, dropna=False):
        mean, lo, hi, _ = stats.mean_ci([g["median_log_ratio"].to_numpy()])[0]
        est, low, high = np.exp(mean), np.exp(lo), np.exp(hi)
        out.append(dict(zip(GROUP_KEYS + ["group_id", "setting"], keys), cell_id=g["cell_id"].iloc[0],
                        n_sessions=len(g), rounds=int(g["rounds"].sum()), estimate=est, ci_low=low, ci_high=high,
                        change_pct=(est - 1) * 100, ci_low_pct=(low - 1) * 100, ci_high_pct=(high - 1) * 100,
                        half_width_pct=(high - low) / 2 * 100,
                        baseline_step_time_s=float(g["baseline_step_time_s"].median()),
                        within_sd=float(g["within_sd"].median()),
                        between_sd=float(g["median_log_ratio"].std(ddof=1)) if len(g) > 1 else np.nan,
                        note=SAME_STEP_NOTE if g["same_as_aa"].all() else ""))
    df = pd.DataFrame(out)
    df["mark"] = stats.marks(df["n_sessions"], df["ci_low"], df["ci_high"], 1.0, min_n=2)
    return df[COLUMNS]


def wide_groups(table: pd.DataFrame, target_half_width_pct: float) -> list[str]:
    """Group ids where some setting's interval is wider than the target (or has no interval yet)."""
    if table.empty:
        return []
    wide = table[~(table["half_width_pct"] <= target_half_width_pct)]
    return sorted(set(wide["group_id"]))


def noise_floor(table: pd.DataFrame) -> pd.DataFrame:
    """The A/A rows: the step-time 'overhead' of a model identical to the baseline, per group."""
    return table[table["setting"] == AA_LABEL].reset_index(drop=True)


UNSTABLE_AA_PCT = 2.0  # an A/A "overhead" beyond this many points: the machine moved under the run
UNSTABLE_HALF_WIDTH_PCT = 3.0  # an interval wider than this: too noisy for point-level answers


def noise_lines(table: pd.DataFrame, target_half_width_pct: float | None = None) -> list[str]:
    """Per cell group, one line on what the A/A control measured, and a second where the group's
    regularized settings moved between sessions more than the A/A did; each with a pyperf-style
    warning ('the result may be unstable') when it is too far from no change or too wide.

    The second line exists because a machine's state can change the overheads themselves and not
    the A/A: on a busy stretch of a shared VM the heavier models slow down more than the baseline
    (two runs of the quick suite on a 2-core VM: float32 dropout+batch_norm read +29% to +53% and
    +31% to +45% across their sessions, their A/A within 6% of 1), so the A/A stays near 1 while
    every heavy estimate spreads between sessions."""
    limit = target_half_width_pct or UNSTABLE_HALF_WIDTH_PCT
    lines = []
    timed = table[(table["setting"] != AA_LABEL) & (table["note"] != SAME_STEP_NOTE)] if len(table) else table
    for r in noise_floor(table).to_dict("records"):
        where = f"{r['workload']} {r['precision']} b{r['batch_size']} {r['backend']}"
        if not np.isfinite(r["ci_low"]):
            lines.append(f"{where}: A/A {r['change_pct']:+.1f}% from one session (no interval)")
            continue
        text = (f"{where}: A/A step-time ratio {r['change_pct']:+.1f}% [{r['ci_low_pct']:+.1f}, {r['ci_high_pct']:+.1f}] "
                f"({r['n_sessions']} sessions, {r['rounds']} rounds; rounds vary {r['within_sd'] * 100:.1f}% robust sd)")
        unstable = abs(r["change_pct"]) > UNSTABLE_AA_PCT or r["half_width_pct"] > limit
        lines.append(("WARNING: the result may be unstable: " if unstable else "") + text)
        group = timed[timed["group_id"] == r["group_id"]] if len(timed) else timed
        half = float(group["half_width_pct"].median()) if len(group) else np.nan
        if np.isfinite(half) and half > limit:
            lines.append(f"WARNING: the result may be unstable: {where}: the regularized settings' estimates moved "
                         f"between sessions (median 95% CI +-{half:.1f} points over {len(group)} settings, wider than "
                         f"+-{limit:g}; between-session sd {group['between_sd'].median() * 100:.1f}%): the machine's "
                         "speed changed during the run")
    return lines
