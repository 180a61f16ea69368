"""Step-time overheads from paired sessions, with intervals whose coverage is checked by
simulation on the run's own noise.

The estimates live beside the session, where the run's adaptive sessions read them too: the ratio
rule in bench/units/session.py (per round, each setting's block against the median of the three baseline
instances' blocks), the table in bench/session_estimates.py (a session's estimate is the median
over its rounds; a setting's overhead the mean over sessions, with a Student t interval over
sessions; the A/A control, second baseline instance over the first, is the noise floor). They are
imported here, so analysis reads `paired.estimates`, `paired.noise_lines`, ... as before.

`simulated_coverage` re-draws sessions from the run's own residuals (heavy tails and outlier
blocks included) plus a between-session shift of the measured size, and counts how often the
nominal 95% interval covers the truth at the suite's sessions x rounds.
"""
from __future__ import annotations

import numpy as np

from bench import stats
from bench.units.session import round_log_ratios  # noqa: F401
from bench.session_estimates import (AA_LABEL, COLUMNS, CONFIDENCE, GROUP_KEYS, SAME_STEP_NOTE,  # noqa: F401
                                     UNSTABLE_AA_PCT, UNSTABLE_HALF_WIDTH_PCT, estimates, noise_floor,
                                     noise_lines, session_records, session_table, wide_groups)


def simulated_coverage(sessions: list[dict], n_sessions: int | None = None, rounds: int | None = None,
                       n_sim: int = 2000, seed: int = 0) -> dict:
    """Coverage of the nominal interval, simulated with this run's own noise.

    Residuals: every round's log ratio minus its session's median, pooled over settings and groups
    (so heavy tails and 2x outlier blocks are kept as observed). Between-session shifts: normal
    with the observed between-session sd beyond what the rounds explain (at least 0). Each
    simulated cell draws `n_sessions` sessions of `rounds` rounds around a known truth and builds
    the same interval; coverage is the share of cells whose interval contains the truth."""
    table = session_table(sessions)
    if table.empty:
        return {"nominal": CONFIDENCE, "simulated": None, "reason": "no ok sessions"}
    table = table[~table["same_as_aa"]]
    resid = np.concatenate([L - np.median(L) for L in table["log_ratios"]])
    n_sessions = n_sessions or int(table.groupby(["group_id", "setting"]).size().median())
    rounds = rounds or int(table["rounds"].median())
    rng = np.random.default_rng(seed)
    # between-session sd beyond what within-session noise explains
    within_var = float(np.var(np.median(rng.choice(resid, size=(2000, rounds)), axis=1)))
    by_cell = table.groupby(["group_id", "setting"])["median_log_ratio"]
    observed_var = float(np.nanmean(by_cell.var(ddof=1))) if (by_cell.size() > 1).any() else 0.0
    sigma_b = float(np.sqrt(max(0.0, observed_var - within_var)))
    if n_sessions < 2:
        return {"nominal": CONFIDENCE, "simulated": None, "sessions": n_sessions, "rounds": rounds,
                "reason": "one session per cell: no interval"}
    draws = rng.choice(resid, size=(n_sim, n_sessions, rounds)) + rng.normal(0.0, sigma_b, (n_sim, n_sessions, 1))
    m = np.median(draws, axis=2)  # truth is 0
    low, high = stats.t_interval(m.mean(axis=1), m.std(axis=1, ddof=1), n_sessions)
    covered = (low <= 0) & (0 <= high)
    return {"nominal": CONFIDENCE, "simulated": float(covered.mean()), "sessions": n_sessions, "rounds": rounds,
            "between_session_sd": sigma_b, "residual_sd": float(np.std(resid)),
            "outlier_share": float(np.mean(np.abs(resid) > np.log(1.5))), "n_sim": n_sim}
