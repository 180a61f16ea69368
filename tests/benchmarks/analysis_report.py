"""Benchmark the analysis: `python -m tests.benchmarks.analysis_report --trials 10000`.

Generates a synthetic run of N trial files (several devices, 10-epoch curves) in a temp directory,
then, in a fresh child process, times analysis.load, overhead, precision speedup and
report.write_report, and reports wall times and the child's peak RSS.
"""
from __future__ import annotations

import argparse
import json
import math
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SETTINGS = {"none": (1.0, 1.0, 0.0), "l1": (1.1, 1.0, 0.005), "l2": (1.2, 1.0, 0.01), "l1l2": (1.25, 1.0, 0.01),
            "elastic_net": (1.25, 1.0, 0.012), "dropout": (1.05, 1.02, 0.02), "early_stopping": (1.1, 1.0, 0.0),
            "augment": (1.8, 1.1, 0.03), "batch_norm": (1.5, 1.3, 0.03), "dropout+batch_norm": (1.55, 1.3, 0.035)}
PRECISIONS = {"float32": 1.0, "mixed_bfloat16": 0.6}
WORKLOADS = ("digits_mlp", "fashion_cnn", "cifar_resnet", "synthetic_mlp", "synthetic_cnn")
DEVICES = ("Intel(R) Xeon(R) Platinum 8480+ CPU @ 2.00GHz", "NVIDIA H100 80GB HBM3", "NVIDIA H200",
           "NVIDIA A100-SXM4-40GB", "AMD EPYC 9654 96-Core Processor")
BATCHES = (64, 256)  # 5 workloads x 10 settings x 2 precisions x 5 devices x 2 batches = 1000 trials per repeat


def generate(out: Path, trials: int) -> Path:
    from tests.fixtures import synthetic_runs as synthetic

    per_repeat = len(SETTINGS) * len(PRECISIONS) * len(WORKLOADS) * len(DEVICES) * len(BATCHES)
    repeats = max(1, math.ceil(trials / per_repeat))
    return synthetic.write_run(out / "bench-run", workloads=WORKLOADS, settings=SETTINGS, precisions=PRECISIONS,
                               repeats=repeats, device_name=DEVICES, batch_sizes=BATCHES, epochs=10)


def measure(run_dir: Path) -> dict:
    """Time each phase in this process (wall and CPU seconds), then the whole report; return the figures."""
    import analysis
    from analysis import plots, report

    figures = {}

    def timed(name, fn, *args):
        w, c = time.perf_counter(), time.process_time()
        result = fn(*args)
        figures[f"{name} wall_s"] = time.perf_counter() - w
        figures[f"{name} cpu_s"] = time.process_time() - c
        return result

    data = timed("load", analysis.load, run_dir)
    table = timed("overhead", analysis.overhead, data.trials)
    speedup = timed("precision_speedup", analysis.precision_speedup, data.trials)
    timed("plots (5 figures to PNG)", lambda: [plots.to_png(f) for _, _, f in report.figures(table, speedup,
                                                                                             data.curves)])
    timed("write_report (all of it again: load, stats, plots, CSV, HTML)", report.write_report, run_dir)
    usage = resource.getrusage(resource.RUSAGE_SELF)
    figures["trials"] = len(data.trials)
    figures["curve_rows"] = len(data.curves)
    figures["peak_rss_mib"] = usage.ru_maxrss / 1024
    return figures


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=10000)
    ap.add_argument("--keep", help="generate into this directory and keep it")
    ap.add_argument("--measure", help=argparse.SUPPRESS)  # child process mode
    args = ap.parse_args(argv)
    if args.measure:
        print(json.dumps(measure(Path(args.measure))))
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(args.keep or tmp)
        t0 = time.perf_counter()
        run_dir = generate(base, args.trials)
        n = len(list((run_dir / "trials").iterdir()))
        print(f"generated {n} trial files in {time.perf_counter() - t0:.1f} s: {run_dir}", file=sys.stderr)
        t0 = time.perf_counter()
        child = subprocess.run([sys.executable, "-m", "tests.benchmarks.analysis_report", "--measure", str(run_dir)],
                               capture_output=True, text=True)
        wall = time.perf_counter() - t0
        if child.returncode:
            sys.stderr.write(child.stderr)
            return child.returncode
        figures = json.loads(child.stdout.strip().splitlines()[-1])
        figures["child_process_wall_s (imports + load + overhead + precision + report)"] = round(wall, 2)
        for k, v in figures.items():
            print(f"{k:>70}: {v:.2f}" if isinstance(v, float) else f"{k:>70}: {v}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
