"""`regbench compare --by`, the regression gate and the efficiency columns, on a real smoke run and
edited copies of it standing in for other machines, software stacks and days."""
from __future__ import annotations

import json
import re

import pandas as pd
import pytest

import analysis
from tests.conftest import regbench
from tests.fixtures.run_copies import copy_run

L4 = [{"index": 0, "name": "NVIDIA L4", "uuid": "GPU-0", "memory_bytes": 24 * 2**30, "compute_capability": [8, 9],
       "driver": "550.54.15", "cuda_driver": "12.4", "mig_uuids": []}]


def slow(setting: str, factor: float):
    def edit(rec):
        if rec["status"] == "ok" and rec["trial"]["setting"] == setting:
            for f in ("step_time_p50_s", "step_time_mean_s"):
                rec["timing"][f] *= factor
            for f in ("samples_per_s", "end_to_end_samples_per_s"):
                rec["timing"][f] /= factor
    return edit


def on_l4(energy_per_sample_j: float):
    def edit(rec):
        if rec["status"] == "ok":
            e = rec["energy"]
            e.update(energy_per_sample_j=energy_per_sample_j, energy_j=energy_per_sample_j * 1000, null_reasons={})
    return edit


def test_by_software_pairs_equal_cells_across_versions_and_says_what_was_held(smoke_run, tmp_path):
    old = copy_run(smoke_run, tmp_path / "tf220", versions={"tensorflow": "2.20.0"}, jitter=0.0,
                   edit=slow("dropout", 1.3))
    data = analysis.load([smoke_run, old])
    c = analysis.compare(data.trials, data.sessions, by="software", manifests=data.manifests)
    assert c.held["labels"] == ["tensorflow 2.21.0", "tensorflow 2.20.0"]
    assert "device" in c.held["held"] and "regularizer setting" in c.held["held"] and "thread cap" in c.held["held"]
    assert "device" in c.held["also_equal"] and any(d.startswith("run") for d in c.held["differs"])
    step = c.changes[c.changes["metric"] == "step_time"].set_index("setting")
    assert set(step.index) == {"none", "l2", "dropout"}  # each ok cell paired once; skipped cells are not
    assert (step["software"] == "tensorflow 2.20.0").all() and (step["reference"] == "tensorflow 2.21.0").all()
    assert step.loc["dropout", "estimate"] == pytest.approx(1.3, rel=1e-6)
    assert step.loc["none", "estimate"] == pytest.approx(1.0, rel=1e-6)
    assert (step["mark"] == "too few repeats").all()  # one repeat a side: no interval
    index = analysis.write_compare([smoke_run, old], tmp_path / "cmp", by="software")
    md = (index.parent / "summary.md").read_text()
    assert "Compared across software (2 groups: tensorflow 2.21.0, tensorflow 2.20.0). Held equal in every pair: " \
           "workload, precision, batch size, backend, device," in md
    assert '"tensorflow": "2.20.0"' in md  # the groups table names every version


def test_by_device_puts_gpu_and_cpu_side_by_side_with_energy_and_price_gaps(smoke_run, tmp_path):
    gpu = copy_run(smoke_run, tmp_path / "l4", node={"device_name": "NVIDIA L4", "device_kind": "gpu",
                                                     "hostname": "gpu-1"}, gpus=L4, jitter=0.0, edit=on_l4(0.002))
    prices = tmp_path / "prices.yaml"
    prices.write_text("L4: 0.80\nNVIDIA H100 80GB HBM3: 2.49\n")
    data = analysis.load([smoke_run, gpu])
    c = analysis.compare(data.trials, by="device", manifests=data.manifests, prices=analysis.load_prices(prices))
    assert len(c.held["labels"]) == 2 and "L4" in c.held["labels"]
    eff = c.efficiency.set_index(["device", "setting"])
    l4 = eff.loc[("L4", "none")]
    assert l4["samples_per_joule"] == pytest.approx(500.0)
    assert l4["samples_per_dollar"] == pytest.approx(l4["samples_per_s"] * 3600 / 0.80)
    cpu = eff.loc[(c.held["labels"][0], "none")]
    assert pd.isna(cpu["samples_per_joule"]) and pd.isna(cpu["samples_per_dollar"])  # gaps, never zeros
    assert cpu["samples_per_joule_gap"].startswith("no energy measured (NVML unavailable")
    assert cpu["samples_per_dollar_gap"].startswith("no price for ")
    proc = regbench("compare", smoke_run, gpu, "--prices", prices, "--out", tmp_path / "cmp", check=True)
    md = (tmp_path / "cmp" / "summary.md").read_text()
    assert "gap: no price for" in md and "gap: no energy measured" in md and "| 500 |" in md
    csv = pd.read_csv(tmp_path / "cmp" / "efficiency.csv")
    assert csv["samples_per_joule"].isna().sum() == 3 and (csv["samples_per_joule"].dropna() == 500).all()
    assert proc.stdout.strip().endswith("index.html")


