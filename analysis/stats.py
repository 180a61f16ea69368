"""Bootstrap confidence intervals for many small samples at once (scipy.stats.bootstrap).

Samples of equal size are stacked and bootstrapped in one vectorized call, so ten thousand
cells cost a handful of scipy calls, not ten thousand.
"""
from __future__ import annotations

import warnings

import numpy as np
from scipy import stats as _scipy_stats

CONFIDENCE = 0.95
MIN_REPEATS_FOR_CI = 3
"""Fewer paired repeats than this: no CI (a bootstrap of 1 or 2 values says nothing about noise)."""
N_RESAMPLES = 1999  # Efron & Tibshirani: 1000-2000 resamples suffice for 95% percentile-type CIs
_MAX_ELEMENTS_PER_BATCH = 4_000_000  # bounds memory: cells x resamples x n floats in one go

# Marks, shared by tables and plots.
SIGNIFICANT = "significant"
NOISE = "noise"  # CI includes the null value (1 for ratios, 0 for deltas)
TOO_FEW = "too few repeats"
NO_BASELINE = "no baseline"
NO_DATA = "no data"


def mean_ci(samples: list, *, confidence: float = CONFIDENCE, n_resamples: int = N_RESAMPLES,
            seed: int = 0, min_n: int = MIN_REPEATS_FOR_CI) -> np.ndarray:
    """Mean and bootstrap CI (BCa, percentile where BCa is undefined) of each sample.

    samples: list of 1-D arrays (NaNs are dropped). Returns an array of shape (len(samples), 4):
    mean, ci_low, ci_high, n. The CI is NaN where n < min_n.
    """
    out = np.full((len(samples), 4), np.nan)
    by_n: dict[int, list[int]] = {}
    cleaned = []
    for i, s in enumerate(samples):
        a = np.asarray(s, dtype=float)
        a = a[np.isfinite(a)]
        cleaned.append(a)
        out[i, 3] = a.size
        if a.size:
            out[i, 0] = a.mean()
        if a.size >= min_n:
            by_n.setdefault(a.size, []).append(i)
    rng = np.random.default_rng(seed)
    for n, rows in by_n.items():
        data = np.stack([cleaned[i] for i in rows])
        lo, hi = _bootstrap_rows(data, confidence, n_resamples, rng)
        out[rows, 1] = lo
        out[rows, 2] = hi
    return out


def _bootstrap_rows(data: np.ndarray, confidence: float, n_resamples: int, rng) -> tuple[np.ndarray, np.ndarray]:
    """CI of the mean of each row of `data` (cells x n)."""
    constant = np.ptp(data, axis=1) == 0
    lo = data[:, 0].copy()
    hi = data[:, 0].copy()
    varying = ~constant
    if varying.any():
        d = data[varying]
        batch = max(1, min(n_resamples, _MAX_ELEMENTS_PER_BATCH // max(1, d.size)))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # DegenerateDataWarning: handled below
            res = _scipy_stats.bootstrap((d,), np.mean, axis=-1, vectorized=True, confidence_level=confidence,
                                         n_resamples=n_resamples, batch=batch, method="BCa", rng=rng)
            low, high = np.atleast_1d(res.confidence_interval.low), np.atleast_1d(res.confidence_interval.high)
            bad = ~(np.isfinite(low) & np.isfinite(high))
            if bad.any():  # BCa undefined (e.g. two distinct values): fall back to percentile
                res2 = _scipy_stats.bootstrap((d[bad],), np.mean, axis=-1, vectorized=True,
                                              confidence_level=confidence, n_resamples=n_resamples, batch=batch,
                                              method="percentile", rng=rng)
                low[bad] = res2.confidence_interval.low
                high[bad] = res2.confidence_interval.high
        lo[varying] = low
        hi[varying] = high
    return lo, hi


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
