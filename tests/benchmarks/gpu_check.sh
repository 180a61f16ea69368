#!/usr/bin/env bash
# GPU check on a lent GPU machine (torch, jax, nvidia-ml-py; no TensorFlow, Keras, Ray, network).
#
# Installs the carried keras/namex/optree wheels into /tmp/site, then runs the GPU check suite
# (tests/benchmarks/gpu_check.yaml: the gpu suite's transformer and synthetic CNN at the gpu suite's
# sizes, none/dropout x bf16/float32) with the process executor on each backend, torch first (no
# XLA compiles: its results land soonest), then the sync test, then jax. Each backend gets an equal
# share of what is left of the budget, so neither can starve the other; a backend cut short by its
# share is stopped with SIGINT and leaves an `interrupted` run whose finished trials are intact
# (`regbench run --resume` finishes it later). Each run directory is packed into one tar.gz under
# $OUT (the device returns at most 8 files, at most 2 folders deep). Without a GPU (NVML sees none)
# the script runs its CPU fallback, tests/benchmarks/gpu_check_cpu.yaml: the same code path on
# CPU-sized models, which is how the per-trial cost of the path is measured on a development machine.
# summary.txt gives, per backend, the trials finished within its share and the per-trial cost
# (median trial wall time, and launch to record).
#
# Before the call, once, on the development machine (repo root; /.whl/ is git-ignored):
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
#     --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl keras==3.15.1 namex==0.1.0 optree==0.20.0
#
# The device call (the `run` tool), verbatim:
#   carry:     [".whl"]
#   command:   GPUCHECK_COMMIT=<git rev-parse HEAD> bash tests/benchmarks/gpu_check.sh
#   timeout_s: 480
# It ends inside one 8-minute command (GPUCHECK_DEADLINE_S=450 s from its start), which leaves a
# 15-minute device lease room to start the machine (1-2 min) and to run it once more:
#   set-up and preflight (wheels, imports, `regbench env`)            <= 30 s
#   the suite runs: GPUCHECK_BUDGET_S = 300 s, torch then jax          300 s
#     (each its share of what is left; cut short by SIGINT, which keeps every finished trial)
#   stopping each backend at its share (SIGINT, then SIGKILL after 20 s) <= 2 x 20 s
#   the sync test, only if it fits before the deadline                 <= 60 s
#   summary and packing                                                <= 15 s
#   total                                                              <= 445 s < 450 s < 480 s
# The suite runs its cells pairs first (order: pairs): none and dropout of each workload in
# mixed_bfloat16, then float32, so a backend cut short by its share still holds whole pairs.
# Files come back under <files_at>/gpucheck/: log.txt, env.json, summary.txt, sync.txt,
# run-torch.tar.gz, run-jax.tar.gz. The script exits 5 and suggests no results/reference/ folder
# when no backend landed an ok pair (a baseline and a regularized trial of one cell, both ok);
# otherwise it ends by printing the exact commands that commit each backend's run with its report.
#
# Knobs (environment): GPUCHECK_BACKENDS ("torch jax"), GPUCHECK_SUITE (gpu_check.yaml with a GPU,
# gpu_check_cpu.yaml without; a name or YAML file), GPUCHECK_BUDGET_S (300: seconds for all suite
# runs together), GPUCHECK_DEADLINE_S (450: the whole script), GPUCHECK_MIN_S (60: do not start a
# backend with a smaller share), GPUCHECK_SYNC (1: run tests/test_sync.py after the first backend),
# GPUCHECK_SYNC_S (60), GPUCHECK_SITE (/tmp/site), GPUCHECK_WHEELS (.whl; "skip" uses the Keras
# already importable), PYTHON (python3), GPUCHECK_COMMIT (the commit the tree was sent from: the
# copy there has no .git; goes in the manifest).
# Tested on the CPU: tests/test_backends.py runs the fallback end to end through this script.
set -uo pipefail
cd "$(dirname "$0")/../.."
start=$(date +%s)
OUT=${OUT:-/tmp/regbench-gpucheck}
PY=${PYTHON:-python3}
BACKENDS=${GPUCHECK_BACKENDS:-torch jax}
BUDGET_S=${GPUCHECK_BUDGET_S:-300}
DEADLINE_S=${GPUCHECK_DEADLINE_S:-450}
SYNC_S=${GPUCHECK_SYNC_S:-60}
MIN_S=${GPUCHECK_MIN_S:-60}
SITE=${GPUCHECK_SITE:-/tmp/site}
WHEELS=${GPUCHECK_WHEELS:-.whl}
DEST="$OUT/gpucheck"
RUNS=$(mktemp -d "${TMPDIR:-/tmp}/regbench-gpucheck-runs.XXXXXX")
mkdir -p "$DEST"
exec > >(tee -a "$DEST/log.txt") 2>&1
export PYTHONUNBUFFERED=1
elapsed() { echo $(( $(date +%s) - start )); }
say() { echo "[gpucheck $(elapsed)s] $*"; }

