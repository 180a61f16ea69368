"""Do two back-to-back runs of the default suite agree? (issue: numbers that reproduce)

    python -m tests.benchmarks.reproducibility [--suite quick] [--executor ray] [--runs 2] [--json FILE]
    python -m tests.benchmarks.reproducibility --compare RUN_A RUN_B      # two existing runs

Runs `regbench run --suite S` (as `make run` does) `--runs` times back to back, then compares the
step-time overhead estimates of every (cell, setting) the runs share:

  max_abs_diff_pts / median_abs_diff_pts  |estimate of run 2 - estimate of run 1|, percentage points
  median_half_width_pts                   median 95% CI half-width over the estimates of each run
  wall_s                                  each run's wall time (`regbench run`, report included)
  measured_share                          share of trial-slot time (each trial process, launch to
                                          exit) spent inside measured steady-state windows
  noise floor                             each run's A/A control (analysis/paired.py)
  chance_within_pts                       what the runs' own intervals predict: the chance that two
                                          runs with this much noise agree within 3 (and 5) points on
                                          every shared estimate, if nothing but that noise differed
                                          (each estimate's standard error from its t interval; the
                                          estimates taken as independent)
  baseline step time                      median over each run's sessions of the baseline model's
                                          step time, per precision: how fast the machine ran. When it
                                          moves between the runs, the machine's state moved, and the
                                          heavier settings' overheads can move with it.
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import subprocess
import sys
import time

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[2]


def run_suite(suite: str, executor: str, out: pathlib.Path) -> tuple[pathlib.Path, float]:
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": os.environ.get("CUDA_VISIBLE_DEVICES", "")}
    t = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "bench.cli", "run", "--suite", suite, "--executor", executor,
                           "--out", str(out)], cwd=ROOT, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t
    if proc.returncode:
        raise SystemExit(f"regbench run failed:\n{proc.stderr[-3000:]}")
    return pathlib.Path(proc.stdout.strip().splitlines()[-1]), wall


def step_time_table(run_dir: pathlib.Path):
    import analysis

    data = analysis.load(run_dir, warn=False)
    table = analysis.overhead(data.trials, "step_time", sessions=data.sessions)
    return table[table["metric"] == "step_time"], data


def measured_share(run_dir: pathlib.Path) -> dict:
    slot_s = measured_s = 0.0
    for kind, key in (("trials", "steady_state_s"), ("sessions", "measured_s")):
        for path in (run_dir / kind).glob("*.json"):
            rec = json.loads(path.read_text())
            proc = rec.get("process") or {}
            if rec.get("status") != "ok" or not proc.get("launched_unix"):
                continue
            slot_s += proc["finished_unix"] - proc["launched_unix"]
            measured_s += (rec.get("timing") or {}).get(key) or 0.0
    return {"slot_s": round(slot_s, 1), "measured_s": round(measured_s, 1),
            "measured_share": round(measured_s / slot_s, 3) if slot_s else None}


def baseline_step_ms(sessions) -> dict:
    """precision -> median over the ok sessions (RunData.sessions) of the baseline model's step time (ms)."""
    ok = sessions[sessions["status"] == "ok"]
    return {k: round(1e3 * float(v.median()), 3) for k, v in ok.groupby("precision")["baseline_step_time_s"]}


def standard_error_pts(table) -> "np.ndarray":
    """Each estimate's standard error in percentage points, from its 95% t interval over sessions."""
    from scipy import stats

    df = np.maximum(table["n_repeats"].to_numpy(dtype=float) - 1, 1)
    return (table["ci_high_pct"] - table["ci_low_pct"]).to_numpy(dtype=float) / (2 * stats.t.ppf(0.975, df))


def chance_within(se_a: "np.ndarray", se_b: "np.ndarray", pts: float) -> float:
    """P(every |run 2 - run 1| <= pts) when both runs measure the same truths with these errors."""
    from scipy import stats

    sd = np.sqrt(np.asarray(se_a) ** 2 + np.asarray(se_b) ** 2)
    return float(np.prod(2 * stats.norm.cdf(pts / sd) - 1))


