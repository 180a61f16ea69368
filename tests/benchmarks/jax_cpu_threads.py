"""Does a JAX CPU trial use the threads it asked for? Process CPU time against wall time of the same
compute-bound trial (synthetic CNN, float32, JAX) with cpus_per_trial 1 and 2, started the
executors' way, and which of its threads did the work.

    python -m tests.benchmarks.jax_cpu_threads [--epochs 6] [--width 32]

regbench sets no XLA_FLAGS: a CPU trial process is pinned to `cpus_per_trial` cores
(bench/executors/cores.py) before JAX starts, and XLA sizes its CPU thread pool from the cores the
process may run on. Each trial runs as `python -m bench.executors.child` with the environment
trial_process.trial_environment gives it and the executors' pinning request; this script reads
/proc/<pid>/task/*/stat while it runs. Per run it prints the pinned cores, the recorded environment,
for the fit() window wall seconds, process CPU seconds (every thread) and their ratio
(`cpu_busy_threads`), and the CPU seconds of the busiest threads over the whole process life.
On a machine shared with other work the ratio falls below the cap when the cores are busy
elsewhere; the per-thread split does not depend on that: a 1-core trial has one thread doing the
compute, a 2-core trial two.
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[2]
TICK = os.sysconf("SC_CLK_TCK")


def thread_cpu_s(pid: int) -> dict[str, float]:
    """CPU seconds (user + system) of each thread of `pid`, by 'name/tid'."""
    out = {}
    for task in pathlib.Path(f"/proc/{pid}/task").iterdir():
        try:
            stat = (task / "stat").read_text()
        except OSError:
            continue
        name = stat[stat.index("(") + 1: stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2:].split()
        out[f"{name}/{task.name}"] = (int(fields[11]) + int(fields[12])) / TICK
    return out


def run(cpus: int, epochs: int, width: int, tmp: pathlib.Path) -> dict:
    from bench.executors.trial_process import trial_environment
    from bench.trial import Trial

    trial = Trial(workload="synthetic_cnn", regularizers=(), precision="float32", batch_size=256, backend="jax",
                  epochs=epochs, max_train_samples=2048, cpu_threads=cpus, model={"width": width})
    request, out = tmp / f"c{cpus}.request.json", tmp / f"c{cpus}.out.json"
    request.write_text(json.dumps({"kind": "trial", "unit": trial.to_dict(), "executor": "process", "gpu": False,
                                   "pin_cores": cpus, "core_lock_dir": str(tmp / "cores")}))
    env = trial_environment("jax", cpus, None)
    proc = subprocess.Popen([sys.executable, "-m", "bench.executors.child", str(request), str(out)], cwd=ROOT,
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    threads: dict[str, float] = {}  # the most each thread was seen to have used (threads may end early)
    while proc.poll() is None:
        try:
            for name, cpu_s in thread_cpu_s(proc.pid).items():
                threads[name] = max(cpu_s, threads.get(name, 0.0))
        except OSError:
            pass
        time.sleep(0.2)
    record = json.loads(out.read_text())
    t, p = record["timing"], record["process"]
    busiest = sorted(threads.items(), key=lambda kv: -kv[1])[:5]
    return {"cpus_per_trial": cpus, "status": record["status"], "cpu_cores": p.get("cpu_cores"),
            "cpu_affinity": p["environment"]["cpu_affinity"], "OMP_NUM_THREADS": p["environment"]["OMP_NUM_THREADS"],
            "XLA_FLAGS": p["environment"]["XLA_FLAGS"], "fit_wall_s": round(t["fit_wall_s"], 2),
            "fit_cpu_s": round(t["fit_cpu_s"], 2), "cpu_busy_threads": round(t["cpu_busy_threads"], 2),
            "step_time_p50_s": round(t["step_time_p50_s"], 4),
            "busiest_threads_cpu_s": {k: round(v, 1) for k, v in busiest}}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--width", type=int, default=32)
    args = ap.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    with tempfile.TemporaryDirectory() as tmp:
        for cpus in (1, 2):
            print(json.dumps(run(cpus, args.epochs, args.width, pathlib.Path(tmp))), flush=True)


if __name__ == "__main__":
    main()
