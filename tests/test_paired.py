"""Paired step-time sessions: the estimator against known truths, its coverage by simulation, the
noise-floor warning, the adaptive loop, and one real session in a fresh process."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest

from analysis import paired
from bench.units.session import AA_LABEL, THIRD_LABEL, Session, plan_sessions
from bench.plan import RunPlan
from bench.store import RunStore
from bench.suite import parse
from bench.trial import Trial

TRUTH = {"l2": 1.05, "dropout": 1.20, "batch_norm": 1.35}


def session_record(rng, index: int, truth=TRUTH, group="g1", precision="float32", rounds=3, base_s=1e-3,
                   instance_sd=0.03, round_sd=0.02, drift_sd=0.0, outlier_p=0.0) -> dict:
    """A session record in the format bench/units/session_run.py writes, with known true ratios.

    Every model instance (one per label per session) gets its own speed factor (instance_sd); each
    round a common drift factor hits all blocks of the round alike (drift_sd); each block gets its
    own noise (round_sd); with probability outlier_p a block runs 2x slow (steal time)."""
    labels = [AA_LABEL, "none", *truth]
    instance = {k: math.exp(rng.normal(0, instance_sd)) for k in labels}
    blocks = {k: [] for k in labels}
    for _ in range(rounds):
        drift = math.exp(rng.normal(0, drift_sd))
        for k in labels:
            slow = 2.0 if rng.random() < outlier_p else 1.0
            blocks[k].append(base_s * truth.get(k, 1.0) * instance[k] * drift * slow * math.exp(rng.normal(0, round_sd)))
    return {"schema_version": 1, "kind": "paired_session", "session_id": f"{group}-{precision}-s{index}",
            "status": "ok", "reason": None,
            "session": {"group_id": group, "workload": "w", "precision": precision, "batch_size": 64,
                        "backend": "tensorflow", "repeat": index, "labels": labels,
                        "cell_ids": {k: f"cell-{k}" for k in labels}, "same_step_as_baseline": []},
            "node": {"device_name": "cpu"}, "blocks": {"steps": 100, "order": [labels] * rounds, "step_time_s": blocks},
            "timing": {"baseline_step_time_s": base_s}}



def run_session_child(tmp_path, session) -> dict:
    """One session in a fresh interpreter, the executors' way (a CPU trial process); its record."""
    req, out = tmp_path / "req.json", tmp_path / "out.json"
    req.write_text(json.dumps({"kind": "session", "unit": session.to_dict(), "executor": "process", "gpu": False}))
    subprocess.run([sys.executable, "-m", "bench.executors.child", str(req), str(out)], check=True, timeout=300,
                   env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})
    return json.loads(out.read_text())

def test_estimates_recover_the_truth_through_round_drift():
    """Blocks of one round share the machine's state; the estimator pairs within the round, so a
    drift of 2x between rounds cancels (an estimator pairing across rounds would be off by far more)."""
    rng = np.random.default_rng(1)
    records = [session_record(rng, i, instance_sd=0.0, round_sd=0.002, drift_sd=0.7) for i in range(3)]
    table = paired.estimates(records).set_index("setting")
    for setting, ratio in TRUTH.items():
        assert table.loc[setting, "estimate"] == pytest.approx(ratio, rel=0.01)
        assert table.loc[setting, "ci_low"] <= ratio <= table.loc[setting, "ci_high"]
    assert table.loc[AA_LABEL, "estimate"] == pytest.approx(1.0, abs=0.01)


def test_interval_coverage_by_simulation_with_instance_effects_and_outliers():
    """Data shaped like this machine's: 3% model-instance effects, 2% block noise, 3% of blocks 2x
    slow. Over 200 simulated cells of 4 sessions x 3 rounds the nominal 95% interval must cover the
    truth 90-99% of the time."""
    rng = np.random.default_rng(7)
    hits, cells = 0, 200
    for _ in range(cells):
        records = [session_record(rng, i, truth={"dropout": 1.2}, outlier_p=0.03) for i in range(4)]
        row = paired.estimates(records).set_index("setting").loc["dropout"]
        hits += row["ci_low"] <= 1.2 <= row["ci_high"]
    assert 0.90 <= hits / cells <= 0.99, hits / cells


