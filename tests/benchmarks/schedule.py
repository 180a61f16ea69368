"""Scheduling benchmark of the Ray executor: makespan vs the ideal, and the fixed cost per trial.

    python -m tests.benchmarks.schedule                     # local Ray + simulated 2-node cluster + micro
    python -m tests.benchmarks.schedule --mode local --trials 8 --epochs 12 --json out.json

For each mode it runs N real trials (digits MLP, float32, CPU, one CPU each) through
`bench.executors.ray.run_ray` on an already connected Ray (ray.init is timed apart: it is paid once
per run, not per trial) and reports:

  slots            trials that can run at once (CPU slots of the cluster / cpus_per_trial)
  makespan_s       first submission -> last record written
  efficiency       sum(trial process wall) / slots / makespan: the share of slot time spent inside
                   trial processes (the scheduler's efficiency; 1.0 = no gaps between trials)
  efficiency_run_trial  the same with run_trial's own wall_s (excludes interpreter start and
                   module imports before run_trial; TensorFlow's import is inside run_trial)
  sched_fixed_s    per trial: slot time outside trial processes (Ray dispatch, lease, result
                   return, store write, the tail where fewer trials than slots are left, and the
                   run's own start and end amortized over its trials)
  gap_per_trial_s  the same between the first trial's start and the last trial's end only
  run_startup_s    once per run: run_ray called -> first trial starts (feasibility check, node
                   fingerprint, submission); run_teardown_s: last trial ends -> run_ray returns
  process_fixed_s  per trial: trial process wall - run_trial wall (python start, bench imports,
                   record write; interpreter teardown is skipped with os._exit)
  tf_import_s      median `import tensorflow, keras` in a fresh interpreter (inside run_trial)

`--micro` compares the two ways of getting a fresh process per trial on Ray with empty trials:
a reused Ray worker that starts a plain `python` per trial (what the executor does) vs a
`max_calls=1` Ray task (a new Ray worker per trial).
"""
from __future__ import annotations

import argparse
import io
import json
import os
import pathlib
import statistics
import subprocess
import sys
import tempfile
import time

REGULARIZERS = ["none", "l2", "dropout", "l1"]


def make_suite(trials: int, epochs: int):
    from bench.suite import parse

    repeats = max(1, -(-trials // len(REGULARIZERS)))
    raw = {"name": "bench_schedule", "workloads": ["digits_mlp"], "regularizers": REGULARIZERS,
           "precisions": ["float32"], "batch_sizes": [32], "repeats": repeats, "epochs": epochs,
           "isolation": "cpu", "device": "cpu", "cpus_per_trial": 1, "timeout_s": 900, "max_retries": 1}
    suite = parse(raw, "bench_schedule")
    return suite, list(suite.trials)[:trials]


def run_once(suite, trials, slots: int, label: str) -> dict:
    """Run the trials through run_ray on the current Ray connection; summarize."""
    from bench.progress import Progress
    from bench.executors.ray import run_ray
    from bench.store import RunStore

    with tempfile.TemporaryDirectory(prefix="regbench-bench-") as tmp:
        store = RunStore.create(pathlib.Path(tmp), suite.resolved, [t.trial_id for t in trials])
        progress = Progress(len(trials), stream=io.StringIO(), live=False)
        t0 = time.time()
        run_ray(trials, store, suite, progress)
        t_end = time.time()
        makespan = t_end - t0
        records = store.records()
    bad = [r for r in records if r["status"] != "ok"]
    if bad:
        raise SystemExit(f"{label}: {len(bad)} trials did not succeed: {bad[0].get('reason')}")
    process = [r["node"]["ray"]["process_s"] for r in records]
    wall = [r["wall_s"] for r in records]
    n = len(records)
    first_start = min(r["node"]["ray"]["t_start"] for r in records)
    last_end = max(r["node"]["ray"]["t_end"] for r in records)
    steady = last_end - first_start
    return {
        "mode": label, "trials": n, "slots": slots, "nodes": len({r["node"]["ray"]["node_id"] for r in records}),
        "makespan_s": round(makespan, 2),
        "trial_process_s_mean": round(statistics.mean(process), 2),
        "run_trial_wall_s_mean": round(statistics.mean(wall), 2),
        "ideal_s": round(sum(process) / slots, 2),
        "efficiency": round(sum(process) / slots / makespan, 3),
        "efficiency_run_trial": round(sum(wall) / slots / makespan, 3),
        "sched_fixed_s": round((makespan * slots - sum(process)) / n, 3),
        # once per run: run_ray start -> first trial starts, last trial ends -> run_ray returns
        "run_startup_s": round(first_start - t0, 2), "run_teardown_s": round(t_end - last_end, 2),
        # per trial between the first start and the last end: slot time outside trial processes
        "gap_per_trial_s": round((steady * slots - sum(process)) / n, 3),
        "process_fixed_s": round(statistics.mean(p - w for p, w in zip(process, wall)), 3),
        "train_s_mean": round(statistics.mean(r["timing"].get("train_s") or 0 for r in records), 2),
    }


def cpu_slots() -> int:
    import ray

    return int(ray.cluster_resources().get("CPU", 1))


def bench_local(trials: int, epochs: int) -> dict:
    import ray

    from bench.executors.ray.connect import connect

    os.environ["RAY_ADDRESS"] = "local"
    t = time.time()
    connect()
    init_s = time.time() - t
    try:
        suite, todo = make_suite(trials, epochs)
        result = run_once(suite, todo, cpu_slots(), "local")
    finally:
        ray.shutdown()
    result["ray_init_s"] = round(init_s, 2)
    return result


def bench_cluster(trials: int, epochs: int, nodes: int) -> dict:
    import ray
    from ray.cluster_utils import Cluster

    os.environ.pop("RAY_ADDRESS", None)
    t = time.time()
    cluster = Cluster(initialize_head=True, connect=False, head_node_args={"num_cpus": 0, "include_dashboard": False})
    for _ in range(nodes):
        cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, log_to_driver=False)
    init_s = time.time() - t
    try:
        suite, todo = make_suite(trials, epochs)
        result = run_once(suite, todo, cpu_slots(), f"cluster_utils {nodes} nodes x 1 CPU")
    finally:
        ray.shutdown()
        cluster.shutdown()
    result["ray_init_s"] = round(init_s, 2)
    return result


def _subprocess_task():
    t = time.time()
    subprocess.run([sys.executable, "-c", "pass"], check=True)
    return time.time() - t


def _empty_task():
    return os.getpid()


def bench_micro(tasks: int) -> dict:
    """Per-task fixed cost of a fresh process on Ray: reused worker + subprocess vs max_calls=1."""
    import ray

    os.environ["RAY_ADDRESS"] = "local"
    ray.init(include_dashboard=False, log_to_driver=False)
    try:
        slots = cpu_slots()
        out = {"slots": slots, "tasks": tasks}
        for name, fn, opts in (("reused_worker_plus_subprocess", _subprocess_task, {"max_calls": 0}),
                               ("max_calls_1_worker", _empty_task, {"max_calls": 1})):
            remote = ray.remote(**opts)(fn)
            ray.get([remote.remote() for _ in range(slots)])  # warm the worker pool alike
            t = time.time()
            ray.get([remote.remote() for _ in range(tasks)])
            out[f"{name}_per_task_s"] = round((time.time() - t) * slots / tasks, 3)
    finally:
        ray.shutdown()
    return out


def tf_import_s(repeats: int = 3) -> float:
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS="1", TF_CPP_MIN_LOG_LEVEL="3",
               KERAS_BACKEND="tensorflow")
    code = "import time; t = time.perf_counter(); import tensorflow, keras; print(time.perf_counter() - t)"
    times = [float(subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                                  check=True).stdout.strip().splitlines()[-1]) for _ in range(repeats)]
    return round(statistics.median(times), 2)


