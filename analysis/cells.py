"""What a cell is: the keys two trials must share to be compared, and the baseline's setting.

A cell is one workload at one precision, batch size, backend, device model, budget, thread cap,
trial start method and float32 matmul policy; its settings (the baseline, "none", and each
regularizer) are compared within it. The overhead table (analysis/overheads.py), the host-bound
flags (analysis/flags.py), the speedups and the cross-group comparisons all key on these.
"""
from __future__ import annotations

import pandas as pd

BASELINE = "none"

# What must match for two trials to be compared ("budget" columns are optional in trial files).
CELL_KEYS = ["workload", "precision", "batch_size", "backend", "device_name", "epochs", "learning_rate",
             "steps_per_epoch", "max_train_samples", "cpu_threads", "start_method", "float32_matmul"]
PAIR_KEYS = ["run"] + CELL_KEYS + ["repeat"]


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
