"""What the report says the run found (analysis/findings.py), and the figures' honesty: intervals
of positive quantities formed on the log scale, intervals wider than the axis clipped and
annotated, the comparison heatmap's axis named for the axis compared, `.sessions` a DataFrame."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import analysis
from analysis import findings as fnd
from analysis import plots
from analysis.axes import with_axis
from analysis.comparison import throughput
from bench import stats
from tests.fixtures import synthetic_runs as synthetic

SETTINGS = {"none": (1.0, 1.0, 0.0), "l2": (1.2, 1.0, 0.0), "l1": (1.0, 1.0, 0.0), "batch_norm": (1.5, 1.3, 0.03)}
PRECISIONS = {"float32": 1.0, "mixed_bfloat16": 0.6}


def _row(table, **where):
    sel = table
    for k, v in where.items():
        sel = sel[sel[k] == v]
    assert len(sel) == 1, where
    return sel.iloc[0]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    failed = [synthetic.trial_doc(workload="digits_cnn", setting=s, precision="float32", repeat=r, status="failed",
                                  reason="OOM: out of memory") for s in ("none", "l2") for r in range(2)]
    return synthetic.write_run(tmp_path_factory.mktemp("findings") / "run", settings=SETTINGS, precisions=PRECISIONS,
                               repeats=4, noise=0.005, extra_docs=failed)


def test_findings_say_the_runs_own_numbers_in_words(run):
    """Defect caught: a "Findings" list of counts of problems ("2 estimates are not distinguishable
    from noise") instead of what the run measured."""
    data = analysis.load(run)
    table = analysis.overhead(data.trials, sessions=data.sessions)
    found = fnd.findings(data.trials, data.sessions)
    assert all(isinstance(f, fnd.Finding) for f in found)
    decided = " ".join(f.text for f in found if f.decided)
    for precision in PRECISIONS:  # batch_norm's step-time cost, as the overhead table has it, in each precision
        r = _row(table, setting="batch_norm", precision=precision, metric="step_time", workload="digits_mlp")
        assert f"{r['change_pct']:+.0f}%" in decided and precision in decided
    assert "batch_norm" in decided and "Synthetic CPU" in decided
    speed = analysis.precision_speedup(data.trials)
    b = _row(speed, setting="none", precision="mixed_bfloat16")
    assert f"mixed_bfloat16 steps are {(1 - 1 / b['speedup']) * 100:.0f}% faster than float32" in decided
    acc = _row(table, setting="batch_norm", precision="float32", metric="best_val_accuracy")
    assert f"{acc['change_pct']:+.1f} pp" in decided  # what it buys, too
    numbers = [f.numbers for f in found if f.decided and f.numbers.get("setting") == "batch_norm"]
    assert any(n.get("metric") == "step_time" for n in numbers)
    # l1 costs nothing the run could resolve; the failed cell could not be decided, with its reason
    assert "l1" in decided and "no measurable" in decided
    undecided = [f.text for f in found if not f.decided]
    assert any("digits_cnn" in t and "OOM: out of memory" in t and "4 trials" in t for t in undecided), undecided


def test_wide_intervals_are_undecided_with_the_reason(tmp_path):
    run = synthetic.write_run(tmp_path / "noisy", settings={"none": (1, 1, 0), "l1": (1.03, 1, 0)},
                              precisions={"float32": 1.0}, repeats=3, noise=0.25, seed=3)
    data = analysis.load(run)
    found = fnd.findings(data.trials, data.sessions)
    undecided = " ".join(f.text for f in found if not f.decided)
    assert "l1" in undecided and "too wide" in undecided
    one = synthetic.write_run(tmp_path / "one", settings={"none": (1, 1, 0), "l1": (1.2, 1, 0)},
                              precisions={"float32": 1.0}, repeats=1)
    data = analysis.load(one)
    undecided = " ".join(f.text for f in fnd.findings(data.trials, data.sessions) if not f.decided)
    assert "one repeat" in undecided


def test_report_opens_with_the_findings_and_links_csvs_and_method(run):
    index = analysis.write_report(run)
    html = index.read_text()
    md = (index.parent / "summary.md").read_text()
    assert html.index("What this run found") < html.index("Overhead vs baseline")
    assert md.index("## What this run found") < md.index("## What could not be decided") < md.index("## Overhead")
    for csv in ("overhead.csv", "precision_speedup.csv", "trials.csv", "curves.csv"):
        assert f'href="{csv}"' in html and f"]({csv})" in md
    assert "README.md#" in html
    assert (index.parent / "loss_vs_time.png").stat().st_size > 0
    mixed = html.split("Mixed precision")[1].split("<h2")[0]
    assert "<img " in mixed  # the mixed-precision section holds its own figure


def test_positive_quantity_intervals_are_formed_on_the_log_scale(tmp_path):
    """Defect caught: a throughput interval of mean +- t*sd that goes below zero when repeats spread."""
    low, est, high = stats.log_mean_ci([np.array([64.0, 640.0, 64000.0])])[0][[1, 0, 2]]
    assert 0 < low < est < high
    docs = [synthetic.trial_doc(workload="digits_mlp", setting="none", precision="float32", repeat=r,
                                step_time_s=s) for r, s in enumerate((0.001, 0.1, 1.0))]
    run = synthetic.write_run(tmp_path / "spread", settings={}, repeats=0, extra_docs=docs)
    tp = throughput(with_axis(analysis.load(run).trials, "device"))
    r = tp.iloc[0]
    assert 0 < r["ci_low"] < r["samples_per_s"] < r["ci_high"]
    assert r["samples_per_s"] == pytest.approx(64 / (0.001 * 0.1 * 1.0) ** (1 / 3), rel=1e-9)  # geometric mean


def test_an_interval_wider_than_the_axis_is_clipped_and_annotated(run):
    table = analysis.overhead(analysis.load(run).trials)
    sel = (table["setting"] == "l2") & (table["metric"] == "step_time") & (table["precision"] == "float32")
    table.loc[sel, ["ci_low_pct", "ci_high_pct"]] = [-95.0, 812.0]
    fig = plots.overhead_bars(table, ["step_time"])
    ax = fig.axes[0]
    assert ax.get_xlim()[1] < 300  # the axis follows the estimates, not the one wild interval
    texts = [t.get_text() for a in fig.axes for t in a.texts]
    assert any("+812" in t for t in texts), texts


def test_compare_by_run_heatmap_names_its_axis_run(tmp_path):
    a = synthetic.write_run(tmp_path / "a", settings=SETTINGS, precisions={"float32": 1.0}, repeats=2)
    b = synthetic.write_run(tmp_path / "b", settings=SETTINGS, precisions={"float32": 1.0}, repeats=2, seed=1)
    data = analysis.load([a, b])
    c = analysis.compare(data.trials, data.sessions, by="run", manifests=data.manifests)
    figs = {stem: fig for stem, _, fig in analysis.comparison.figures(c)}
    assert figs["compare_step_time"].axes[0].get_xlabel() == "run"
    assert figs["compare_memory"].axes[0].get_xlabel() == "run"


def test_sessions_is_a_dataframe_the_api_takes(tmp_path):
    """Defect caught: README says every table of `load` is a DataFrame; `.sessions` was a list of dicts."""
    truths = {"l2": 1.10}
    run = synthetic.write_run(tmp_path / "s", settings={"none": (1, 1, 0), "l2": (1.5, 1, 0)},
                              precisions={"float32": 1.0}, repeats=2)
    synthetic.write_sessions(run, [synthetic.session_doc(session=k, truths=truths, seed=1) for k in range(3)])
    data = analysis.load(run)
    s = data.sessions
    assert isinstance(s, pd.DataFrame) and len(s) == 3
    assert {"run", "session_id", "status", "group_id", "workload", "precision", "device_name", "rounds"} <= set(s)
    assert (s["status"] == "ok").all() and (s["workload"] == "digits_mlp").all()
    st = _row(analysis.overhead(data.trials, sessions=s), setting="l2", metric="step_time")
    assert st["method"] == "paired sessions" and st["estimate"] == pytest.approx(1.10, rel=0.01)
    assert len(analysis.paired.estimates(s)) == 2  # l2 and the A/A control
    empty = analysis.load(synthetic.write_run(tmp_path / "none", settings=SETTINGS, repeats=2)).sessions
    assert isinstance(empty, pd.DataFrame) and empty.empty
