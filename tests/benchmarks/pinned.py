"""Run a benchmark's child script in a fresh TensorFlow process pinned to one core (as a trial's slot is)."""
from __future__ import annotations

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
LAST_CORE = (os.cpu_count() or 1) - 1


def run_pinned(code: str, args: list, core: int):
    """Run `python -c code *args` on `core` with the repository importable; return the JSON on the
    last line of its stdout (exit with its stderr tail if it fails)."""
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "KERAS_BACKEND": "tensorflow", "TF_CPP_MIN_LOG_LEVEL": "3",
           "PYTHONPATH": ROOT}
    proc = subprocess.run(["taskset", "-c", str(core), sys.executable, "-c", code, *map(str, args)], env=env,
                          capture_output=True, text=True, cwd=ROOT)
    if proc.returncode:
        raise SystemExit(proc.stderr[-2000:])
    return json.loads(proc.stdout.strip().splitlines()[-1])
