"""What one short `fit` costs besides its steps: the array adapter vs a paired session's block inputs.

    python -m tests.benchmarks.block_inputs [--steps 200 389 600] [--fits 5] [--core 1]

For each block size, a child process pinned to one core (as a session's slot is) builds the digits
MLP and runs `--fits` one-epoch fits, fed either the arrays through Keras' adapter (what trials
use) or bench.inputs.block_inputs (what sessions use). Prints, per feed and size, the median
per-fit overhead (fit wall time minus the sum of its step intervals) and the median step time:
the overhead is time a session spends outside its measured windows; the step time must not move.
TensorFlow backend only (block_inputs changes nothing on the others).
"""
from __future__ import annotations

import argparse
import sys

from tests.benchmarks.pinned import LAST_CORE, run_pinned

CHILD = r"""
import json, os, sys, time
import numpy as np
import tensorflow as tf
tf.config.threading.set_intra_op_parallelism_threads(1)
tf.config.threading.set_inter_op_parallelism_threads(1)
from bench.inputs import block_inputs, fit_inputs
from bench.measure.timing import StepTimer
from bench.regularizers import Recipe
from bench.runner import build_model, load_data
from bench.trial import Trial
from bench.workloads import WORKLOADS

feed, steps, fits = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
trial = Trial(workload="digits_mlp", regularizers=(), precision="float32", batch_size=64, cpu_threads=1, seed=1)
data, x, _ = load_data(trial, WORKLOADS["digits_mlp"], Recipe())
model = build_model(trial, WORKLOADS["digits_mlp"], Recipe(), data)
rows = steps * 64
reps = -(-rows // len(x))
X, Y = np.concatenate([x] * reps)[:rows], np.concatenate([data.y_train[:len(x)]] * reps)[:rows]
inputs = block_inputs(Recipe(), X, Y, 64, data.kind, 1) if feed == "block_inputs" else fit_inputs(Recipe(), X, Y, 64, data.kind, 1)[0]
out = []
for i in range(fits + 1):  # the first fit traces
    timer = StepTimer()
    t0 = time.perf_counter()
    model.fit(**inputs, epochs=1, verbose=0, callbacks=[timer])
    wall = time.perf_counter() - t0
    dts = np.asarray([dt for _, _, dt in timer.steps])
    if i:
        out.append({"overhead_s": wall - dts.sum(), "step_time_s": float(np.median(dts))})
print(json.dumps(out))
"""


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tests.benchmarks.block_inputs", description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, nargs="+", default=[200, 389, 600])
    ap.add_argument("--fits", type=int, default=5)
    ap.add_argument("--core", type=int, default=LAST_CORE)
    args = ap.parse_args(argv)
    print(f"{'steps':>6} {'feed':<14} {'overhead per fit (median)':>26} {'step time (median)':>20}")
    for steps in args.steps:
        for feed in ("arrays", "block_inputs"):
            fits = run_pinned(CHILD, [feed, steps, args.fits], args.core)
            over = sorted(f["overhead_s"] for f in fits)[len(fits) // 2]
            step = sorted(f["step_time_s"] for f in fits)[len(fits) // 2]
            print(f"{steps:>6} {feed:<14} {over * 1e3:>23.1f} ms {step * 1e3:>17.3f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
