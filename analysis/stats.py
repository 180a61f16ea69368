"""The intervals and marks of analysis' tables: bench/stats.py (Student t intervals, one
`t_interval` for all of them), shared with the run's adaptive sessions, imported here."""
from bench.stats import (CONFIDENCE, MIN_REPEATS_FOR_CI, NO_BASELINE, NO_DATA, NOISE, SIGNIFICANT,  # noqa: F401
                         TOO_FEW, diff_ci, log_mean_ci, mark, marks, mean_ci, t_interval)
