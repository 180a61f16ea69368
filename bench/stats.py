"""Confidence intervals for many small samples at once: Student t intervals of the mean.

Why not the bootstrap: with the 3-5 repeats a suite affords, percentile and BCa bootstrap
intervals are too narrow (about 85% real coverage at n=5, worse at n=3), while the t interval is
exact for normal data and close for log ratios of step times. `tests/test_analysis.py` checks
the coverage by simulation at the repeat counts the suites use.

Every interval here and in analysis is `t_interval`. It lives in bench because the run's adaptive
sessions (bench/plan.py) decide on the session intervals; analysis imports it (analysis/stats.py).
"""
from __future__ import annotations

import numpy as np
from scipy import stats as _scipy_stats

CONFIDENCE = 0.95
MIN_REPEATS_FOR_CI = 2
"""Fewer values than this: no interval."""

# Marks, shared by tables and plots.
SIGNIFICANT = "significant"
NOISE = "noise"  # CI includes the null value (1 for ratios, 0 for deltas)
TOO_FEW = "too few repeats"
NO_BASELINE = "no baseline"
NO_DATA = "no data"


def t_interval(center, sd, n, *, confidence: float = CONFIDENCE, df=None):
    """(low, high): `center` -+ t(df) * sd / sqrt(n), the Student t interval of a mean of n values
    with sample sd (df = n - 1 unless given: the Welch difference passes its own df, its standard
    error as sd and n=1). Element-wise over arrays."""
    half = _scipy_stats.t.ppf(0.5 + confidence / 2, n - 1 if df is None else df) * sd / np.sqrt(n)
    return center - half, center + half


def mean_ci(samples: list, *, confidence: float = CONFIDENCE, min_n: int = MIN_REPEATS_FOR_CI) -> np.ndarray:
    """Mean and Student t interval of each sample.

    samples: list of 1-D arrays (NaNs are dropped). Returns an array of shape (len(samples), 4):
    mean, ci_low, ci_high, n. The interval is NaN where n < min_n; a constant sample's interval
    is the value itself.
    """
    out = np.full((len(samples), 4), np.nan)
    for i, s in enumerate(samples):
        a = np.asarray(s, dtype=float)
        a = a[np.isfinite(a)]
        out[i, 3] = a.size
        if not a.size:
            continue
        out[i, 0] = a.mean()
        if a.size >= max(2, min_n):
            out[i, 1], out[i, 2] = t_interval(out[i, 0], a.std(ddof=1), a.size, confidence=confidence)
    return out


def log_mean_ci(samples: list, *, confidence: float = CONFIDENCE, min_n: int = MIN_REPEATS_FOR_CI) -> np.ndarray:
    """Geometric mean and interval of each sample of a positive quantity (throughput, memory, time):
    `mean_ci` of the logs, exponentiated, so the interval is never negative and a ratio's interval is
    symmetric in log. Values <= 0 or NaN are dropped. Same shape as mean_ci: mean, ci_low, ci_high, n."""
    logs = [np.log(a[a > 0]) for a in (np.asarray(s, dtype=float) for s in samples)]
    out = mean_ci(logs, confidence=confidence, min_n=min_n)
    out[:, :3] = np.exp(out[:, :3])
    return out


def mark(n: float, low: float, high: float, null_value: float, min_n: int = MIN_REPEATS_FOR_CI) -> str:
    """Classify an estimate: significant, noise (CI includes null_value), too few repeats, no data."""
    if not n or np.isnan(n):
        return NO_DATA
    if n < min_n or np.isnan(low) or np.isnan(high):
        return TOO_FEW
    return NOISE if low <= null_value <= high else SIGNIFICANT


def marks(n, low, high, null_value: float, min_n: int = MIN_REPEATS_FOR_CI) -> np.ndarray:
    """Vectorized `mark` over arrays."""
    n, low, high = (np.asarray(x, dtype=float) for x in (n, low, high))
    out = np.where(low <= null_value, np.where(high >= null_value, NOISE, SIGNIFICANT), SIGNIFICANT).astype(object)
    out[np.isnan(low) | np.isnan(high) | (n < min_n)] = TOO_FEW
    out[np.isnan(n) | (n == 0)] = NO_DATA
    return out


def diff_ci(a, b, *, confidence: float = CONFIDENCE, min_n: int = MIN_REPEATS_FOR_CI) -> tuple[float, float, float, int]:
    """Difference of means b - a of two independent samples with a Welch t interval (unequal
    variances, Welch-Satterthwaite degrees of freedom): (estimate, ci_low, ci_high, min(n_a, n_b)).

    The bounds are NaN when either sample has fewer than min_n values; two constant samples give
    the difference itself as both bounds."""
    a, b = (np.asarray(x, dtype=float) for x in (a, b))
    a, b = a[np.isfinite(a)], b[np.isfinite(b)]
    n = int(min(a.size, b.size))
    if not n:
        return np.nan, np.nan, np.nan, n
    est = float(b.mean() - a.mean())
    if n < max(2, min_n):
        return est, np.nan, np.nan, n
    va, vb = a.var(ddof=1) / a.size, b.var(ddof=1) / b.size
    se = float(np.sqrt(va + vb))
    if se == 0:
        return est, est, est, n
    df = (va + vb) ** 2 / (va ** 2 / (a.size - 1) + vb ** 2 / (b.size - 1))
    low, high = t_interval(est, se, 1, confidence=confidence, df=df)
    return est, float(low), float(high), n