def test_bad_prices_and_axis_are_one_line(smoke_run, tmp_path, gate):
    bad = tmp_path / "prices.yaml"
    bad.write_text("L4: free\n")
    proc = gate(smoke_run, "--prices", bad, "--out", tmp_path / "o")
    assert proc.returncode == 2 and proc.stderr.strip() == f"regbench: error: {bad}: L4: 'free' is not a positive price per hour"
    proc = gate(smoke_run, "--by", "colour")
    assert proc.returncode == 2 and "invalid choice: 'colour'" in proc.stderr


class Result:
    def __init__(self, returncode, stdout, stderr):
        self.returncode, self.stdout, self.stderr = returncode, stdout, stderr


@pytest.fixture
def gate(capsys):
    """`regbench compare ARGS` in this process (bench.cli.main, the same code; no interpreter start)."""
    from bench.cli import main

    def run(*args):
        capsys.readouterr()
        try:
            code = main(["compare", *map(str, args)])
        except SystemExit as e:  # argparse
            code = e.code
        out, err = capsys.readouterr()
        return Result(code, out, err)
    return run


@pytest.fixture(scope="module")
def base_and_candidates(smoke_run, tmp_path_factory):
    """A baseline with three repeats per cell and candidates: the same code (noise only), dropout 25%
    slower and 5 points less accurate, l2 failing, and a run on other hardware."""
    d = tmp_path_factory.mktemp("gate")

    def worse(rec):
        slow("dropout", 1.25)(rec)
        if rec["status"] == "ok" and rec["trial"]["setting"] == "dropout":
            rec["convergence"]["best_val_accuracy"] -= 0.05
        if rec["trial"]["setting"] == "l2" and rec["status"] == "ok":
            rec.update(status="failed", reason="OOM: synthetic")
    return {"base": copy_run(smoke_run, d / "base", extra_repeats=2, seed=1),
            "same": copy_run(smoke_run, d / "same", extra_repeats=2, seed=2),
            "worse": copy_run(smoke_run, d / "worse", extra_repeats=2, seed=3, edit=worse),
            "other": copy_run(smoke_run, d / "other", extra_repeats=2, seed=4, gpus=L4,
                              node={"device_name": "NVIDIA L4", "device_kind": "gpu"})}


def test_gate_passes_noise_and_fails_real_regressions_one_line_each(base_and_candidates, gate):
    runs = base_and_candidates
    ok = regbench("compare", "--baseline", runs["base"], runs["same"], "--fail-on", "step_time:5,best_val_accuracy:1",
                  timeout=120)  # once as a real process: what a CI job runs
    assert ok.returncode == 0 and ok.stdout == "", ok.stdout + ok.stderr
    assert "gate: 3 cells of 1 candidate run(s) vs baseline base, 2 metric(s): 0 regression(s)" in ok.stderr
    bad = gate("--baseline", runs["base"], runs["same"], runs["worse"], "--fail-on",
               "step_time:10,best_val_accuracy:1,host_memory:50")
    assert bad.returncode == 1, bad.stderr
    lines = bad.stdout.strip().splitlines()
    assert len(lines) == 3, lines
    step, acc, failed = sorted(lines, key=lambda s: ("step_time" not in s, "best_val" not in s))
    assert re.match(r"REGRESSION step_time: \+2\d\.\d% \[\+1\d\.\d, \+\d\d\.\d\] ", step) and "worse than the limit of 10%: digits_mlp · dropout · " \
        "float32 · b64 · tensorflow" in step and "(run worse vs baseline base; n=3 vs 3)" in step
    assert acc.startswith("REGRESSION best_val_accuracy: -5.0pp [") and "limit of 1pp: digits_mlp · dropout" in acc
    assert failed.startswith("REGRESSION failed: digits_mlp · l2 · float32") and "OOM: synthetic" in failed
    # a higher limit than the change: passes; too few repeats never fail
    assert gate("--baseline", runs["base"], runs["worse"], "--fail-on", "step_time:30").stdout.count("step_time") == 0


