"""One fresh process per trial: nothing (dtype policy, RNG, memory peaks) leaks between trials,
whether the trial process is forked from the zygote (the default) or is a new interpreter."""
import json
import pathlib

from tests.conftest import regbench, write_suite


def run(tmp_path, name, start="zygote", **fields):
    suite = write_suite(tmp_path / f"{name}.yaml", epochs=2, cpus_per_trial=2, isolation="node", **fields)
    proc = regbench("run", "--suite", suite, "--executor", "process", "--out", tmp_path / name, "--no-report",
                    "--trial-start", start, check=True)
    run_dir = pathlib.Path(proc.stdout.strip().splitlines()[-1])
    return [json.loads(p.read_text()) for p in sorted((run_dir / "trials").glob("*.json"),
                                                       key=lambda p: json.loads(p.read_text())["started_at"])]


def test_nothing_leaks_from_one_trial_to_the_next(tmp_path):
    # A memory-hungry bf16 trial, then a small one, in one run (one slot: sequential), both forked
    # from one zygote; the small one again alone in a plain fresh interpreter.
    both = run(tmp_path, "both",
               workloads=[{"name": "synthetic_cnn", "max_train_samples": 2048}, "digits_mlp"],
               precisions=["mixed_bfloat16"], regularizers=["none"])
    alone = run(tmp_path, "alone", "interpreter", workloads=["digits_mlp"], precisions=["mixed_bfloat16"],
                regularizers=["none"])
    alone_z = run(tmp_path, "alone_z", workloads=["digits_mlp"], precisions=["mixed_bfloat16"], regularizers=["none"])
    big, small = both
    assert big["trial"]["workload"] == "synthetic_cnn" and small["trial"]["workload"] == "digits_mlp"
    assert big["status"] == small["status"] == alone[0]["status"] == "ok"
    # how each process started: two children of one zygote, and a plain interpreter
    assert big["process"]["start_method"] == small["process"]["start_method"] == "zygote"
    assert big["process"]["parent_pid"] == small["process"]["parent_pid"]
    assert alone[0]["process"]["start_method"] == "interpreter"
    # separate processes, each starting from Keras' default policy
    assert big["process"]["pid"] != small["process"]["pid"]
    assert small["process"]["dtype_policy_at_start"] == alone[0]["process"]["dtype_policy_at_start"] == "float32"
    # the host peak is the small trial's own, over its training window: not inherited from the big
    # trial before it (the same trial alone, forked from a fresh zygote, peaks within 10%)
    assert small["memory"]["host_peak_window"] == "training window"
    assert small["memory"]["host_peak_bytes"] < big["memory"]["host_peak_bytes"]
    assert abs(small["memory"]["host_peak_bytes"] - alone_z[0]["memory"]["host_peak_bytes"]) < 0.1 * alone_z[0]["memory"]["host_peak_bytes"]
    # RNG state: the same trial after another trial, forked, trains exactly as it does alone, fresh
    losses = lambda r: [p["loss"] for p in r["convergence"]["curve"]]  # noqa: E731
    assert losses(small) == losses(alone[0]) == losses(alone_z[0])
    assert small["trial_id"] == alone[0]["trial_id"]