def test_rounds_are_not_independent_units_sessions_are():
    """With 3% instance effects and 1% block noise, an interval that treats every round as an
    independent sample (ignoring that the rounds of a session share its model instances) covers the
    truth far less than 95%; the session t interval does not."""
    rng = np.random.default_rng(8)
    pooled = sessions = 0
    cells = 200
    for _ in range(cells):
        records = [session_record(rng, i, truth={"dropout": 1.2}, round_sd=0.01) for i in range(4)]
        rounds = np.concatenate([paired.round_log_ratios(r)["dropout"] for r in records])
        pooled += abs(rounds.mean() - np.log(1.2)) <= 1.96 * rounds.std(ddof=1) / np.sqrt(len(rounds))
        row = paired.estimates(records).set_index("setting").loc["dropout"]
        sessions += row["ci_low"] <= 1.2 <= row["ci_high"]
    assert pooled / cells < 0.85 and sessions / cells >= 0.9, (pooled / cells, sessions / cells)


def test_simulated_coverage_reports_the_run_shape():
    rng = np.random.default_rng(3)
    records = [session_record(rng, i) for i in range(6)]
    cov = paired.simulated_coverage(records, n_sim=1000)
    assert cov["sessions"] == 6 and cov["rounds"] == 3
    assert 0.9 <= cov["simulated"] <= 0.99
    assert cov["between_session_sd"] > 0.01  # the 3% instance effects are seen as between-session spread


def test_noise_floor_warns_when_the_a_a_control_is_wide_or_off():
    rng = np.random.default_rng(5)
    quiet = paired.estimates([session_record(rng, i, instance_sd=0.002, round_sd=0.002) for i in range(4)])
    noisy = paired.estimates([session_record(rng, i, instance_sd=0.08) for i in range(4)])
    assert not any(line.startswith("WARNING") for line in paired.noise_lines(quiet))
    line = paired.noise_lines(noisy)[0]
    assert line.startswith("WARNING: the result may be unstable") and "A/A" in line


def test_noise_floor_warns_when_the_settings_move_between_sessions_and_the_a_a_does_not():
    """A busy stretch slows the heavier models more than the baseline: the A/A stays clean while
    every overhead spreads between sessions. Defect caught: a run like that printed as stable."""
    rng = np.random.default_rng(11)
    quiet = [session_record(rng, i, instance_sd=0.01, round_sd=0.01) for i in range(7)]
    busy = [session_record(rng, i, truth={k: v ** (1.8 if i in (1, 3, 4) else 1.0) for k, v in TRUTH.items()},
                           instance_sd=0.01, round_sd=0.01) for i in range(7)]
    assert not any(line.startswith("WARNING") for line in paired.noise_lines(paired.estimates(quiet)))
    aa, spread = paired.noise_lines(paired.estimates(busy))
    assert not aa.startswith("WARNING") and "A/A" in aa
    assert spread.startswith("WARNING: the result may be unstable") and "moved between sessions" in spread
    assert len(paired.noise_lines(paired.estimates(busy), target_half_width_pct=50)) == 1  # within a loose target


def test_a_setting_with_the_baselines_training_step_reports_the_a_a_figure():
    rng = np.random.default_rng(2)
    records = [session_record(rng, i) for i in range(3)]
    for r in records:
        r["session"]["same_step_as_baseline"] = ["early_stopping"]
        r["session"]["cell_ids"]["early_stopping"] = "cell-es"
    table = paired.estimates(records).set_index("setting")
    assert table.loc["early_stopping", "estimate"] == table.loc[AA_LABEL, "estimate"]
    assert "A/A control" in table.loc["early_stopping", "note"]


