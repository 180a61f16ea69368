"""analysis: statistics against known answers, input robustness, report and compare on synthetic runs."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import analysis
from analysis import stats
from analysis.speedups import ERASES, KEEPS
from tests.fixtures import synthetic_runs as synthetic

KNOWN = {"none": (1.0, 1.0, 0.0), "l2": (1.2, 1.0, 0.02), "same": (1.0, 1.0, 0.0)}


def _row(table, setting, metric, precision="float32"):
    sel = table[(table["setting"] == setting) & (table["metric"] == metric) & (table["precision"] == precision)]
    assert len(sel) == 1, sel
    return sel.iloc[0]


@pytest.fixture(scope="module")
def known_run(tmp_path_factory) -> Path:
    return synthetic.write_run(tmp_path_factory.mktemp("known") / "run", settings=KNOWN, repeats=8, noise=0.01,
                               precisions={"float32": 1.0, "mixed_bfloat16": 0.5}, seed=3)


def test_overhead_recovers_the_true_ratio(known_run):
    table = analysis.overhead(analysis.load(known_run).trials)
    for precision in ("float32", "mixed_bfloat16"):
        st = _row(table, "l2", "step_time", precision)
        assert st["n_repeats"] == 8
        assert st["estimate"] == pytest.approx(1.2, abs=0.015)
        assert st["ci_low"] <= 1.2 <= st["ci_high"]
        assert st["ci_high"] - st["ci_low"] < 0.05
        assert st["mark"] == stats.SIGNIFICANT
        assert st["change_pct"] == pytest.approx(20, abs=1.5)
        tp = _row(table, "l2", "steady_throughput", precision)
        assert tp["estimate"] == pytest.approx(1 / 1.2, abs=0.015)
        assert tp["ci_low"] <= 1 / 1.2 <= tp["ci_high"]
    acc = _row(table, "l2", "best_val_accuracy")
    assert acc["kind"] == "delta" and acc["ci_low"] <= 0.02 <= acc["ci_high"]


def test_no_true_overhead_is_marked_noise(known_run):
    table = analysis.overhead(analysis.load(known_run).trials)
    st = _row(table, "same", "step_time")
    assert st["ci_low"] <= 1.0 <= st["ci_high"]
    assert st["mark"] == stats.NOISE
    assert "~noise" in analysis.format_estimate(st)
    # null metrics (no GPU: device memory, energy) are 'no data', not zero and not a crash
    assert _row(table, "l2", "device_memory")["mark"] == stats.NO_DATA


def test_single_repeat_is_too_few(tmp_path):
    run = synthetic.write_run(tmp_path / "one", settings=KNOWN, repeats=1, precisions={"float32": 1.0})
    table = analysis.overhead(analysis.load(run).trials)
    st = _row(table, "l2", "step_time")
    assert st["mark"] == stats.TOO_FEW and st["n_repeats"] == 1
    assert np.isnan(st["ci_low"]) and st["estimate"] == pytest.approx(1.2, abs=0.05)
    assert "too few repeats" in analysis.format_estimate(st)
    index = analysis.write_report(run)
    assert "too few repeats" in (index.parent / "summary.md").read_text()


def test_missing_or_failed_baseline_is_marked(tmp_path):
    failed_base = synthetic.trial_doc(workload="w2", setting="none", precision="float32", repeat=0, status="failed",
                                      reason="ResourceExhaustedError: OOM when allocating tensor")
    run = synthetic.write_run(tmp_path / "nob", settings={"l2": (1.2, 1, 0)}, repeats=3, precisions={"float32": 1},
                              extra_docs=[failed_base,
                                          synthetic.trial_doc(workload="w2", setting="l2", precision="float32",
                                                              repeat=0)])
    table = analysis.overhead(analysis.load(run).trials)
    rows = table[table["metric"] == "step_time"].set_index("workload")
    assert rows.loc["digits_mlp", "mark"] == stats.NO_BASELINE
    assert rows.loc["digits_mlp", "note"] == "no baseline trial in this run"
    assert rows.loc["w2", "mark"] == stats.NO_BASELINE and "failed" in rows.loc["w2", "note"]
    index = analysis.write_report(run)
    md = (index.parent / "summary.md").read_text()
    assert "no baseline" in md and "OOM when allocating" in md


def test_mixed_precision_gain_erased(tmp_path):
    docs = []
    # baseline and l2 get 2x from bf16; "augment" runs at float32 speed under bf16 (gain erased)
    for setting, f32, bf16 in (("none", 0.010, 0.005), ("l2", 0.012, 0.006), ("augment", 0.015, 0.015)):
        for precision, t in (("float32", f32), ("mixed_bfloat16", bf16)):
            for r in range(5):
                docs.append(synthetic.trial_doc(workload="w", setting=setting, precision=precision, repeat=r,
                                                step_time_s=t * (1 + 0.01 * np.sin(r * 7 + len(setting)))))
    run = synthetic.write_run(tmp_path / "mp", settings={}, extra_docs=docs)
    speed = analysis.precision_speedup(analysis.load(run).trials).set_index("setting")
    assert speed.loc["none", "speedup"] == pytest.approx(2.0, rel=0.03)
    assert speed.loc["none", "ci_low"] <= 2.0 <= speed.loc["none", "ci_high"]
    assert speed.loc["l2", "verdict"] == KEEPS
    assert speed.loc["augment", "verdict"] == ERASES
    assert speed.loc["augment", "speedup"] == pytest.approx(1.0, rel=0.03)
    index = analysis.write_report(run)
    assert "augment erases the mixed_bfloat16 gain" in (index.parent / "summary.md").read_text()


def test_t_interval_handles_constant_tiny_and_many_samples():
    res = stats.mean_ci([[2.0, 2.0, 2.0], [1.0, 3.0], [], [1.0, 2.0, 3.0, 4.0, np.nan], [5.0]])
    assert list(res[0]) == [2.0, 2.0, 2.0, 3.0]  # constant: the interval collapses to the value
    assert res[1, 0] == 2.0 and res[1, 1] == pytest.approx(2.0 - 12.706, abs=1e-3)  # n=2: t(1) = 12.706
    assert np.isnan(res[2, 0]) and res[2, 3] == 0
    assert res[3, 3] == 4 and res[3, 1] < 2.5 < res[3, 2]  # NaN dropped
    assert res[4, 0] == 5.0 and np.isnan(res[4, 1])  # one value: no interval
    marks = stats.marks(res[:, 3], res[:, 1], res[:, 2], 2.0)
    assert list(marks) == [stats.NOISE, stats.NOISE, stats.NO_DATA, stats.NOISE, stats.TOO_FEW]


@pytest.mark.parametrize("n", [3, 5])
def test_interval_coverage_at_the_suites_repeat_counts(n):
    """Simulated: the nominal 95% interval covers a known mean 93-97% of the time at the repeat
    counts suites use (a bootstrap interval covers ~80% at n=3, which this test would catch)."""
    rng = np.random.default_rng(0)
    res = stats.mean_ci([rng.normal(np.log(1.2), 0.1, size=n) for _ in range(4000)])
    coverage = np.mean((res[:, 1] <= np.log(1.2)) & (res[:, 2] >= np.log(1.2)))
    assert 0.93 <= coverage <= 0.97, coverage


def test_unreadable_files_are_listed_not_fatal(tmp_path, capsys):
    run = synthetic.write_run(tmp_path / "bad", settings=KNOWN, repeats=3, precisions={"float32": 1.0})
    trials = run / "trials"
    good = sorted(trials.iterdir())[0].read_text()
    (trials / "partial.json").write_text(good[: len(good) // 2])
    (trials / "garbage.json").write_bytes(b"\x00\xff not json")
    newer = json.loads(good)
    newer.update(schema_version=7, trial_id="newer")
    (trials / "newer.json").write_text(json.dumps(newer))
    (trials / "list.json").write_text("[1, 2]")
    no_trial = dict(json.loads(good), trial_id="notrial")
    del no_trial["trial"]
    (trials / "notrial.json").write_text(json.dumps(no_trial))
    manifest = json.loads((run / "manifest.json").read_text())
    manifest["trial_ids"].append("never-finished")
    (run / "manifest.json").write_text(json.dumps(manifest))

    data = analysis.load(run)
    err = capsys.readouterr().err
    assert "partial.json: not valid JSON" in err
    reasons = dict(zip(data.problems["file"].map(lambda f: Path(f).name), data.problems["reason"]))
    assert reasons["newer.json"] == "schema_version 7 is newer than this regbench reads (1)"
    assert reasons["list.json"] == "top level is not a JSON object"
    assert "no workload" in reasons["notrial.json"] and "not valid JSON" in reasons["garbage.json"]
    assert reasons["never-finished.json"].startswith("planned but no result")
    assert len(data.trials) == 9  # the good ones are all there

    index = analysis.write_report(run)
    fails = pd.read_csv(index.parent / "failures.csv")
    assert set(fails.loc[fails["status"] == "unreadable", "trial_id"]) >= {"partial.json", "newer.json"}
    assert "schema_version 7 is newer" in index.read_text()


@pytest.mark.parametrize("case", ["empty_dir", "missing", "file", "newer_manifest"])
def test_not_a_run_is_one_clear_line(tmp_path, case):
    path = tmp_path / "x"
    if case == "empty_dir":
        path.mkdir()
    elif case == "file":
        path.write_text("hello")
    elif case == "newer_manifest":
        synthetic.write_run(path, settings=KNOWN, repeats=1)
        (path / "manifest.json").write_text(json.dumps({"schema_version": 7}))
    with pytest.raises(analysis.AnalysisInputError) as e:
        analysis.write_report(path)
    msg = str(e.value)
    assert "\n" not in msg and str(path) in msg
    if case == "newer_manifest":
        assert msg == f"{path / 'manifest.json'}: schema_version 7 is newer than this regbench reads (1)"
    if case == "empty_dir":
        assert "not a regbench run" in msg


def test_run_without_manifest_and_empty_run(tmp_path):
    run = synthetic.write_run(tmp_path / "nomanifest", settings=KNOWN, repeats=3, manifest=False)
    data = analysis.load(run, warn=False)
    assert len(data.trials) == 18 and "manifest.json missing" in data.problems["reason"].iloc[0]
    empty = tmp_path / "empty"
    (empty / "trials").mkdir(parents=True)
    index = analysis.write_report(empty)  # a run that finished nothing yet still gets a page
    assert index.exists() and "0 read" in index.read_text()


def test_report_files_and_tables(known_run):
    index = analysis.write_report(known_run)
    out = index.parent
    for name in ("index.html", "summary.md", "overhead.csv", "precision_speedup.csv", "failures.csv", "trials.csv",
                 "curves.csv", "overhead_step_time.png", "overhead_memory.png", "accuracy_vs_time.png",
                 "loss_vs_time.png", "cost_benefit.png", "precision_speedup.png"):
        assert (out / name).stat().st_size > 0, name
    html = index.read_text()
    assert html.count('src="data:image/png;base64,') == 6 and "<script" not in html
    over = pd.read_csv(out / "overhead.csv")
    assert {"estimate", "ci_low", "ci_high", "mark", "n_repeats", "change_pct"} <= set(over.columns)
    md = (out / "summary.md").read_text()
    l2 = over[(over["setting"] == "l2") & (over["metric"] == "step_time") & (over["precision"] == "float32")]
    assert len(l2) == 1 and l2.iloc[0]["estimate"] == pytest.approx(1.2, abs=0.015)
    row = next(line for line in md.splitlines() if line.startswith("| digits_mlp | float32 | l2 |"))
    assert analysis.format_estimate(l2.iloc[0]) in row  # the markdown shows the CSV's own estimate and CI


def test_compare_puts_devices_side_by_side(tmp_path):
    cpu = synthetic.write_run(tmp_path / "cpu", settings=KNOWN, repeats=4, device_name="Intel(R) Xeon(R) CPU @ 2GHz")
    gpu = synthetic.write_run(tmp_path / "gpu", settings={"none": (1, 1, 0), "l2": (1.02, 1, 0.02)}, repeats=4,
                              device_name="NVIDIA H100 80GB HBM3", backend="jax", base_step_time_s=0.001)
    c = analysis.compare(analysis.load([cpu, gpu]).trials)
    tp = c.throughput[c.throughput["precision"] == "float32"].set_index("device")
    assert tp.loc["H100 80GB HBM3 · jax", "vs_reference"] == pytest.approx(10, rel=0.05)
    st = c.overhead[(c.overhead["metric"] == "step_time") & (c.overhead["setting"] == "l2")
                    & (c.overhead["precision"] == "float32")].set_index("device")
    assert st.loc["Intel Xeon · tensorflow", "estimate"] == pytest.approx(1.2, abs=0.02)
    assert st.loc["H100 80GB HBM3 · jax", "estimate"] == pytest.approx(1.02, abs=0.02)
    assert {"Intel Xeon · tensorflow", "H100 80GB HBM3 · jax"} <= set(c.overhead_by_axis.columns)
    index = analysis.write_compare([cpu, gpu], tmp_path / "cmp")
    assert index == tmp_path / "cmp" / "index.html"
    for name in ("summary.md", "throughput.csv", "overhead.csv", "compare_step_time.png",
                 "compare_throughput.png"):
        assert (index.parent / name).stat().st_size > 0
    with pytest.raises(analysis.AnalysisInputError):
        analysis.write_compare([cpu, tmp_path / "nope"], tmp_path / "cmp2")


def test_notebook_api():
    assert callable(analysis.load) and callable(analysis.overhead) and callable(analysis.compare)
    assert callable(analysis.write_compare) and callable(analysis.write_report)
    assert analysis.precision_speedup.__module__ == "analysis.speedups"  # plain functions, plain modules
    assert analysis.plots.pareto_front([0, 10, 5, 20], [0, 2, 1, 1]).tolist() == [True, True, True, False]


def test_a_run_mixing_pairing_keys_gets_separate_panels(tmp_path):
    """Trials that differ in a pairing key other than the faceted ones (here epochs) must not collide."""
    import shutil

    a = synthetic.write_run(tmp_path / "a", settings=KNOWN, repeats=3, precisions={"float32": 1.0}, epochs=5)
    b = synthetic.write_run(tmp_path / "b", settings=KNOWN, repeats=3, precisions={"float32": 1.0}, epochs=7, seed=1)
    for p in (b / "trials").glob("*.json"):
        shutil.copy(p, a / "trials" / p.name)
    table = analysis.overhead(analysis.load(a).trials)
    assert set(table["epochs"]) == {5, 7}
    index = analysis.write_report(a)
    assert index.exists()
