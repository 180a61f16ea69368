#!/usr/bin/env bash
# GPU check on a lent GPU machine (torch, jax, nvidia-ml-py; no TensorFlow, Keras, Ray, network).
#
# Installs the carried keras/namex/optree wheels into /tmp/site, runs the `gpu` suite with the
# process executor on the jax backend, then the sync test on the GPU, then torch while time is
# left, and packs each run directory into one tar.gz under $OUT (the device returns at most 8
# files, at most 2 folders deep). A backend cut short by the budget leaves an `interrupted` run
# whose finished trials are intact (`regbench run --resume` finishes it later).
#
# Before the call, once, on the development machine (repo root; /.whl/ is git-ignored):
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
#     --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl keras==3.15.1 namex==0.1.0 optree==0.20.0
#
# The device call (the `run` tool), verbatim:
#   carry:     [".whl"]
#   command:   GPUCHECK_COMMIT=<git rev-parse HEAD> bash tests/benchmarks/gpu_check.sh
#   timeout_s: 580
# Worst case 10 s set-up + 330 s budget (+20 s to stop) + 150 s sync test; about 1-2 min more to
# start the machine: under 11 of the 15 device minutes.
# Files come back under <files_at>/gpucheck/: log.txt, env.json, summary.txt, sync.txt,
# run-jax.tar.gz, run-torch.tar.gz. Commit a run as the reference:
#   mkdir -p results/reference/h200-jax && tar xzf <files_at>/gpucheck/run-jax.tar.gz -C results/reference/h200-jax
# (summary.txt names the folder, from the GPU model).
#
# Knobs (environment): GPUCHECK_BACKENDS ("jax torch"), GPUCHECK_SUITE (gpu; a name or YAML file),
# GPUCHECK_BUDGET_S (330: seconds for all suite runs together), GPUCHECK_MIN_S (60: do not start a
# backend with less left), GPUCHECK_SYNC (1: run tests/test_sync.py between backends), GPUCHECK_SITE
# (/tmp/site), GPUCHECK_WHEELS (.whl; "skip" uses the Keras already importable), PYTHON (python3),
# GPUCHECK_COMMIT (the commit the tree was sent from: the copy there has no .git; goes in manifest).
# Tested on the CPU: tests/test_backends.py::test_gpu_check_script_on_cpu forces a CPU suite.
set -uo pipefail
cd "$(dirname "$0")/../.."
start=$(date +%s)
OUT=${OUT:-/tmp/regbench-gpucheck}
PY=${PYTHON:-python3}
BACKENDS=${GPUCHECK_BACKENDS:-jax torch}
SUITE=${GPUCHECK_SUITE:-gpu}
BUDGET_S=${GPUCHECK_BUDGET_S:-330}
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

# 3. The suite on each backend, within the budget; the sync test after the first backend.
first=1
for backend in $BACKENDS; do
  left=$(( BUDGET_S - $(elapsed) ))
  if [ "$left" -lt "$MIN_S" ]; then
    say "skip $backend: ${left}s left of the ${BUDGET_S}s budget"; echo "$backend: not run (budget)" >> "$DEST/summary.txt"; continue
  fi
  if ! "$PY" -c "import $backend" 2>/dev/null; then
    say "skip $backend: not installed"; echo "$backend: not installed" >> "$DEST/summary.txt"; continue
  fi
  say "run suite $SUITE on $backend (up to ${left}s)"
  # SIGINT first: the CLI marks the run interrupted and keeps every finished trial.
  timeout --signal=INT --kill-after=20 "$left" "$PY" -m bench.cli run --suite "$SUITE" --backend "$backend" \
    --executor process --out "$RUNS/$backend" --no-report
  rc=$?
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
    "$PY" - "$run_dir" "$backend" "$rc" "$folder" >> "$DEST/summary.txt" <<'EOF'
import json, pathlib, sys
run, backend, rc, folder = pathlib.Path(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
m = json.loads((run / "manifest.json").read_text())
recs = [json.loads(p.read_text()) for p in sorted((run / "trials").glob("*.json"))]
count = {}
for r in recs:
    count[r["status"]] = count.get(r["status"], 0) + 1
print(f"{backend}: exit {rc}, run {m['run_id']} {m['status']}, {len(recs)}/{len(m['trial_ids'])} trials {count}"
      f" -> results/reference/{folder}-{backend}/")
for r in recs:
    t, e, mem = r.get("timing") or {}, r.get("energy") or {}, r.get("memory") or {}
    fmt = lambda v, f, scale=1: format(v / scale, f) if isinstance(v, (int, float)) else "-"
    print(f"  {r['trial']['workload']:<14} {r['trial']['setting']:<28} {r['trial']['precision']:<15} {r['status']:<8} "
          f"p50 {fmt(t.get('step_time_p50_s'), '.4f')}s  {fmt(t.get('samples_per_s'), '.0f')}/s  "
          f"jit {t.get('jit_compile')}  peak {fmt(mem.get('device_peak_bytes'), '.0f', 2**20)}MiB  "
          f"util {fmt(e.get('gpu_util_mean'), '.0f')}%  {fmt(e.get('energy_j'), '.1f')}J  {(r.get('reason') or '')[:80]}")
EOF
  else
    echo "$backend: exit $rc, no run directory" >> "$DEST/summary.txt"
  fi
  if [ "$first" = 1 ] && [ "${GPUCHECK_SYNC:-1}" = 1 ]; then
    first=0
    say "sync test"
    REGBENCH_SYNC_LOG="$DEST/sync.txt" timeout --kill-after=10 150 "$PY" -m pytest -q -p no:cacheprovider \
      tests/test_sync.py >> "$DEST/sync.txt" 2>&1
    echo "sync test: exit $? ($(tail -1 "$DEST/sync.txt"))" >> "$DEST/summary.txt"
  fi
done
rm -rf "$RUNS"
say "done"
cat "$DEST/summary.txt"
