"""A trial that exhausts its memory is a result: a `failed` record whose reason starts with OOM,
while the sweep goes on. The limit is real: REGBENCH_TRIAL_MEMORY_LIMIT_BYTES caps each trial
process's address space (RLIMIT_AS) beyond what it had mapped when it started."""
from __future__ import annotations

import json
import pathlib

import pytest

from tests.conftest import regbench

SUITE = """
name: oom
workloads:
  - {name: synthetic_cnn, max_train_samples: 600000, model: {width: 8}}
  - {name: digits_mlp, max_train_samples: 512}
regularizers: [none]
precisions: [float32]
batch_sizes: [32]
repeats: 1
epochs: 2
isolation: cpu
cpus_per_trial: 1
timeout_s: 300
max_retries: 1
paired: false
"""


@pytest.mark.slow
@pytest.mark.parametrize("start", ["zygote", "interpreter"])
def test_trial_out_of_memory_is_a_failed_record_and_the_sweep_goes_on(tmp_path, start):
    path = tmp_path / "oom.yaml"
    path.write_text(SUITE)
    proc = regbench("run", "--suite", path, "--executor", "process", "--out", tmp_path / "out", "--no-report",
                    "--trial-start", start, env={"REGBENCH_TRIAL_MEMORY_LIMIT_BYTES": str(1_500_000_000)},
                    timeout=600)
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    run_dir = pathlib.Path(proc.stdout.strip().splitlines()[-1])
    recs = {r["trial"]["workload"]: r for r in (json.loads(p.read_text()) for p in (run_dir / "trials").glob("*.json"))}
    big, small = recs["synthetic_cnn"], recs["digits_mlp"]
    assert big["status"] == "failed" and big["reason"].startswith("OOM"), big["reason"]
    assert big["process"]["memory_limit_bytes"] == 1_500_000_000
    assert small["status"] == "ok", small["reason"]
    assert json.loads((run_dir / "manifest.json").read_text())["status"] == "complete"