def test_gate_bad_input_exits_2_with_one_line(base_and_candidates, tmp_path, gate):
    runs = base_and_candidates
    cases = [
        (["--baseline", runs["base"], runs["same"], "--fail-on", "stepp_time:5"], "unknown metric 'stepp_time'"),
        (["--baseline", runs["base"], runs["same"], "--fail-on", "step_time:-3"], "step_time: '-3' is not a percentage"),
        (["--baseline", runs["base"], runs["same"], "--fail-on", "step_time"], "'step_time' is not METRIC:PCT"),
        (["--baseline", runs["base"], tmp_path / "nope", "--fail-on", "step_time:5"], "nope: no such file"),
        (["--baseline", runs["base"], runs["other"], "--fail-on", "step_time:5"],
         "no cell of other matches a cell of the baseline base (pairs need equal workload, precision, batch size, "
         "backend, device,"),
        ([runs["same"], "--fail-on", "step_time:5"], "--fail-on: needs --baseline"),
        (["--baseline", runs["base"], runs["same"], "--by", "device"], "--baseline compares runs"),
    ]
    for args, needle in cases:
        proc = gate(*args)
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 2 and len(lines) == 1 and needle in lines[0], (args, proc.stderr)
        assert proc.stdout == ""


def test_gate_changes_match_the_python_api(base_and_candidates):
    """The gate's numbers are analysis.gate.check's: the notebook gets what CI got."""
    runs = base_and_candidates
    data = analysis.load([runs["base"], runs["worse"]])
    result = analysis.gate.check("base", data.trials, analysis.gate.parse_fail_on("step_time:10"))
    row = result.changes[(result.changes["setting"] == "dropout") & (result.changes["metric"] == "step_time")].iloc[0]
    assert row["worse"] and row["n"] == 3 and row["n_reference"] == 3
    base = data.trials[(data.trials["run"] == "base") & (data.trials["setting"] == "dropout")
                       & (data.trials["status"] == "ok")]["step_time_p50_s"]
    cand = data.trials[(data.trials["run"] == "worse") & (data.trials["setting"] == "dropout")
                       & (data.trials["status"] == "ok")]["step_time_p50_s"]
    import numpy as np

    assert row["estimate"] == pytest.approx(np.exp(np.log(cand).mean() - np.log(base).mean()))
    assert json.loads(json.dumps(result.lines)) == result.lines and len(result.lines) == 2


def test_by_backend_pairs_the_same_device_and_cell_across_backends(tmp_path):
    from tests.fixtures import synthetic_runs as synthetic

    tf = synthetic.write_run(tmp_path / "tf", repeats=4, seed=1, device_name="Intel Xeon")
    jx = synthetic.write_run(tmp_path / "jx", repeats=4, seed=2, device_name="Intel Xeon", backend="jax",
                             base_step_time_s=0.005)
    other = synthetic.write_run(tmp_path / "h100", repeats=4, seed=3, device_name="NVIDIA H100", backend="jax")
    data = analysis.load([tf, jx, other])
    c = analysis.compare(data.trials, by="backend", manifests=data.manifests)
    step = c.changes[c.changes["metric"] == "step_time"]
    assert set(step["device_name"]) == {"Intel Xeon"}  # the H100's jax trials have no tensorflow twin
    assert (step["backend"] == "jax").all() and (step["reference"] == "tensorflow").all()
    assert step["estimate"].to_numpy() == pytest.approx(0.5, rel=0.03) and (step["mark"] == "significant").all()
    assert "Held equal in every pair: workload, precision, batch size, device," in c.held["sentence"]
    for by in ("backend", "run"):
        index = analysis.write_compare([tf, jx, other], tmp_path / f"cmp-{by}", by=by)
        assert (index.parent / "changes.csv").stat().st_size > 0 and (index.parent / "compare_throughput.png").exists()