def _suite(**paired_fields):
    return parse({"name": "t", "workloads": ["digits_mlp"], "regularizers": ["none", "l2", "early_stopping"],
                  "precisions": ["float32", "mixed_bfloat16"], "batch_sizes": [64], "repeats": 2,
                  "paired": {"sessions": 2, "rounds": 3, **paired_fields}}, "t.yaml")


def test_sessions_are_planned_per_cell_group_with_early_stopping_untimed():
    suite = _suite()
    sessions = plan_sessions(suite.trials, suite.paired)
    assert len(sessions) == 2 * 2  # 2 precisions x 2 sessions
    s = sessions[0]
    assert [lbl for lbl in s.labels] == ["l2"] and [dict(x) for x in s.same_step] == [{"early_stopping": s.same_step[0][0][1]}]
    assert len({x.unit_id for x in sessions}) == 4 and len({x.group_id for x in sessions}) == 2
    assert Session.from_dict(json.loads(json.dumps(s.to_dict()))) == s
    # the timed setting's cell id is the isolated trials' cell id: analysis files the estimate there
    l2_trial = next(t for t in suite.trials if t.setting == "l2" and t.precision == s.base.precision)
    assert s.trial_for(s.settings[0]).cell_id == l2_trial.cell_id


def test_adaptive_plan_adds_sessions_only_where_the_interval_is_wide(tmp_path):
    suite = _suite(target_ci_pct=3, max_sessions=3, budget_s=60)
    plan = RunPlan.of(suite, suite.trials)
    groups = {s.base.precision: s.group_id for s in plan.sessions}
    rng = np.random.default_rng(11)
    narrow = [session_record(rng, i, truth={"l2": 1.05}, group=groups["float32"], instance_sd=0.001, round_sd=0.001)
              for i in range(2)]
    wide = [session_record(rng, i, truth={"l2": 1.05}, group=groups["mixed_bfloat16"], precision="mixed_bfloat16",
                           instance_sd=0.2) for i in range(2)]
    store = RunStore.create(tmp_path, suite.resolved, [t.trial_id for t in suite.trials])
    for rec in narrow + wide:
        store.write_record("session", rec)
    extra = plan.more_sessions(store.records("session"))
    assert [s.base.precision for s in extra] == ["mixed_bfloat16"] and extra[0].base.repeat == 2
    plan.added += extra
    assert plan.more_sessions(store.records("session")) == []  # the cap of 3 sessions is reached
    assert plan.unmet == [groups["mixed_bfloat16"]]


class _Notes:
    def __init__(self):
        self.lines, self.added = [], 0

    def note(self, line):
        self.lines.append(line)

    def add(self, n):
        self.added += n

    def expect(self, kind, expected_s):
        self.expected = {**getattr(self, "expected", {}), **expected_s}


def test_adaptive_sessions_start_only_when_expected_to_end_inside_the_budget(tmp_path, monkeypatch):
    """Seconds per session come from the previous batch; a batch that would overrun is cut to the
    widest groups, and none starts once not even one session fits."""
    import types

    import bench.plan

    clock = [0.0]
    monkeypatch.setattr(bench.plan, "time", types.SimpleNamespace(monotonic=lambda: clock[0]))
    suite = _suite(target_ci_pct=3, max_sessions=8, budget_s=60)
    plan = RunPlan.of(suite, suite.trials)
    groups = {s.base.precision: s.group_id for s in plan.sessions}
    store = RunStore.create(tmp_path, suite.resolved, [t.trial_id for t in suite.trials])
    rng = np.random.default_rng(5)
    index = [0]

    def run(sessions, wall_s, sd_of):
        clock[0] += wall_s
        for s in sessions:
            store.write_record("session", session_record(rng, index[0], truth={"l2": 1.05}, group=s.group_id,
                                                         precision=s.base.precision, instance_sd=sd_of[s.base.precision]))
            index[0] += 1

    sd = {"float32": 0.1, "mixed_bfloat16": 0.3}  # both wide, bf16 wider
    notes = _Notes()
    gen = plan.batches(store, notes)
    next(gen)  # the isolated trials (none run here)
    planned = next(gen)
    assert len(planned) == 4
    run(planned, 40.0, sd)  # 10 s per session
    first = next(gen)  # 60 s left: both wide groups fit
    assert sorted(s.base.precision for s in first) == ["float32", "mixed_bfloat16"]
    run(first, 40.0, sd)  # 20 s per session, 20 s left: one fits, the widest group's
    second = next(gen)
    assert [s.base.precision for s in second] == ["mixed_bfloat16"]
    run(second, 20.0, sd)  # 0 s left
    with pytest.raises(StopIteration):
        next(gen)
    assert sorted(plan.unmet) == sorted(groups.values())
    assert any("time budget (60 s) spent" in line for line in notes.lines) and notes.added == 3


