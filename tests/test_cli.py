import json
import pathlib

import numpy as np
import pytest

from tests.conftest import regbench, validate, write_suite


def one_line_error(proc, *needles, progress_lines: int = 0):
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    lines = proc.stderr.strip().splitlines()[progress_lines:]
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert lines[0].startswith("regbench: error: "), lines[0]
    for n in needles:
        assert n in lines[0], lines[0]
    return lines[0]


def test_smoke_run_meets_the_trial_file_contract(smoke_run):
    proc = validate(smoke_run)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.strip().splitlines() == [
        f"{smoke_run}: valid run {smoke_run.name}: 6 trial files for 6 planned trials (3 ok, 3 skipped); "
        "manifest status complete"]
    manifest = json.loads((smoke_run / "manifest.json").read_text())
    assert manifest["status"] == "complete" and manifest["nodes"]
    records = [json.loads(p.read_text()) for p in (smoke_run / "trials").glob("*.json")]
    assert len(records) == len(manifest["trial_ids"]) == 6
    assert len({r["trial"]["setting"] for r in records if r["status"] == "ok"}) == 3
    statuses = {(r["trial"]["precision"], r["status"]) for r in records}
    assert statuses == {("float32", "ok"), ("mixed_float16", "skipped")}  # no fp16 on a CPU without XLA
    for r in (r for r in records if r["status"] == "ok"):
        t = r["timing"]
        assert t["steady_state_steps"] == 42 and t["jit_compile"] is False  # 2 epochs x (22 - 1) steps
        assert 0 < t["step_time_p50_s"] <= t["step_time_p95_s"]
        assert r["memory"]["device_peak_bytes"] is None and r["memory"]["null_reasons"]["device_peak_bytes"]
        e = r["energy"]
        assert e["energy_j"] is None and e["mean_power_w"] is None and e["energy_per_sample_j"] is None, e
        reason = e["null_reasons"]["energy_j"]  # a CPU trial: CUDA hidden (GPU host) or no NVML at all
        assert reason == "CUDA_VISIBLE_DEVICES is empty: this trial runs on the CPU" or \
            reason.startswith("NVML unavailable ("), reason
        assert r["compute"]["flops_per_sample"] == 3 * 2 * (64 * 256 + 256 * 256 + 256 * 10)
        assert 0 < r["compute"]["mfu"] < 1
        c = r["convergence"]
        assert c["epochs_run"] == 3 and len(c["curve"]) == 3
        assert [p["epoch"] for p in c["curve"]] == [1, 2, 3]
        assert all(a["wall_s"] < b["wall_s"] for a, b in zip(c["curve"], c["curve"][1:]))
    assert (smoke_run / "trials.parquet").exists() and (smoke_run / "curves.parquet").exists()


