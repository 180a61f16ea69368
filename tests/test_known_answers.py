"""What regbench publishes, computed from inputs whose answer is known, with the machine drifting.

Every synthetic run here has a drift factor per repeat (or per round of a paired session) shared
by every setting and precision measured in it: 30% between repeats, where the per-trial noise is
0.2%. An estimator that pairs by repeat (by round) cancels the drift and lands on the truth with a
tight interval; one that ignored the pairing would carry the 30% into its interval and its
verdicts, and these tests fail. Also: the verdicts of the mixed-precision table, the baselines
table and the convergence summary (time and epochs to target, gap) against hand-computed values.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import analysis
from analysis import paired, stats
from analysis.speedups import format_speedup
from analysis.tables import baselines
from analysis.speedups import ERASES, KEEPS, LOSES_MOST, NO_GAIN, SLOWER
from bench.measure.convergence import curve_rows, summarize
from tests.fixtures import synthetic_runs as synthetic

DRIFT = 0.3  # log-sd of the machine's speed between repeats (rounds): ~30%
NOISE = 0.002  # per-trial (per-block) noise


def _one(table: pd.DataFrame, **where) -> pd.Series:
    sel = table
    for k, v in where.items():
        sel = sel[sel[k] == v]
    assert len(sel) == 1, (where, sel)
    return sel.iloc[0]


# ---- isolated trials: pairing by repeat -----------------------------------------------------------

@pytest.fixture(scope="module")
def drifting_run(tmp_path_factory):
    settings = {"none": (1.0, 1.0, 0.0), "l2": (1.2, 1.0, 0.02), "same": (1.0, 1.0, 0.0)}
    return synthetic.write_run(tmp_path_factory.mktemp("drift") / "run", settings=settings, repeats=5, noise=NOISE,
                               drift=DRIFT, precisions={"float32": 1.0, "mixed_bfloat16": 0.5}, seed=11)


def test_drift_is_really_in_the_synthetic_run(drifting_run):
    """The fixture's precondition: baseline step times of the repeats spread by far more than the
    pairing tolerance below (else an unpaired estimator would pass too)."""
    t = analysis.load(drifting_run).trials
    base = t[(t["setting"] == "none") & (t["precision"] == "float32")]["step_time_p50_s"]
    assert base.max() / base.min() > 1.3


def test_overhead_pairs_by_repeat_and_cancels_the_drift(drifting_run):
    """Defect caught: the overhead of a regularizer compared with the baseline of another repeat
    (or with the mean baseline): the 30% drift lands in the interval and the mark."""
    table = analysis.overhead(analysis.load(drifting_run).trials)
    for precision in ("float32", "mixed_bfloat16"):
        st = _one(table, setting="l2", metric="step_time", precision=precision)
        assert st["n_repeats"] == 5 and st["method"] == analysis.overheads.ISOLATED
        assert st["estimate"] == pytest.approx(1.2, rel=0.005)
        assert st["ci_low"] <= 1.2 <= st["ci_high"] and st["ci_high"] - st["ci_low"] < 0.01
        assert st["mark"] == stats.SIGNIFICANT
        tp = _one(table, setting="l2", metric="steady_throughput", precision=precision)
        assert tp["estimate"] == pytest.approx(1 / 1.2, rel=0.005) and tp["ci_high"] - tp["ci_low"] < 0.01
        same = _one(table, setting="same", metric="step_time", precision=precision)
        assert same["mark"] == stats.NOISE and 0.99 < same["ci_low"] <= 1.0 <= same["ci_high"] < 1.01


def test_speedup_pairs_by_repeat_and_cancels_the_drift(drifting_run):
    """Defect caught: mixed precision compared with the float32 trial of another repeat."""
    sp = analysis.precision_speedup(analysis.load(drifting_run).trials)
    for setting in ("none", "l2", "same"):
        r = _one(sp, setting=setting, precision="mixed_bfloat16")
        assert r["speedup"] == pytest.approx(2.0, rel=0.005) and r["ci_high"] - r["ci_low"] < 0.02, r
        assert r["verdict"] == KEEPS and r["n_repeats"] == 5


def test_every_verdict_with_known_answers(tmp_path):
    """Defect caught: a verdict that does not follow the speedups it summarizes, or speedups
    formed without pairing by repeat (here the per-repeat drift would turn 'loses most of the
    gain' into 'erases' and 'no gain at baseline' into 'keeps')."""
    rng = np.random.default_rng(5)
    # workload -> setting -> (float32 step time, mixed_bfloat16 step time)
    truth = {"w": {"none": (0.010, 0.005), "l2": (0.012, 0.0065), "aug": (0.012, 0.010), "bn": (0.015, 0.015)},
             "flat": {"none": (0.010, 0.010), "l2": (0.012, 0.006)},
             "slow": {"none": (0.010, 0.020)}}
    # per-trial noise: a fixed pattern per precision (mean-zero ratios, so "no change" is exactly that)
    pattern = {"float32": np.array([1, -1, 0.5, -0.5, 0]), "mixed_bfloat16": np.array([0, -0.5, 0.5, -1, 1])}
    docs = []
    for workload, settings in truth.items():
        drift = np.exp(DRIFT * rng.standard_normal(5))
        for setting, times in settings.items():
            for precision, t in zip(("float32", "mixed_bfloat16"), times):
                for r in range(5):
                    docs.append(synthetic.trial_doc(workload=workload, setting=setting, precision=precision, repeat=r,
                                                    step_time_s=t * drift[r] * (1 + NOISE * pattern[precision][r])))
    run = synthetic.write_run(tmp_path / "verdicts", settings={}, extra_docs=docs)
    sp = analysis.precision_speedup(analysis.load(run).trials)
    expected = {("w", "none"): (KEEPS, 2.0, 100.0), ("w", "l2"): (KEEPS, 0.012 / 0.0065, (0.012 / 0.0065 - 1) * 100),
                ("w", "aug"): (LOSES_MOST, 1.2, 20.0), ("w", "bn"): (ERASES, 1.0, 0.0),
                ("flat", "none"): (NO_GAIN, 1.0, None), ("flat", "l2"): (NO_GAIN, 2.0, None),
                ("slow", "none"): (SLOWER, 0.5, None)}
    assert len(sp) == len(expected)
    for (workload, setting), (verdict, speedup, kept) in expected.items():
        r = _one(sp, workload=workload, setting=setting)
        assert r["verdict"] == verdict, (workload, setting, r.to_dict())
        assert r["speedup"] == pytest.approx(speedup, rel=0.005)
        assert r["ci_low"] <= speedup * 1.002 and r["ci_high"] >= speedup * 0.998
        assert r["ci_high"] / r["ci_low"] < 1.01  # the drift cancelled: a tight interval
        if kept is not None:
            assert r["gain_kept_pct"] == pytest.approx(kept, abs=1.0)
    assert _one(sp, workload="w", setting="l2")["baseline_speedup"] == pytest.approx(2.0, rel=0.005)


def test_report_tables_carry_the_csv_values(drifting_run):
    """Defect caught: the report's text saying something other than its own overhead.csv (the
    number is read from the CSV, then found formatted in summary.md, not matched as '+20')."""
    index = analysis.write_report(drifting_run)
    over = pd.read_csv(index.parent / "overhead.csv")
    st = _one(over, setting="l2", metric="step_time", precision="float32")
    assert st["estimate"] == pytest.approx(1.2, rel=0.005)
    md = (index.parent / "summary.md").read_text()
    row = next(line for line in md.splitlines() if line.startswith("| digits_mlp | float32 | l2 |"))
    assert analysis.format_estimate(st) in row  # '+20.0% [+19.x, +20.x]' as the CSV row formats
    sp = pd.read_csv(index.parent / "precision_speedup.csv")
    r = _one(sp, setting="l2", precision="mixed_bfloat16")
    assert format_speedup(r) in md and r["verdict"] == KEEPS


# ---- baselines table and convergence summary ------------------------------------------------------

def test_baselines_table_known_values(tmp_path):
    """Defect caught: the absolute numbers of the report (step time in ms, throughput, host MiB,
    accuracy) aggregated or scaled wrongly, or taken from regularized trials."""
    docs = []
    for r, (t, mib, acc) in enumerate([(0.010, 500, 0.90), (0.014, 520, 0.92), (0.011, 510, 0.91)]):
        docs.append(synthetic.trial_doc(workload="w", setting="none", precision="float32", repeat=r, step_time_s=t,
                                        host_peak_bytes=mib * 2**20, best_val_accuracy=acc))
        docs.append(synthetic.trial_doc(workload="w", setting="l2", precision="float32", repeat=r, step_time_s=9 * t,
                                        host_peak_bytes=9 * mib * 2**20, best_val_accuracy=0.1))
    docs.append(synthetic.trial_doc(workload="w", setting="none", precision="float32", repeat=3, status="failed",
                                    reason="x"))
    run = synthetic.write_run(tmp_path / "base", settings={}, extra_docs=docs)
    b = baselines(analysis.load(run).trials)
    assert len(b) == 1
    row = b.iloc[0]
    assert row["repeats"] == 3  # ok baselines only
    assert row["step time p50 (ms)"] == pytest.approx(11.0)  # median of 10, 14, 11 ms
    assert row["throughput (samples/s)"] == pytest.approx(round(64 / 0.011, 4))  # median of 64 / step time
    assert row["peak host memory (MiB)"] == pytest.approx(510.0)
    assert row["best val accuracy"] == pytest.approx(0.91)
    assert "peak device memory (MiB)" not in b.columns  # all null on a CPU: the column goes
    md = (analysis.write_report(run).parent / "summary.md").read_text()
    assert "| w | float32 | 3 | 11 | 5818 | 510 | 0.91 | True |" in md


def _curve():
    history = {"loss": [2.0, 1.0, 0.5, 0.4], "accuracy": [0.5, 0.8, 0.95, 0.97],
               "val_accuracy": [0.40, 0.70, 0.86, 0.84], "val_loss": [2.1, 1.2, 0.7, 0.8],
               "xent_loss": [1.9, 0.9, 0.45, 0.35], "val_xent_loss": [2.0, 1.1, 0.6, 0.7]}
    return curve_rows(history, epoch_wall_s=[1.5, 3.0, 4.5, 6.0], epoch_validation_s=[0.25, 0.25, 0.25, 0.25])


def test_convergence_curve_and_time_to_target_known_values():
    """Defect caught: time or epochs to target off by an epoch, validation time counted in the
    training wall time, a gap of the wrong sign, target_reached/time_to_target_or_budget_s wrong."""
    curve = _curve()
    assert [r["wall_s"] for r in curve] == [1.5, 3.0, 4.5, 6.0]
    assert [r["train_wall_s"] for r in curve] == pytest.approx([1.25, 2.5, 3.75, 5.0])
    assert curve[2]["val_xent_loss"] == 0.6 and curve[1]["xent_loss"] == 0.9
    c = summarize(curve, 0.85, True, stopped_epoch=4, final_train_accuracy=0.97, final_val_accuracy=0.84,
                  skipped_steps=3)
    assert c["epochs_to_target"] == 3 and c["time_to_target_s"] == 4.5  # first epoch with val >= 0.85
    assert c["target_reached"] is True and c["time_to_target_or_budget_s"] == 4.5
    assert c["best_val_accuracy"] == 0.86 and c["final_val_accuracy"] == 0.84
    assert c["generalization_gap"] == pytest.approx(0.13)  # train - val of the final model
    assert c["epochs_run"] == 4 and c["stopped_epoch"] == 4 and c["loss_scale_skipped_steps"] == 3
    assert c["null_reasons"] == {}
    exact = summarize(curve, 0.86, True, None, 0.97, 0.84, None)  # reaching the target exactly counts
    assert exact["epochs_to_target"] == 3 and exact["target_reached"] is True


def test_convergence_miss_scores_the_whole_budget():
    """Defect caught: a run that never reached the target looking fast (AlgoPerf: score the budget)."""
    c = summarize(_curve(), 0.9, True, None, 0.97, 0.84, None)
    assert c["target_reached"] is False and c["time_to_target_s"] is None and c["epochs_to_target"] is None
    assert c["time_to_target_or_budget_s"] == 6.0  # all four epochs, validation included
    assert c["null_reasons"]["time_to_target_s"] == "val accuracy never reached 0.9"
    na = summarize(_curve(), 0.85, False, None, None, None, None)
    assert na["time_to_target_or_budget_s"] is None and na["target_reached"] is None
    assert "not applicable" in na["null_reasons"]["best_val_accuracy"]


def test_time_to_target_overhead_counts_misses_as_the_budget(tmp_path):
    """The overhead table pairs time_to_target_or_budget_s: a regularizer that misses in 2 of 4
    repeats scores its whole training time there, and the note counts the hits."""
    docs = []
    for r in range(4):
        docs.append(synthetic.trial_doc(workload="w", setting="none", precision="float32", repeat=r,
                                        time_to_target_s=2.0))
        # train_s of trial_doc = step_time * 100 steps * 5 epochs = 5.0 s: the budget of a miss
        docs.append(synthetic.trial_doc(workload="w", setting="l2", precision="float32", repeat=r,
                                        time_to_target_s=3.0 if r < 2 else None))
    run = synthetic.write_run(tmp_path / "ttt", settings={}, extra_docs=docs)
    table = analysis.overhead(analysis.load(run).trials)
    row = _one(table, setting="l2", metric="time_to_target")
    assert row["estimate"] == pytest.approx(np.sqrt(1.5 * 2.5))  # geometric mean of 3/2, 3/2, 5/2, 5/2
    assert row["note"] == "reached the target: l2 2/4, baseline 4/4; a miss counts as its whole training time"


# ---- paired sessions: pairing by round, reference = the baselines (geometric mean of two, median of three)

TRUTH = {"l2": 1.10, "dropout": 1.25}
SKEW = 0.04  # each baseline instance is 4% off the truth, in opposite directions


@pytest.fixture(scope="module")
def sessions():
    return [synthetic.session_doc(session=k, truths=TRUTH, drift=DRIFT, instance_skew=SKEW, seed=2,
                                  same_step=("early_stopping",))
            for k in range(4)]


def test_session_records_really_drift(sessions):
    step = np.asarray(sessions[0]["blocks"]["step_time_s"]["none"])
    assert step.max() / step.min() > 1.5  # the rounds' drift dwarfs the tolerances below


def test_round_log_ratios_pair_within_the_round_against_both_baselines(sessions):
    """Defect caught: a reference that ignores the round (a session-wide baseline), only one of the
    two baseline instances, or blocks matched by rank rather than by round: the log ratios are then
    off by the round's drift, by the instance's own speed, or by the drift between mismatched rounds,
    not by 0.1% noise. Only the rounds a burst hit (at most 3 of 12 per setting) may be off."""
    for rec in sessions:
        ratios = paired.round_log_ratios(rec)
        assert set(ratios) == {"none (A/A)", "l2", "dropout"}
        for label, factor in TRUTH.items():
            assert len(ratios[label]) == 12
            exact = np.abs(ratios[label] - np.log(factor)) < 0.005
            assert exact.sum() >= 9, (label, np.round(ratios[label] - np.log(factor), 3))
        aa = np.abs(ratios["none (A/A)"] + 2 * SKEW) < 0.005  # second instance over first
        assert aa.sum() >= 10, ratios["none (A/A)"]


def test_paired_estimates_recover_the_truth_with_a_tight_interval(sessions):
    """Defect caught: session median or Student t over sessions computed on unpaired blocks, the
    wrong reference, or the A/A control not the noise floor it claims."""
    est = paired.estimates(sessions)
    for label, factor in TRUTH.items():
        r = _one(est, setting=label)
        assert r["n_sessions"] == 4 and r["rounds"] == 48
        assert r["estimate"] == pytest.approx(factor, rel=0.002)
        assert r["ci_low"] <= factor <= r["ci_high"] and r["half_width_pct"] < 0.5
        assert r["within_sd"] < 0.005 and r["mark"] == stats.SIGNIFICANT
    aa = _one(est, setting="none (A/A)")
    assert aa["estimate"] == pytest.approx(np.exp(-2 * SKEW), rel=0.002)
    same = _one(est, setting="early_stopping")  # same training step as the baseline: the A/A figure
    assert same["estimate"] == aa["estimate"] and "A/A control" in same["note"]


def test_session_estimate_matches_a_hand_computation(sessions):
    """The estimator as documented, by hand: per round log(block / sqrt(base1 * base2)), the
    session's median over rounds, the mean over sessions, t(0.975, sessions - 1) * sd / sqrt(n)."""
    from scipy import stats as st

    medians = []
    for rec in sessions:
        b = {k: np.asarray(v) for k, v in rec["blocks"]["step_time_s"].items()}
        medians.append(np.median(np.log(b["dropout"]) - 0.5 * (np.log(b["none"]) + np.log(b["none (A/A)"]))))
    m = np.asarray(medians)
    half = st.t.ppf(0.975, len(m) - 1) * m.std(ddof=1) / np.sqrt(len(m))
    r = _one(paired.estimates(sessions), setting="dropout")
    assert r["estimate"] == pytest.approx(np.exp(m.mean()), rel=1e-12)
    assert r["ci_low"] == pytest.approx(np.exp(m.mean() - half), rel=1e-12)
    assert r["ci_high"] == pytest.approx(np.exp(m.mean() + half), rel=1e-12)


def test_reference_is_the_median_of_three_baseline_instances():
    """Defect caught: a reference that averages the baseline instances, or ignores the third. One
    instance runs 20% slow (as 3 of 30 sessions of two back-to-back runs here had one): the median
    of three drops it and every ratio stays exact; the mean of the other two, or of all three,
    would move every ratio of the session by 10% or 6%. The A/A control still reports the slow
    instance (second over first)."""
    slow = np.log(1.2)
    docs = [synthetic.session_doc(session=k, truths=TRUTH, drift=DRIFT, seed=3, instance_log_speeds=(0.0, slow, 0.0))
            for k in range(4)]
    assert set(paired.round_log_ratios(docs[0])) == {"none (A/A)", "l2", "dropout"}
    est = paired.estimates(docs)
    for label, factor in TRUTH.items():
        r = _one(est, setting=label)
        assert r["estimate"] == pytest.approx(factor, rel=0.003) and r["half_width_pct"] < 0.5, (label, r["estimate"])
    assert _one(est, setting="none (A/A)")["estimate"] == pytest.approx(1.2, rel=0.003)


def test_report_takes_step_time_from_sessions_where_they_cover_the_cell(tmp_path, sessions):
    """Defect caught: session estimates filed under the wrong cell, or isolated-trial step times
    kept where sessions measured the cell. The isolated trials say l2 costs 1.5x, the sessions
    1.10x: the table must say 1.10x for step time and 1.5x (1/1.5) for throughput."""
    settings = {"none": (1.0, 1.0, 0.0), "l2": (1.5, 1.0, 0.0), "dropout": (1.5, 1.0, 0.0)}
    run = synthetic.write_run(tmp_path / "with-sessions", settings=settings, repeats=3, noise=NOISE,
                              precisions={"float32": 1.0})
    synthetic.write_sessions(run, sessions)
    data = analysis.load(run)
    assert len(data.sessions) == 4
    table = analysis.overhead(data.trials, sessions=data.sessions)
    for label, factor in TRUTH.items():
        st = _one(table, setting=label, metric="step_time")
        assert st["method"] == analysis.overheads.PAIRED and st["n_repeats"] == 4
        assert st["estimate"] == pytest.approx(factor, rel=0.002)
        tp = _one(table, setting=label, metric="steady_throughput")
        assert tp["method"] == analysis.overheads.ISOLATED and tp["estimate"] == pytest.approx(1 / 1.5, rel=0.005)
    over = pd.read_csv(analysis.write_report(run).parent / "overhead.csv")
    assert _one(over, setting="l2", metric="step_time")["estimate"] == pytest.approx(1.10, rel=0.002)