def test_run_budget_ends_the_added_sessions_on_time_when_the_run_started_slow(tmp_path, monkeypatch):
    """`run_budget_s` counts from the run's start: trials and planned sessions that ran slow leave
    fewer added waves, and none starts that would end past it. Defect caught: a slow day's run
    going over its wall-time promise because the adaptive budget only started after the planned
    sessions."""
    import types

    import bench.plan

    clock = [0.0]
    monkeypatch.setattr(bench.plan, "time", types.SimpleNamespace(monotonic=lambda: clock[0]))
    suite = _suite(target_ci_pct=3, max_sessions=8, budget_s=100, run_budget_s=115)
    plan = RunPlan.of(suite, suite.trials)
    assert plan.run_budget_s == 115 and plan.started == 0.0
    store = RunStore.create(tmp_path, suite.resolved, [t.trial_id for t in suite.trials])
    rng = np.random.default_rng(5)
    notes = _Notes()
    gen = plan.batches(store, notes)
    next(gen)
    clock[0] += 60.0  # the isolated trials took 60 s
    planned = next(gen)
    clock[0] += 40.0  # 4 planned sessions, one at a time: a wave is 10 s; 15 s left of the run's 115
    sd = {"float32": 0.1, "mixed_bfloat16": 0.3}  # both groups wide, bf16 wider
    for i, s in enumerate(planned):
        store.write_record("session", session_record(rng, i, truth={"l2": 1.05}, group=s.group_id,
                                                     precision=s.base.precision, instance_sd=sd[s.base.precision]))
    extra = next(gen)  # the phase budget (100 s) would fit both groups' sessions; the run's, one wave
    assert [s.base.precision for s in extra] == ["mixed_bfloat16"]
    clock[0] += 10.0
    with pytest.raises(StopIteration):
        next(gen)
    assert any("run time budget (115 s from its start) spent" in line for line in notes.lines)


def test_one_real_session_in_a_fresh_process(tmp_path):
    """A real session: every model built and timed, rounds in a seeded random order, the A/A twin
    and the third baseline instance."""

    base = Trial(workload="digits_mlp", regularizers=(), precision="float32", batch_size=64, cpu_threads=1, seed=1000)
    session = Session(base=base, settings=((("l2", {"l2": 1e-4}),), (("dropout", {"rate": 0.3}),)),
                      rounds=4, block_min_steps=5, block_min_s=0.01)
    rec = run_session_child(tmp_path, session)
    assert rec["status"] == "ok", rec.get("reason")
    labels = {AA_LABEL, THIRD_LABEL, "none", "l2", "dropout"}
    assert set(rec["blocks"]["step_time_s"]) == labels and set(rec["blocks"]["build_order"]) == labels
    order = rec["blocks"]["order"]
    assert len(order) == 4 and all(sorted(r) == sorted(labels) for r in order)
    assert len({tuple(r) for r in order}) > 1  # not the same order every round
    assert all(len(v) == 4 and min(v) > 0 for v in rec["blocks"]["step_time_s"].values())
    assert rec["process"]["dtype_policy_at_start"] == "float32"
    assert rec["timing"]["measured_s"] > 0
    assert rec["budget"]["reason"] is None and rec["budget"]["run"] == {"rounds": 4, "block_steps": rec["blocks"]["steps"]}