def compare(runs: list[pathlib.Path], walls: list[float | None]) -> dict:
    from analysis import paired

    tables, out = [], {"runs": [str(r) for r in runs]}
    keys = ["workload", "precision", "batch_size", "backend", "setting"]
    for run, wall in zip(runs, walls):
        table, data = step_time_table(run)
        tables.append(table.set_index(keys))
        half = (table["ci_high_pct"] - table["ci_low_pct"]) / 2
        out.setdefault("per_run", []).append({
            "run": run.name, "wall_s": None if wall is None else round(wall, 1), "estimates": int(len(table)),
            "methods": sorted(set(table["method"])), "median_half_width_pts": round(float(np.nanmedian(half)), 2),
            **measured_share(run), "baseline_step_time_ms": baseline_step_ms(data.sessions),
            "noise_floor": paired.noise_lines(paired.estimates(data.sessions))})
    a, b = tables[0], tables[1]
    common = a.index.intersection(b.index)
    diff = (b.loc[common, "change_pct"] - a.loc[common, "change_pct"]).abs()
    first, second = (r["baseline_step_time_ms"] for r in out["per_run"])
    out["baseline_step_time_change_pct"] = {k: round(100 * (second[k] / first[k] - 1), 1) for k in first if k in second}
    se_a, se_b = standard_error_pts(a.loc[common]), standard_error_pts(b.loc[common])
    out["chance_within_pts"] = {str(pts): round(chance_within(se_a, se_b, pts), 3) for pts in (3, 5)}
    out["shared_estimates"] = int(len(common))
    out["max_abs_diff_pts"] = round(float(diff.max()), 2)
    out["median_abs_diff_pts"] = round(float(diff.median()), 2)
    out["rows"] = [{"cell": " ".join(map(str, k)), "run1_pct": round(float(a.loc[k, "change_pct"]), 2),
                    "run2_pct": round(float(b.loc[k, "change_pct"]), 2),
                    "half_width_run1": round(float((a.loc[k, "ci_high_pct"] - a.loc[k, "ci_low_pct"]) / 2), 2),
                    "half_width_run2": round(float((b.loc[k, "ci_high_pct"] - b.loc[k, "ci_low_pct"]) / 2), 2),
                    "abs_diff_pts": round(float(diff.loc[k]), 2)} for k in common]
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tests.benchmarks.reproducibility", description=__doc__.splitlines()[0])
    ap.add_argument("--suite", default="quick")
    ap.add_argument("--executor", default="ray", choices=("ray", "process"))
    ap.add_argument("--runs", type=int, default=2)
    ap.add_argument("--out", default=str(ROOT / "results"))
    ap.add_argument("--compare", nargs=2, metavar="RUN", help="compare two existing runs instead of running")
    ap.add_argument("--json", metavar="FILE")
    args = ap.parse_args(argv)
    if args.compare:
        runs, walls = [pathlib.Path(p) for p in args.compare], [None, None]
    else:
        runs, walls = [], []
        for i in range(args.runs):
            run, wall = run_suite(args.suite, args.executor, pathlib.Path(args.out))
            print(f"run {i + 1}: {run} in {wall:.0f} s", file=sys.stderr, flush=True)
            runs.append(run)
            walls.append(wall)
    result = compare(runs[:2], walls[:2])
    for r in result["per_run"]:
        print(f"{r['run']}: wall {r['wall_s']} s, {r['estimates']} step-time estimates ({', '.join(r['methods'])}), "
              f"median 95% CI half-width {r['median_half_width_pts']} points, measured share {r['measured_share']} "
              f"({r['measured_s']} of {r['slot_s']} slot-s)")
        for line in r["noise_floor"]:
            print(f"  noise floor: {line}")
        print("  baseline step time: " + ", ".join(f"{k} {v:.3f} ms" for k, v in r["baseline_step_time_ms"].items()))
    print("baseline step time, run 2 vs run 1: " + ", ".join(
        f"{k} {v:+.1f}%" for k, v in result["baseline_step_time_change_pct"].items()))
    print(f"{result['shared_estimates']} shared estimates: max |diff| {result['max_abs_diff_pts']} points, "
          f"median |diff| {result['median_abs_diff_pts']} points")
    print("what the runs' own intervals predict, with nothing but that noise between them: every |diff| within "
          + ", ".join(f"{k} points {v:.0%}" for k, v in result["chance_within_pts"].items()))
    for row in sorted(result["rows"], key=lambda r: -r["abs_diff_pts"]):
        print(f"  {row['cell']:<62} {row['run1_pct']:+7.2f} (+-{row['half_width_run1']:.2f})  "
              f"{row['run2_pct']:+7.2f} (+-{row['half_width_run2']:.2f})  |diff| {row['abs_diff_pts']:.2f}")
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
