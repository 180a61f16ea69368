import json
import pathlib


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
        assert t["steady_state_steps"] >= 30 and t["jit_compile"] is False
        assert 0 < t["step_time_p50_s"] <= t["step_time_p95_s"]
        assert r["memory"]["device_peak_bytes"] is None and r["memory"]["null_reasons"]["device_peak_bytes"]
        assert r["energy"]["energy_j"] is None and "NVML" in r["energy"]["null_reasons"]["energy_j"] or \
            "CUDA_VISIBLE_DEVICES" in r["energy"]["null_reasons"]["energy_j"]
        assert r["compute"]["flops_per_sample"] == 3 * 2 * (64 * 256 + 256 * 256 + 256 * 10)
        assert 0 < r["compute"]["mfu"] < 1
        c = r["convergence"]
        assert c["epochs_run"] == 3 and len(c["curve"]) == 3
        assert [p["epoch"] for p in c["curve"]] == [1, 2, 3]
        assert all(a["wall_s"] < b["wall_s"] for a, b in zip(c["curve"], c["curve"][1:]))
    assert (smoke_run / "trials.parquet").exists() and (smoke_run / "curves.parquet").exists()


def test_plan_suites_env_validate():
    plan = regbench("plan", "--suite", "smoke", "--json", check=True)
    trials = json.loads(plan.stdout)
    assert len(trials) == 6 and {t["setting"] for t in trials} == {"none", "l2", "dropout"}
    suites = regbench("suites", check=True).stdout
    assert all(name in suites for name in ("smoke", "quick", "full", "gpu"))
    env = json.loads(regbench("env", "--json", check=True).stdout)
    assert env["cpu_count"] >= 1 and env["gpus"] == [] and env["gpu_reason"]
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
    assert {tuple(line.split("\t")[1:3]) for line in plan.stdout.splitlines()} == {
        ("digits_mlp", "none"), ("digits_mlp", "max_norm"), ("synthetic_cnn", "none"), ("synthetic_cnn", "mixup"),
        ("synthetic_cnn", "max_norm")}
    assert ("not applicable, not run: digits_mlp x mixup: mixes images; the inputs of digits_mlp are tabular"
            in plan.stderr.splitlines())
    ok = regbench("validate", suite, check=True).stdout
    assert "5 trials = 2 workloads x 3 regularizer settings" in ok and "less 1 not-applicable" in ok


def test_bad_input_exits_2_with_one_line(tmp_path):
    bad = write_suite(tmp_path / "bad.yaml", regularizers=[{"dropout": {"rate": 1.5}}])
    one_line_error(regbench("run", "--suite", bad, "--out", tmp_path / "out"), "bad.yaml", "dropout.rate", "1.5")
    assert not (tmp_path / "out").exists()  # nothing written for bad input
    one_line_error(regbench("validate", bad), "bad.yaml")
    one_line_error(regbench("plan", "--suite", "smok"), "did you mean 'smoke'")
    one_line_error(regbench("run", "--resume", tmp_path), "not a regbench run")
    one_line_error(regbench("report", tmp_path / "nope"), "not a directory")
    one_line_error(regbench("validate", tmp_path / "missing.yaml"), "missing.yaml: file not found")
    one_line_error(regbench("run", "--suite", "smoke", "--only", "zzz", "--out", tmp_path / "o2"), "--only")
    # a GPU suite on a machine without one is refused before any trial runs, leaving no empty run dir
    one_line_error(regbench("run", "--suite", "gpu", "--executor", "process", "--out", tmp_path / "o3"),
                   "device: gpu", "no GPU", progress_lines=1)
    assert not any((tmp_path / "o3").iterdir())


def test_failures_are_results_and_the_run_goes_on(tmp_path):
    suite = write_suite(
        tmp_path / "f.yaml",
        workloads=[{"name": "fashion_mnist_cnn", "max_train_samples": 256}, "digits_mlp"],
        regularizers=["none"], epochs=2, learning_rate=1e30)
    # No Fashion-MNIST files and no network here: that trial fails; lr=1e30 overflows the weights: NaN.
    proc = regbench("run", "--suite", suite, "--executor", "process", "--out", tmp_path / "out", "--no-report",
                    env={"KERAS_HOME": str(tmp_path / "keras")})
    assert proc.returncode == 0, proc.stderr
    run = pathlib.Path(proc.stdout.strip().splitlines()[-1])
    recs = {json.loads(p.read_text())["trial"]["workload"]: json.loads(p.read_text())
            for p in (run / "trials").glob("*.json")}
    assert recs["fashion_mnist_cnn"]["status"] == "failed" and recs["fashion_mnist_cnn"]["reason"]
    assert recs["digits_mlp"]["status"] == "diverged"
    assert "nan" in recs["digits_mlp"]["reason"].lower() or "inf" in recs["digits_mlp"]["reason"].lower()
    checked = validate(run)  # failed and diverged records meet the contract too
    assert checked.returncode == 0, checked.stdout + checked.stderr


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
    assert n["trials"] == 2 and len(n["step_time_p50_s"]) == 2 and n["across_trial_cv_of_p50"] >= 0


def test_devices_suite_without_a_gpu_is_refused_in_one_line(tmp_path):
    suite = write_suite(tmp_path / "mixed.yaml", devices=["gpu", "cpu"], paired=False)
    proc = regbench("run", "--suite", suite, "--executor", "process", "--out", tmp_path / "out", timeout=120)
    assert proc.returncode == 2, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("regbench: error: suite t lists devices: ['gpu', 'cpu'] but this machine has no GPU")
    assert not any((tmp_path / "out").iterdir())  # refused before any trial ran: no run left behind
