"""tests/benchmarks/reproducibility.py: the chance two runs agree, predicted from their intervals."""
import numpy as np
import pandas as pd
from scipy import stats

from tests.benchmarks.reproducibility import chance_within, standard_error_pts


def test_standard_error_comes_back_from_the_t_interval():
    se = np.array([0.5, 1.0, 2.0])
    n = np.array([3, 6, 12])
    half = se * stats.t.ppf(0.975, n - 1)
    table = pd.DataFrame({"n_repeats": n, "ci_low_pct": 10 - half, "ci_high_pct": 10 + half})
    assert np.allclose(standard_error_pts(table), se)


def test_predicted_chance_matches_simulated_pairs_of_runs():
    """Defect caught: a product over estimates that is not one (max instead of all), the two runs'
    errors not added in quadrature, or a one-sided probability."""
    se_a = np.linspace(0.4, 1.6, 22)
    se_b = se_a[::-1].copy()
    assert abs(chance_within(np.array([1.0]), np.array([0.0]), 1.959964) - 0.95) < 1e-6
    rng = np.random.default_rng(0)
    truth = rng.normal(20, 10, size=22)
    run_a = truth + rng.normal(0, se_a, size=(20000, 22))
    run_b = truth + rng.normal(0, se_b, size=(20000, 22))
    for pts in (3.0, 5.0):
        simulated = float(np.mean(np.all(np.abs(run_b - run_a) <= pts, axis=1)))
        assert abs(chance_within(se_a, se_b, pts) - simulated) < 0.01, (pts, simulated)