# 1. Keras and its two pure-Python-ish dependencies the image lacks, from the carried wheels.
if [ "$WHEELS" != "skip" ]; then
  if ! ls "$WHEELS"/keras-*.whl >/dev/null 2>&1; then
    say "no keras wheel under $WHEELS/: download them first (see the top of this script) and carry .whl"; exit 3
  fi
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" \
    --find-links "$WHEELS" keras namex optree || { say "wheel install failed"; exit 3; }
  export PYTHONPATH="$PWD:$SITE${PYTHONPATH:+:$PYTHONPATH}"
else
  export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi

# 2. What is here: versions, GPU, and that regbench imports without TensorFlow and Ray.
# Keras defaults to TensorFlow when KERAS_BACKEND is unset: the preflight names the first backend.
KERAS_BACKEND=${BACKENDS%% *} "$PY" - <<'EOF' || { say "preflight failed"; exit 4; }
import importlib, importlib.util
for name in ("keras", "jax", "torch", "numpy", "pynvml", "pandas", "pyarrow", "yaml", "sklearn", "tensorflow", "ray"):
    if importlib.util.find_spec(name) is None:
        print(f"  {name:<10} absent")
    elif name in ("tensorflow", "ray"):
        print(f"  {name:<10} present (not needed)")
    else:
        print(f"  {name:<10} {getattr(importlib.import_module(name), '__version__', '?')}")
import bench.cli, bench.executors.local, bench.runner, bench.workloads  # noqa: F401  the process-executor path
EOF
"$PY" -m bench.cli env --json > "$DEST/env.json" 2>>"$DEST/log.txt" || say "regbench env failed"
nvidia-smi --query-gpu=name,memory.total,driver_version,power.limit,clocks.max.sm --format=csv 2>/dev/null || say "no nvidia-smi"
folder=$("$PY" - "$DEST/env.json" <<'EOF'
import json, sys
try:
    fp = json.load(open(sys.argv[1]))
except Exception:
    fp = {}
from bench.env import accelerator_type
g = (fp.get("gpus") or [None])[0]
print((accelerator_type(g["name"]) if g else "cpu").lower())
EOF
)
echo "device: $folder" > "$DEST/summary.txt"
if [ -n "${GPUCHECK_SUITE:-}" ]; then
  SUITE=$GPUCHECK_SUITE
elif [ "$folder" = cpu ]; then
  SUITE=tests/benchmarks/gpu_check_cpu.yaml; say "no GPU: the CPU fallback suite"
else
  SUITE=tests/benchmarks/gpu_check.yaml
fi
echo "suite: $SUITE, budget ${BUDGET_S}s, backends in order: $BACKENDS" >> "$DEST/summary.txt"

# 3. The suite on each backend, each with an equal share of what is left of the budget (the sync
#    test's time is not part of it); the sync test after the first backend, if it fits.
first=1
suite_s=0
installed=""
for backend in $BACKENDS; do  # a backend that is not installed takes no share
  if "$PY" -c "import $backend" 2>/dev/null; then
    installed="$installed $backend"
  else
    say "skip $backend: not installed"; echo "$backend: not installed" >> "$DEST/summary.txt"
  fi
