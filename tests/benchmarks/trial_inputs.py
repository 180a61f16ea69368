"""What a trial's 10-epoch `fit` costs with Keras' array adapter vs bench.inputs.trial_inputs.

    python -m tests.benchmarks.trial_inputs [--pairs 4] [--epochs 10] [--core 1]

One child process pinned to one core (as a trial's slot is) builds the digits MLP afresh for each
fit and alternates the two feeds, `--pairs` times each, in a seeded random order within each pair:
arrays through Keras' adapter with array validation data (what trials used), and
trial_inputs' tf.data pipelines built once (what they use now). Prints per feed the median fit
wall time, training time after the first step, validation time, steady-state median step time and
per-epoch overhead, and the ratio of the medians (tf.data over arrays) from this one run.
The steady-state step time must not move; the rest is time a trial spends outside its measured window.
TensorFlow backend only (trial_inputs changes nothing on the others).
"""
from __future__ import annotations

import argparse
import sys

from tests.benchmarks.pinned import LAST_CORE, run_pinned

CHILD = r"""
import json, sys, time
import numpy as np
import tensorflow as tf
tf.config.threading.set_intra_op_parallelism_threads(1)
tf.config.threading.set_inter_op_parallelism_threads(1)
from bench.inputs import fit_inputs, trial_inputs, validation_data
from bench.measure.timing import StepTimer
from bench.regularizers import Recipe
from bench.runner import build_model, load_data
from bench.trial import Trial
from bench.workloads import WORKLOADS

pairs, epochs = int(sys.argv[1]), int(sys.argv[2])
trial = Trial(workload="digits_mlp", regularizers=(), precision="float32", batch_size=64, cpu_threads=1, seed=1)
data, x, y = load_data(trial, WORKLOADS["digits_mlp"], Recipe())
rng = np.random.default_rng(0)
out = []
for _ in range(pairs):
    for feed in rng.permutation(["arrays", "trial_inputs"]):
        model = build_model(trial, WORKLOADS["digits_mlp"], Recipe(), data)
        if feed == "arrays":
            kw = dict(**fit_inputs(Recipe(), x, y, 64, data.kind, 1)[0], validation_data=(data.x_val, data.y_val))
        else:
            train, val, _ = trial_inputs(Recipe(), x, y, data.x_val, data.y_val, 64, data.kind, 1)
            kw = dict(**train, validation_data=validation_data(val))
        timer = StepTimer()
        t0 = time.perf_counter()
        model.fit(**kw, epochs=epochs, verbose=0, callbacks=[timer])
        wall = time.perf_counter() - t0
        r = timer.result(64)
        out.append({"feed": str(feed), "fit_wall_s": wall, "train_s": r["train_s"], "validation_s": r["validation_s"],
                    "step_time_p50_s": r["step_time_p50_s"], "per_epoch_overhead_s": r["per_epoch_overhead_s"]})
print(json.dumps(out))
"""

FIELDS = ("fit_wall_s", "train_s", "validation_s", "step_time_p50_s", "per_epoch_overhead_s")


def median(values):
    v = sorted(values)
    return (v[(len(v) - 1) // 2] + v[len(v) // 2]) / 2


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tests.benchmarks.trial_inputs", description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", type=int, default=4)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--core", type=int, default=LAST_CORE)
    args = ap.parse_args(argv)
    fits = run_pinned(CHILD, [args.pairs, args.epochs], args.core)
    med = {feed: {k: median([f[k] for f in fits if f["feed"] == feed]) for k in FIELDS}
           for feed in ("arrays", "trial_inputs")}
    print(f"{'median of ' + str(args.pairs) + ' fits':<22}" + "".join(f"{k:>22}" for k in FIELDS))
    for feed, m in med.items():
        print(f"{feed:<22}" + "".join(f"{m[k] * 1e3:>19.2f} ms" for k in FIELDS))
    print(f"{'ratio (tf.data/arrays)':<22}" + "".join(
        f"{med['trial_inputs'][k] / med['arrays'][k]:>22.3f}" if med["arrays"][k] else f"{'-':>22}" for k in FIELDS))
    return 0


if __name__ == "__main__":
    sys.exit(main())