def test_validate_checks_session_files_against_their_schema_and_the_manifest(tmp_path):
    from bench.schema import check_run

    suite = _suite()
    store = RunStore.create(tmp_path, suite.resolved, [])
    rng = np.random.default_rng(0)
    good, bad = session_record(rng, 0), session_record(rng, 1)
    for rec in (good, bad):
        rec["node"] = {"hostname": "h", "device_kind": "cpu", "device_name": "cpu", "executor": "process"}
        rec["timing"]["measured_s"] = 1.0
    bad["blocks"]["step_time_s"]["l2"][0] = -1.0
    store.update_manifest(session_ids=[good["session_id"], bad["session_id"], "never-ran"])
    for rec in (good, bad):
        store.write_record("session", rec)
    (store.unit_dir("session") / "notes.txt").write_text("x")
    lines = [str(p) for p in check_run(store.path).problems]
    assert any(bad["session_id"] in line and "blocks.step_time_s.l2" in line for line in lines), lines
    assert any("never-ran.json: missing" in line for line in lines)
    assert any("notes.txt: stray file" in line for line in lines)
    assert not any(good["session_id"] in line for line in lines)


def test_adaptive_batches_fill_the_slots_the_planned_sessions_ran_in(tmp_path, monkeypatch):
    """The planned sessions ran two at a time (4 sessions of 20 s in 40 s): when one group alone is
    still wide, it gets two sessions at once instead of one beside an idle slot; the budget is
    counted in waves of sessions side by side, not in sessions."""
    import types

    import bench.plan

    clock = [0.0]
    monkeypatch.setattr(bench.plan, "time", types.SimpleNamespace(monotonic=lambda: clock[0]))
    suite = _suite(target_ci_pct=3, max_sessions=8, budget_s=200)
    plan = RunPlan.of(suite, suite.trials)
    store = RunStore.create(tmp_path, suite.resolved, [t.trial_id for t in suite.trials])
    rng = np.random.default_rng(7)
    sd = {"float32": 0.001, "mixed_bfloat16": 0.3}  # float32 narrow, bf16 wide

    def run(sessions, wall_s, each_s):
        clock[0] += wall_s
        for s in sessions:
            rec = session_record(rng, s.base.repeat, truth={"l2": 1.05}, group=s.group_id, precision=s.base.precision,
                                 instance_sd=sd[s.base.precision], round_sd=sd[s.base.precision])
            rec.update(session_id=s.unit_id, wall_s=each_s)
            store.write_record("session", rec)

    gen = plan.batches(store, _Notes())
    next(gen)
    planned = next(gen)
    assert len(planned) == 4
    run(planned, 40.0, 20.0)
    extra = next(gen)
    assert [(s.base.precision, s.base.repeat) for s in extra] == [("mixed_bfloat16", 2), ("mixed_bfloat16", 3)]
    assert len({s.unit_id for s in extra}) == 2
    # that wave took 110 s and 90 s of the budget are left (240 - 150): a lone session would take a
    # wave's 110 s, not half of it (110 s / 2 sessions), so none more starts
    run(extra, 110.0, 110.0)
    with pytest.raises(StopIteration):
        next(gen)


def test_a_wave_counts_only_the_sessions_that_ran():
    """Four planned sessions, two of them skipped at no cost (a precision this CPU does not run),
    the other two side by side in 20 s: one wave of 20 s, not two of 10 s (which would let the
    first added batch start with half the time it needs)."""
    from bench.plan import _pace

    suite = _suite()
    sessions = plan_sessions(suite.trials, suite.paired)[:4]
    records = [{"session_id": s.unit_id, "status": "skipped" if i < 2 else "ok", "wall_s": 0.0 if i < 2 else 20.0}
               for i, s in enumerate(sessions)]
    assert _pace(records, sessions, 20.0) == (2, 20.0)


# ---- a session's time budget: shorter blocks, then fewer rounds, recorded ----------------------

