"""Does a step-time overhead depend on what the machine's other core is doing?

    python -m tests.benchmarks.pipeline_feeds [--processes 2] [--rounds 6] [--core 1] [--neighbor-core 0]

Each of `--processes` fresh TensorFlow processes, pinned to one core as a session's slot is, builds
the digits MLP's baseline (twice: the A/A control), dropout+batch_norm, and input-side
augmentation fed two ways: Keras' enqueuer with 2 threads (what a one-core slot used before) and
Keras' default `workers=1` (what it uses now; bench.inputs.pipeline_workers). Rounds alternate
between two machine states in a seeded random order: quiet, and loaded (a NumPy matmul loop on
`--neighbor-core`, started before the round and stopped after it). Every round times one block of
every model in a random order; each overhead is the median over rounds of a state of its block
against the baseline's.

Prints, per setting, the overhead quiet and loaded and the shift between them, and the baseline's
step time in each state. A setting whose overhead moves with the neighbor's load cannot give two
runs the same figure when the machine's state changes between them, however the run is designed:
the A/A control (true ratio 1) shows what the protocol itself adds.
"""
from __future__ import annotations

import argparse
import json
import sys

import numpy as np

from tests.benchmarks.pinned import LAST_CORE, run_pinned

CHILD = r"""
import json, subprocess, sys, time
import numpy as np
import tensorflow as tf
tf.config.threading.set_intra_op_parallelism_threads(1)
tf.config.threading.set_inter_op_parallelism_threads(1)
from bench.inputs import TransformedBatches, block_inputs
from bench.measure.timing import StepTimer
from bench.regularizers import recipe_for
from bench.runner import build_model, load_data
from bench.trial import Trial
from bench.workloads import WORKLOADS

seed, rounds, neighbor_core = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
NEIGHBOR = "import numpy as np\na = np.random.rand(2000, 2000)\nwhile True:\n    a @ a"
aug = (("augmentation", {"strength": 0.1, "where": "pipeline"}),)
setups = {"baseline": (), "A/A": (), "dropout+batch_norm": (("dropout", {"rate": 0.3}), ("batch_norm", {})),
          "input-side augmentation, enqueuer 2 threads": aug, "input-side augmentation, workers=1": aug}
trial = lambda regs: Trial(workload="digits_mlp", regularizers=regs, precision="float32", batch_size=64,
                           cpu_threads=1, seed=seed)
workload = WORKLOADS["digits_mlp"]
data, x, _ = load_data(trial(()), workload, recipe_for(()))
steps = 300
rows = steps * 64
reps = -(-rows // len(x))
X, Y = np.concatenate([x] * reps)[:rows], np.concatenate([data.y_train[:len(x)]] * reps)[:rows]
models, feeds = {}, {}
for label, regs in setups.items():
    recipe = recipe_for(regs)
    models[label] = build_model(trial(regs), workload, recipe, data)
    if "enqueuer" in label:
        feeds[label] = dict(x=TransformedBatches(recipe, X, Y, 64, data.kind, seed, workers=2))
    else:
        feeds[label] = block_inputs(recipe, X, Y, 64, data.kind, seed, cpu_threads=1)

def block(label):
    timer = StepTimer()
    models[label].fit(**feeds[label], epochs=1, verbose=0, callbacks=[timer])
    return float(np.median([dt for _, _, dt in timer.steps]))

for label in setups:  # trace
    block(label)
rng = np.random.default_rng(seed)
states = ["quiet", "loaded"] * (rounds // 2)
rng.shuffle(states)
step_s = {s: {k: [] for k in setups} for s in ("quiet", "loaded")}
for state in states:
    load = None
    if state == "loaded":
        load = subprocess.Popen(["taskset", "-c", neighbor_core, sys.executable, "-c", NEIGHBOR])
        time.sleep(1.0)
    try:
        for i in rng.permutation(len(setups)):
            label = list(setups)[i]
            step_s[state][label].append(block(label))
    finally:
        if load:
            load.kill()
            load.wait()
print(json.dumps(step_s))
"""


def overheads(step_s: dict) -> dict:
    """label -> overhead in % (median over rounds of the block against the round's baseline block)."""
    base = np.log(step_s["baseline"])
    return {k: float(100 * np.expm1(np.median(np.log(v) - base))) for k, v in step_s.items() if k != "baseline"}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tests.benchmarks.pipeline_feeds", description=__doc__.splitlines()[0])
    ap.add_argument("--processes", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=6, help="rounds per process, half of them loaded")
    ap.add_argument("--core", type=int, default=LAST_CORE)
    ap.add_argument("--neighbor-core", type=int, default=0)
    ap.add_argument("--json", help="also write the per-process figures here")
    args = ap.parse_args(argv)
    if args.core == args.neighbor_core:
        raise SystemExit("pipeline_feeds: --core and --neighbor-core must differ (this machine has "
                         f"{LAST_CORE + 1} cores)")
    results = []  # per process: {state: {label: overhead %}}, and the baseline's step time per state
    for p in range(args.processes):
        step_s = run_pinned(CHILD, [p, args.rounds, args.neighbor_core], args.core)
        results.append(({state: overheads(s) for state, s in step_s.items()},
                        {state: 1e3 * float(np.median(s["baseline"])) for state, s in step_s.items()}))

    def line(label: str, quiet: list, loaded: list, fmt: str, unit: str) -> None:
        cols = [" / ".join(format(x, fmt) for x in v) for v in (quiet, loaded, [b - a for a, b in zip(quiet, loaded)])]
        print(f"{label:46} {cols[0] + unit:>16} {cols[1] + unit:>16} {cols[2]:>16}")

    print(f"{'':46} {'quiet':>16} {'loaded':>16} {'shift':>16}")
    for label in results[0][0]["quiet"]:
        line(label, [o["quiet"][label] for o, _ in results], [o["loaded"][label] for o, _ in results], "+.1f", "%")
    line("baseline step time (ms)", [b["quiet"] for _, b in results], [b["loaded"] for _, b in results], ".3f", "")
    print("(one figure per process; overheads: median over rounds of the block against the baseline's)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump([{"overhead_pct": o, "baseline_step_time_ms": b} for o, b in results], f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
