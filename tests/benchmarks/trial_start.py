"""Per-trial fixed cost of the trial process: zygote fork vs a fresh interpreter, in one run.

    python -m tests.benchmarks.trial_start [--suites smoke quick] [--executor process] [--json FILE]

For each suite (its trials; paired sessions left out) it runs `regbench run` with `--trial-start interpreter` (the old path: a new
Python that imports TensorFlow and Keras per trial) and `--trial-start zygote`, alternating, and
reads the trial records:

  start_to_first_step_s  per trial: executor launches the process -> first training step begins
                         (interpreter start, imports, data, build, compile: everything before
                         the first step), median and mean (the mean includes the zygote's one
                         preload per run, amortized)
  fixed_s                per trial: start_to_first_step minus data_s and build_s, i.e. the cost
                         of getting a process ready to load data (the issue's "<= 0.5 s" figure)
  record_to_next_s       per slot: record written -> next trial launched on that slot (median)
  run_wall_s             the whole `regbench run` (including Ray start when --executor ray)
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[2]


def trials_only(suite: str, folder: pathlib.Path) -> pathlib.Path:
    """The built-in suite as a file without paired sessions: this benchmark is about trial processes."""
    import yaml

    from bench import suite as suite_mod, yamlfile

    data = yamlfile.load_mapping(suite_mod.resolve_path(suite), "suite fields")
    path = folder / f"{suite}.yaml"
    path.write_text(yaml.safe_dump({**data, "paired": False}))
    return path


def run_suite(suite: str, method: str, executor: str, out: pathlib.Path) -> tuple[pathlib.Path, float]:
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "RAY_ADDRESS": "local"}
    suite = str(trials_only(suite, out.parent))
    t = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "bench.cli", "run", "--suite", suite, "--executor", executor,
                           "--trial-start", method, "--out", str(out), "--no-report"],
                          cwd=ROOT, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t
    if proc.returncode:
        raise SystemExit(f"regbench run failed ({suite}, {method}):\n{proc.stderr[-2000:]}")
    return pathlib.Path(proc.stdout.strip().splitlines()[-1]), wall


def figures(run_dir: pathlib.Path) -> dict:
    recs = [json.loads(p.read_text()) for p in (run_dir / "trials").glob("*.json")]
    ran = [r for r in recs if r["status"] == "ok" and r.get("process", {}).get("launched_unix")]
    start = [r["process"]["first_step_unix"] - r["process"]["launched_unix"] for r in ran]
    fixed = [s - r["timing"]["data_s"] - r["timing"]["build_s"] for s, r in zip(start, ran)]
    methods = sorted({r["process"]["start_method"] for r in ran})
    gaps, by_slot = [], {}
    for r in ran:
        slot = tuple(r["process"].get("cpu_cores") or [r["node"].get("ray", {}).get("worker_pid")])
        by_slot.setdefault(slot, []).append(r["process"])
    for procs in by_slot.values():
        procs.sort(key=lambda p: p["launched_unix"])
        gaps += [b["launched_unix"] - a["finished_unix"] for a, b in zip(procs, procs[1:])]
    return {"trials": len(recs), "ran": len(ran), "start_methods": methods,
            "start_to_first_step_s_median": round(statistics.median(start), 3),
            "start_to_first_step_s_mean": round(statistics.mean(start), 3),
            "fixed_s_median": round(statistics.median(fixed), 3), "fixed_s_mean": round(statistics.mean(fixed), 3),
            "record_to_next_s_median": round(statistics.median(gaps), 3) if gaps else None}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tests.benchmarks.trial_start", description=__doc__.splitlines()[0])
    ap.add_argument("--suites", nargs="+", default=["smoke", "quick"])
    ap.add_argument("--executor", default="process", choices=("process", "ray"))
    ap.add_argument("--json", metavar="FILE")
    args = ap.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory(prefix="regbench-trial-start-") as tmp:
        for suite in args.suites:
            for method in ("interpreter", "zygote"):
                run_dir, wall = run_suite(suite, method, args.executor, pathlib.Path(tmp) / f"{suite}-{method}")
                row = {"suite": suite, "method": method, "executor": args.executor, "run_wall_s": round(wall, 1),
                       **figures(run_dir)}
                rows.append(row)
                print("  ".join(f"{k}={v}" for k, v in row.items()), flush=True)
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