def test_offline_cpu_blocks_nvml_and_the_network(offline_cpu):
    """The precondition of the tests below: under offline_cpu NVML cannot load and nothing beyond
    the loopback can be reached (so 'no GPU' and 'no network' hold on any host)."""
    import os
    import subprocess
    import sys

    code = ("import socket\n"
            "try:\n    import pynvml\nexcept ImportError:\n    print('no nvml')\n"
            "for host in ('192.0.2.1', 'example.com'):\n"
            "    try:\n        socket.create_connection((host, 80), timeout=2)\n"
            "    except OSError as e:\n        print('blocked' if 'blocked by the test' in str(e) else e)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                         env={**os.environ, **offline_cpu}).stdout.split()
    assert out == ["no", "nvml", "blocked", "blocked"], out


def test_plan_suites_env_validate(offline_cpu):
    plan = regbench("plan", "--suite", "smoke", "--json", check=True)
    trials = json.loads(plan.stdout)
    assert len(trials) == 6 and {t["setting"] for t in trials} == {"none", "l2", "dropout"}
    suites = regbench("suites", check=True).stdout
    assert all(name in suites for name in ("smoke", "quick", "full", "gpu"))
    env = json.loads(regbench("env", "--json", env=offline_cpu, check=True).stdout)
    assert env["cpu_count"] >= 1 and env["gpus"] == [] and env["gpu_reason"] == "NVML unavailable (ModuleNotFoundError)"
    ok = regbench("validate", "bench/suites/quick.yaml", check=True).stdout
    assert "valid suite 'quick': 108 trials" in ok


def test_plan_and_validate_name_the_pairs_that_do_not_apply(tmp_path):
    suite = write_suite(tmp_path / "na.yaml", workloads=["digits_mlp", "synthetic_cnn"],
                        regularizers=["none", "mixup", "stochastic_depth", "max_norm"])
    one_line_error(regbench("validate", suite), "na.yaml: regularizers[2].stochastic_depth: stochastic_depth "
                   "applies to none of this suite's workloads")
    suite = write_suite(tmp_path / "na.yaml", workloads=["digits_mlp", "synthetic_cnn"],
                        regularizers=["none", "mixup", "max_norm"])
    plan = regbench("plan", "--suite", suite, check=True)
    assert {tuple(line.split("\t")[1:3]) for line in plan.stdout.splitlines() if not line.startswith("paired-")} == {
        ("digits_mlp", "none"), ("digits_mlp", "max_norm"), ("synthetic_cnn", "none"), ("synthetic_cnn", "mixup"),
        ("synthetic_cnn", "max_norm")}
    assert ("not applicable, not run: digits_mlp x mixup: mixes images; the inputs of digits_mlp are tabular"
            in plan.stderr.splitlines())
    ok = regbench("validate", suite, check=True).stdout
    assert "5 trials = 2 workloads x 3 regularizer settings" in ok and "less 1 not-applicable" in ok


def test_plan_marks_what_this_machine_skips_lists_sessions_and_counts_as_validate_does(offline_cpu):
    """`plan` on a CPU: the mixed_float16 trials and sessions marked skipped with the reason, the
    paired sessions listed after the trials, the expected durations with their source; and the
    trial and session counts are `validate`'s."""
    import re

    plan = regbench("plan", "--suite", "smoke", env=offline_cpu, check=True)
    lines = plan.stdout.splitlines()
    trials, sessions = lines[:6], lines[6:]
    assert len(sessions) == 4 and all(line.startswith("paired-digits_mlp-") for line in sessions)
    for line in lines:
        assert line.endswith("skipped here: " + line.split("skipped here: ")[-1]) if "mixed_float16" in line \
            else "skipped" not in line
    assert sum("skipped here: mixed_float16 on CPU without XLA" in line for line in lines) == 3 + 2
    head, *_, expected = plan.stderr.strip().splitlines()
    assert head.startswith("6 trials (3 skipped here), 4 paired sessions (2 skipped here)")
    assert re.match(r"expected: trials \d+ s \(2 side by side\), sessions up to \d+ s .*from the suite's "
                    r"expected_trial_s \(6 s a trial", expected), expected
    ok = regbench("validate", "bench/suites/smoke.yaml", check=True).stdout
    n_trials, n_sessions = (int(x) for x in re.search(r"(\d+) trials = .*; (\d+) paired sessions", ok).groups())
    assert (n_trials, n_sessions) == (len(trials), len(sessions))


def test_plan_calibrate_measures_the_durations_here(offline_cpu, tmp_path):
    suite = write_suite(tmp_path / "c.yaml", regularizers=["none", "l2"], epochs=3, paired={"sessions": 1})
    plan = regbench("plan", "--suite", suite, "--calibrate", env=offline_cpu, check=True)
    err = plan.stderr.strip().splitlines()
    assert "calibrating 1/1: digits_mlp float32 b64" in err
    assert err[-1].startswith("expected: trials ") and "sessions up to" not in err[-1]
    assert err[-1].endswith("from a calibration: 1 2-epoch baseline trial(s) measured here"), err[-1]


def test_bad_input_exits_2_with_one_line(tmp_path, offline_cpu):
    bad = write_suite(tmp_path / "bad.yaml", regularizers=[{"dropout": {"rate": 1.5}}])
    one_line_error(regbench("run", "--suite", bad, "--out", tmp_path / "out"), "bad.yaml", "dropout.rate", "1.5")
    assert not (tmp_path / "out").exists()  # nothing written for bad input
    one_line_error(regbench("validate", bad), "bad.yaml")
    one_line_error(regbench("plan", "--suite", "smok"), "did you mean 'smoke'")
    one_line_error(regbench("run", "--resume", tmp_path), "not a regbench run")
    one_line_error(regbench("report", tmp_path / "nope"), "nope: no such file or directory")
    one_line_error(regbench("validate", tmp_path / "missing.yaml"), "missing.yaml: file not found")
    one_line_error(regbench("run", "--suite", "smoke", "--only", "zzz", "--out", tmp_path / "o2"), "--only")
    # a GPU suite on a machine without one is refused before any trial runs, leaving no empty run dir
    one_line_error(regbench("run", "--suite", "gpu", "--executor", "process", "--out", tmp_path / "o3",
                            env=offline_cpu), "device: gpu", "no GPU", progress_lines=1)
    assert not any((tmp_path / "o3").iterdir())


def test_failures_are_results_and_the_run_goes_on(tmp_path, offline_cpu):
    suite = write_suite(
        tmp_path / "f.yaml", workloads=[{"name": "digits_mlp", "batch_sizes": [4096]},
                                        {"name": "synthetic_cnn", "max_train_samples": 256}],
        regularizers=["none"], epochs=2, learning_rate=1e30, paired=False)
    # batch 4096 > the 1437 digits training rows: that trial raises; lr=1e30 overflows the weights: NaN.
    proc = regbench("run", "--suite", suite, "--executor", "process", "--out", tmp_path / "out", "--no-report",
                    env=offline_cpu)
    assert proc.returncode == 0, proc.stderr
    run = pathlib.Path(proc.stdout.strip().splitlines()[-1])
    recs = {json.loads(p.read_text())["trial"]["workload"]: json.loads(p.read_text())
            for p in (run / "trials").glob("*.json")}
    assert recs["digits_mlp"]["status"] == "failed" and "exceeds the 1437 training samples" in recs["digits_mlp"]["reason"]
    assert recs["synthetic_cnn"]["status"] == "diverged"
    assert "nan" in recs["synthetic_cnn"]["reason"].lower() or "inf" in recs["synthetic_cnn"]["reason"].lower()
    checked = validate(run)  # failed and diverged records meet the contract too
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_missing_data_fails_the_run_before_any_trial_with_one_line(tmp_path):
    """No Fashion-MNIST files and a mirror that does not exist: the run stops before its first trial
    with one line naming the node and the dataset, and leaves no run directory behind."""
    import socket

    suite = write_suite(tmp_path / "f.yaml", workloads=[{"name": "fashion_mnist_cnn", "max_train_samples": 256}],
                        paired=False)
    proc = regbench("run", "--suite", suite, "--executor", "process", "--out", tmp_path / "out", "--no-report",
                    env={"KERAS_HOME": str(tmp_path / "keras"), "REGBENCH_DATA_DIR": str(tmp_path / "data"),
                         "REGBENCH_DATA_MIRROR": (tmp_path / "no-mirror").as_uri()})
    errors = [line for line in proc.stderr.splitlines() if line.startswith("regbench: error:")]
    assert proc.returncode == 2 and len(errors) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert f"node {socket.gethostname()}" in errors[0] and "fashion_mnist" in errors[0]
    assert not any((tmp_path / "out").glob("*/trials/*.json"))


def test_resume_runs_only_missing_trials(smoke_run, tmp_path):
    import shutil

    copy = tmp_path / smoke_run.name
    shutil.copytree(smoke_run, copy)
    victims = sorted((copy / "trials").glob("*float32*.json"))[:1]
    kept = {p.name: p.read_text() for p in (copy / "trials").glob("*.json") if p not in victims}
    for v in victims:
        v.unlink()
    proc = regbench("run", "--resume", copy, "--executor", "process", "--no-report", check=True)
    assert "1 to run" in proc.stderr
    names = {p.name for p in (copy / "trials").glob("*.json")}
    assert names == set(kept) | {v.name for v in victims}
    for name, text in kept.items():  # finished trials are never rewritten
        assert (copy / "trials" / name).read_text() == text


def test_selfcheck_measures_overhead_and_noise():
    proc = regbench("selfcheck", "--rounds", 1, "--repeats", 2, "--epochs", 2, "--json", check=True)
    out = json.loads(proc.stdout)
    h, n = out["harness"], out["noise"]
    for key in ("bare_step_s", "noop_callback_step_s", "with_harness_step_s", "reported_step_mean_s"):
        assert 0 < h[key] < 1, key
    # the figures are what their definitions say, from the values the output lists
    assert h["harness_overhead"] == pytest.approx(h["with_harness_step_s"] / h["noop_callback_step_s"] - 1)
    assert h["harness_vs_default_fit"] == pytest.approx(h["with_harness_step_s"] / h["bare_step_s"] - 1)
    assert h["reported_vs_noop"] == pytest.approx(h["reported_step_mean_s"] / h["noop_callback_step_s"] - 1)
    assert h["rounds"] == 1 and h["steps"] == [100, 1000]
    p50 = np.asarray(n["step_time_p50_s"])
    assert n["trials"] == 2 and len(p50) == 2 and (p50 > 0).all()
    assert n["across_trial_cv_of_p50"] == pytest.approx(p50.std(ddof=1) / p50.mean(), rel=1e-9)
    assert n["across_trial_cv_of_p50"] > 0  # two fresh processes never time identically
    assert 0 < n["mean_within_trial_cv"] < 5
    # progress on stderr while it works, and a verdict: each figure against its stated threshold
    progress = [line for line in proc.stderr.splitlines() if line.startswith("selfcheck: ")]
    assert "selfcheck: harness overhead: round 1/1" in progress, proc.stderr[-2000:]
    assert [line for line in progress if "noise floor: trial" in line][-1].startswith(
        "selfcheck: noise floor: trial 2/2 in a fresh process, step-time p50 ")
    from bench.selfcheck import HARNESS_OVERHEAD_MAX, NOISE_CV_MAX

    assert out["verdict"] == [
        {"name": "harness overhead", "value": h["harness_overhead"], "threshold": HARNESS_OVERHEAD_MAX,
         "ok": h["harness_overhead"] <= HARNESS_OVERHEAD_MAX},
        {"name": "noise floor", "value": n["across_trial_cv_of_p50"], "threshold": NOISE_CV_MAX,
         "ok": n["across_trial_cv_of_p50"] <= NOISE_CV_MAX}]


def test_selfcheck_verdict_lines_name_the_threshold_and_what_to_do():
    from bench.selfcheck import verdict_lines

    lines = verdict_lines([{"name": "harness overhead", "value": 0.004, "threshold": 0.01, "ok": True},
                           {"name": "noise floor", "value": 0.12, "threshold": 0.05, "ok": False}])
    assert lines[0] == "verdict  harness overhead +0.40% vs <= 1%: OK"
    assert lines[1].startswith("verdict  noise floor +12.00% vs <= 5%: ABOVE THRESHOLD (") and "paired" in lines[1]
    assert verdict_lines([{"name": "noise floor", "value": None, "threshold": 0.05, "ok": None}]) == [
        "verdict  noise floor: not measured (needs --repeats >= 2)"]



def test_devices_suite_without_a_gpu_is_refused_in_one_line(tmp_path):
    suite = write_suite(tmp_path / "mixed.yaml", devices=["gpu", "cpu"], paired=False)
    proc = regbench("run", "--suite", suite, "--executor", "process", "--out", tmp_path / "out", timeout=120)
    assert proc.returncode == 2, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("regbench: error: suite t lists devices: ['gpu', 'cpu'] but this machine has no GPU")
    assert not any((tmp_path / "out").iterdir())  # refused before any trial ran: no run left behind


def test_bench_never_imports_analysis():
    """Dependencies point one way: analysis reads bench, bench imports nothing from analysis (not
    even inside a function, where an import hides the loop)."""
    import ast

    root = pathlib.Path(__file__).resolve().parents[1] / "bench"
    found = []
    for path in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                     [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else [])
            found += [f"{path.relative_to(root.parent)}:{node.lineno}" for n in names
                      if n == "analysis" or n.startswith("analysis.")]
    assert found == []


def test_analysis_commands_come_through_entry_points():
    """report, compare and export are analysis' commands, and the end-of-run report its hook, declared
    under the entry-point groups of pyproject.toml; stale package metadata: `pip install -e .` again."""
    from bench import commands

    found = commands.found()
    assert sorted(found) == ["compare", "export", "report"], "stale package metadata: pip install -e . again"
    assert all(isinstance(commands.load(ep), commands.Command) for ep in found.values())
    assert [ep.value for ep in commands.found(commands.AFTER_RUN).values()] == ["analysis.commands:report_after_run"]
    assert all(callable(hook) for hook in commands.after_run_hooks())


def test_a_notebook_resumes_a_run_with_run_suite(smoke_run, tmp_path):
    """The run's lifecycle is a function (bench/run.py): the CLI and a notebook call the same one."""
    import shutil

    from bench.run import run_suite

    copy = tmp_path / smoke_run.name
    shutil.copytree(smoke_run, copy)
    victim = sorted((copy / "trials").glob("*float32*.json"))[0]
    victim.unlink()
    seen = []
    outcome = run_suite(resume=copy, executor="process", after_run=seen.append, log=seen.append)
    assert outcome.run_dir == copy and outcome.status == "complete" and outcome.exit_code == 0
    assert outcome.counts == {"ok": 1, "failed": 0, "diverged": 0, "skipped": 0}
    assert victim.is_file() and seen[-1] == copy  # the after-run hook gets the run directory, last
    assert any(str(line).startswith("resuming ") for line in seen)