def test_fit_rounds_shortens_blocks_then_rounds_to_fit_the_time_left():
    from bench.units.session_run import MIN_BLOCK_STEPS, fit_rounds

    assert fit_rounds(3, 50, 0.01, None) == (3, 50, None)  # no budget: as planned
    assert fit_rounds(3, 50, 0.01, 1.5) == (3, 50, None)  # 3 x 50 x 0.01 s = 1.5 s fits exactly
    rounds, steps, why = fit_rounds(3, 50, 0.01, 0.9)  # blocks shortened first, rounds kept
    assert (rounds, steps) == (3, 30) and "1.5" not in why and "3 round(s) of 50-step blocks" in why
    rounds, steps, why = fit_rounds(3, 50, 0.1, 2.0)  # even MIN_BLOCK_STEPS-step blocks: 3 rounds need 3 s
    assert (rounds, steps) == (2, MIN_BLOCK_STEPS) and why
    assert fit_rounds(3, 50, 0.1, -5.0)[:2] == (1, MIN_BLOCK_STEPS)  # spent before the rounds: one round still
    assert fit_rounds(3, 4, 1.0, 0.5)[:2] == (1, 4)  # never longer blocks than planned
    # the blocks' fit overhead counts: 0.1 s a round leaves 0.2 s of each round's 0.3 s for steps
    assert fit_rounds(3, 50, 0.01, 0.9, round_fixed_s=0.1)[:2] == (3, 20)
    assert fit_rounds(3, 50, 0.01, 1.5, round_fixed_s=0.2)[:2] == (3, 30)
    assert fit_rounds(3, 50, 0.1, 2.0, round_fixed_s=1.0)[:2] == (1, MIN_BLOCK_STEPS)  # 2 s a round: one fits
    for rounds, steps, step_s, left_s in ((5, 200, 0.02, 7.0), (3, 50, 0.3, 20.0), (12, 80, 0.004, 1.0)):
        r, s, _ = fit_rounds(rounds, steps, step_s, left_s)  # the rounds fit, unless a floor holds them
        assert r <= rounds and s <= steps and (r * s * step_s <= left_s or (r == 1 or s == MIN_BLOCK_STEPS))


def test_a_session_past_its_budget_runs_fewer_shorter_blocks_and_records_why(tmp_path):
    """A budget smaller than the build itself: the session still times one round of short blocks,
    and its record says what was planned, what ran and why."""

    from bench.units.session_run import MIN_BLOCK_STEPS

    base = Trial(workload="digits_mlp", regularizers=(), precision="float32", batch_size=64, cpu_threads=1, seed=1000)
    session = Session(base=base, settings=((("l2", {"l2": 1e-4}),),), rounds=4, block_min_steps=40,
                      block_min_s=0.01, budget_s=0.05)
    rec = run_session_child(tmp_path, session)
    assert rec["status"] == "ok", rec.get("reason")
    budget = rec["budget"]
    assert budget["session_budget_s"] == 0.05 and budget["planned"] == {"rounds": 4, "block_steps": 40}
    assert budget["run"] == {"rounds": 1, "block_steps": MIN_BLOCK_STEPS} and "session budget" in budget["reason"]
    assert rec["blocks"]["steps"] == MIN_BLOCK_STEPS and len(rec["blocks"]["order"]) == 1
    assert rec["blocks"]["warmup_steps"] == 2  # past the budget after the first model: the shortest warm-up
    assert all(len(v) == 1 for v in rec["blocks"]["step_time_s"].values())
    assert rec["session"]["budget_s"] == 0.05  # the session as planned, in its record


def test_suite_sessions_carry_the_session_budget():
    assert all(s.budget_s == 60.0 for s in plan_sessions(_suite().trials, _suite().paired))  # the default
    suite = _suite(session_budget_s=5)
    assert {s.budget_s for s in plan_sessions(suite.trials, suite.paired)} == {5.0}
    assert Session.from_dict(json.loads(json.dumps(plan_sessions(suite.trials, suite.paired)[0].to_dict()))).budget_s == 5.0
    with pytest.raises(Exception, match=r"paired.session_budget_s: -1 is not a number"):
        _suite(session_budget_s=-1)