def load_average() -> str:
    try:
        return " ".join(f"{x:.1f}" for x in os.getloadavg())
    except OSError:
        return "?"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tests.benchmarks.schedule", description=__doc__.splitlines()[0])
    ap.add_argument("--mode", choices=("local", "cluster", "both"), default="both")
    ap.add_argument("--trials", type=int, default=8, help="trials per mode (default 8)")
    ap.add_argument("--epochs", type=int, default=12, help="epochs per trial; 12 is ~10 s here (default)")
    ap.add_argument("--nodes", type=int, default=2, help="simulated nodes, 1 CPU each (default 2)")
    ap.add_argument("--micro", action=argparse.BooleanOptionalAction, default=True,
                    help="also measure the per-task cost of a fresh process on Ray (default on)")
    ap.add_argument("--json", metavar="FILE", help="write the results as JSON")
    args = ap.parse_args(argv)

    results = {"cpu_count": os.cpu_count(), "load_average_before": load_average(), "runs": []}
    results["tf_import_s"] = tf_import_s()
    if args.mode in ("local", "both"):
        results["runs"].append(bench_local(args.trials, args.epochs))
    if args.mode in ("cluster", "both"):
        results["runs"].append(bench_cluster(args.trials, args.epochs, args.nodes))
    if args.micro:
        results["micro"] = bench_micro(4 * (os.cpu_count() or 2))
    results["load_average_after"] = load_average()

    cols = ("mode", "trials", "slots", "makespan_s", "ideal_s", "efficiency", "efficiency_run_trial",
            "trial_process_s_mean", "run_trial_wall_s_mean", "sched_fixed_s", "gap_per_trial_s", "run_startup_s",
            "run_teardown_s", "process_fixed_s", "ray_init_s")
    print(f"cpus {results['cpu_count']}, load average {results['load_average_before']} -> "
          f"{results['load_average_after']}, import tensorflow+keras {results['tf_import_s']} s (median of 3)")
    for run in results["runs"]:
        print("  ".join(f"{c}={run[c]}" for c in cols))
    if "micro" in results:
        print("fresh process per task on Ray, fixed cost per task: " +
              ", ".join(f"{k}={v}" for k, v in results["micro"].items()))
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