done
remaining=$(echo $installed | wc -w)
for backend in $installed; do
  left=$(( BUDGET_S - suite_s ))
  share=$(( left / remaining ))
  to_deadline=$(( DEADLINE_S - $(elapsed) - 20 - 15 ))  # its stop, and the summary
  [ "$share" -gt "$to_deadline" ] && share=$to_deadline
  remaining=$(( remaining - 1 ))
  if [ "$share" -lt "$MIN_S" ]; then
    say "skip $backend: a ${share}s share of the ${left}s left of the ${BUDGET_S}s budget"
    echo "$backend: not run (budget)" >> "$DEST/summary.txt"; continue
  fi
  say "run suite $SUITE on $backend (a ${share}s share)"
  t_backend=$(date +%s)
  # SIGINT first: the CLI marks the run interrupted and keeps every finished trial.
  timeout --signal=INT --kill-after=20 "$share" "$PY" -m bench.cli run --suite "$SUITE" --backend "$backend" \
    --executor process --out "$RUNS/$backend" --no-report
  rc=$?
  suite_s=$(( suite_s + $(date +%s) - t_backend ))
  run_dir=$(ls -d "$RUNS/$backend"/*/ 2>/dev/null | head -1)
  if [ -n "$run_dir" ]; then
    GPUCHECK_COMMIT=${GPUCHECK_COMMIT:-} "$PY" - "$run_dir" <<'EOF' || say "could not record the commit"
import os, pathlib, sys
from bench.store import RunStore
store = RunStore.open(pathlib.Path(sys.argv[1]))
if os.environ["GPUCHECK_COMMIT"] and not store.manifest().get("git_commit"):
    store.update_manifest(git_commit=os.environ["GPUCHECK_COMMIT"])
EOF
    tar czf "$DEST/run-$backend.tar.gz" -C "$run_dir" .
    "$PY" - "$run_dir" "$backend" "$rc" "$folder" "$share" >> "$DEST/summary.txt" <<'EOF'
import json, pathlib, statistics, sys
run, backend, rc, folder, share = pathlib.Path(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5])
m = json.loads((run / "manifest.json").read_text())
recs = [json.loads(p.read_text()) for p in sorted((run / "trials").glob("*.json"))]
count = {}
for r in recs:
    count[r["status"]] = count.get(r["status"], 0) + 1
ok = {}
for r in recs:
    if r["status"] == "ok":
        t = r["trial"]
        ok.setdefault((t["workload"], t["precision"], t["batch_size"]), set()).add(t["setting"])
pairs = [(k, s) for k, settings in ok.items() if "none" in settings for s in sorted(settings - {"none"})]
print(f"{backend}: exit {rc}, run {m['run_id']} {m['status']}, {len(recs)}/{len(m['trial_ids'])} trials {count}, "
      f"{len(pairs)} ok pair(s)" + (f" -> results/reference/{folder}-{backend}/" if pairs else ": nothing to commit"))
for (w, p, b), s in pairs:
    print(f"  pair: {w} {p} batch {b}: none + {s}")
ran = [r for r in recs if r["status"] != "skipped" and r.get("wall_s")]
if ran:
    wall = statistics.median(r["wall_s"] for r in ran)
    launched = [r["process"]["finished_unix"] - r["process"]["launched_unix"] for r in ran
                if (r.get("process") or {}).get("launched_unix") and r["process"].get("finished_unix")]
    start = statistics.median(launched) if launched else float("nan")
    print(f"  per-trial cost: median {wall:.1f} s in the trial, {start:.1f} s launch to record; "
          f"{len(ran)} trials finished within a {share} s share")
for r in recs:
    t, e, mem = r.get("timing") or {}, r.get("energy") or {}, r.get("memory") or {}
    fmt = lambda v, f, scale=1: format(v / scale, f) if isinstance(v, (int, float)) else "-"
    print(f"  {r['trial']['workload']:<14} {r['trial']['setting']:<28} {r['trial']['precision']:<15} {r['status']:<8} "
          f"p50 {fmt(t.get('step_time_p50_s'), '.4f')}s  {fmt(t.get('samples_per_s'), '.0f')}/s  "
          f"free {fmt(t.get('free_running_step_s'), '.4f')}s  jit {t.get('jit_compile')}  "
          f"peak {fmt(mem.get('device_peak_bytes'), '.0f', 2**20)}MiB  util {fmt(e.get('steady_gpu_util_mean'), '.0f')}%  "
          f"{fmt(e.get('steady_energy_j'), '.1f')}J ({e.get('energy_source') or '-'})  {(r.get('reason') or '')[:80]}")
EOF
  else
    echo "$backend: exit $rc, no run directory" >> "$DEST/summary.txt"
  fi
  if [ "$first" = 1 ] && [ "${GPUCHECK_SYNC:-1}" = 1 ]; then
    first=0
    if [ $(( DEADLINE_S - $(elapsed) - SYNC_S - 15 )) -lt $(( (BUDGET_S - suite_s) )) ]; then
      say "sync test skipped: it does not fit before the ${DEADLINE_S}s deadline with the next backend's share"
      echo "sync test: not run (deadline)" >> "$DEST/summary.txt"
    else
      say "sync test"
      REGBENCH_SYNC_LOG="$DEST/sync.txt" timeout --kill-after=5 "$SYNC_S" "$PY" -m pytest -q -p no:cacheprovider \
        tests/test_sync.py >> "$DEST/sync.txt" 2>&1
      echo "sync test: exit $? ($(tail -1 "$DEST/sync.txt"))" >> "$DEST/summary.txt"
    fi
  fi
done
rm -rf "$RUNS"
say "done"
cat "$DEST/summary.txt"
# 4. The verdict: commit commands for each backend that landed a pair, or a non-zero exit.
landed=$(grep -o -- '-> results/reference/[^/]*/' "$DEST/summary.txt" | sed 's|-> ||; s|/$||')
if [ -z "$landed" ]; then
  say "no ok pair landed on any backend: nothing to commit under results/reference/ (see log.txt)"
  exit 5
fi
echo
echo "To commit, on the development machine in the repository root (FILES_AT: the run tool's files_at):"
for ref in $landed; do
  backend=${ref##*-}
  echo "  mkdir -p $ref && tar xzf \"\$FILES_AT/gpucheck/run-$backend.tar.gz\" -C $ref"
  echo "  .venv/bin/regbench report $ref"
  echo "  git add $ref && git commit -m \"GPU check reference: ${ref#results/reference/}\""
done
