"""A run's cost before it starts and while it runs: the expected seconds of its units
(bench/cost.py), what `plan` says of them and of what this machine skips (bench/plan.py
`describe`), and an ETA that weighs sessions as the work they are (bench/progress.py)."""
from __future__ import annotations

import io

import pytest

from bench import cost, progress as progress_mod
from bench.plan import describe, skipped_here
from bench.progress import Progress
from bench.suite import parse
from bench.units.session import MIN_BLOCK_STEPS, WARMUP_STEPS, Session, plan_sessions


def _suite(**fields):
    return parse({"name": "t", "workloads": ["digits_mlp"], "regularizers": ["none", "l2", "dropout"],
                  "precisions": ["float32", "mixed_float16"], "batch_sizes": [64], "repeats": 2,
                  "expected_trial_s": 4, "paired": {"sessions": 2}, **fields}, "t.yaml")


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def test_eta_weighs_each_unit_by_its_expected_seconds(monkeypatch):
    """Two trials of ~10 s and two sessions of ~100 s: once the first trial took its 10 s, 210 s
    are left, not 3 more trials' worth (30 s); a session that took 1.5x its expectation scales
    the sessions left, not the trials."""
    clock = Clock()
    monkeypatch.setattr(progress_mod.time, "monotonic", clock)
    p = Progress(4, stream=io.StringIO(), live=False)
    p.expect("trial", {"a": 10.0, "b": 10.0})
    p.expect("session", {"s1": 100.0, "s2": 100.0})
    clock.now += 10
    p.finished({"status": "ok", "trial_id": "a"})
    assert p.eta_s() == pytest.approx(10 + 200)
    clock.now += 10
    p.finished({"status": "ok", "trial_id": "b"})
    assert p.eta_s() == pytest.approx(200)
    p.expect("session", {"s1": 50.0, "s2": 50.0})  # refined from the measured trials
    assert p.eta_s() == pytest.approx(100)
    clock.now += 75
    p.finished({"status": "ok", "session_id": "s1"})
    assert p.eta_s() == pytest.approx(75)  # sessions take 1.5x their expectation here


def test_eta_without_expectations_is_the_plain_rate(monkeypatch):
    clock = Clock()
    monkeypatch.setattr(progress_mod.time, "monotonic", clock)
    p = Progress(4, stream=io.StringIO(), live=False)
    clock.now += 10
    p.finished({"status": "ok", "trial_id": "a"})
    assert p.eta_s() == pytest.approx(30)


def test_session_expected_seconds_are_bounded_by_its_budget():
    base = _suite().trials[0]
    s = Session(base=base, settings=((("l2", {"l2": 1e-4}),),), rounds=3, block_min_steps=50, block_min_s=0.3)
    models = 4
    setup = models * 2.0 + (models + 1) * WARMUP_STEPS * 0.01
    assert s.expected_s(0.01, 2.0) == pytest.approx(setup + 3 * models * 50 * 0.01)
    budgeted = Session(**{**s.__dict__, "budget_s": 10.0})
    assert budgeted.expected_s(0.01, 2.0) == pytest.approx(10.0)  # the rounds fill what the budget leaves
    slow = budgeted.expected_s(1.0, 2.0)  # not even one round fits: one round of the shortest blocks
    assert slow == pytest.approx(models * 2.0 + (models + 1) * WARMUP_STEPS + models * MIN_BLOCK_STEPS * 1.0)


def test_from_suite_and_from_measured_trials():
    suite = _suite(paired={"sessions": 2, "session_budget_s": 20})
    sessions = plan_sessions(suite.trials, suite.paired)
    skipped = {**skipped_here(suite, list(suite.trials)), **skipped_here(suite, sessions)}
    assert {t.precision for t in suite.trials if t.unit_id in skipped} == {"mixed_float16"}  # on a CPU
    est = cost.from_suite(suite, suite.trials, sessions, skipped)
    for u in [*suite.trials, *sessions]:
        ses = isinstance(u, Session)
        assert est.unit_s[u.unit_id] == (0.0 if u.unit_id in skipped else min(5 * 4.0, 20 + 4.0) if ses else 4.0)
    base = next(t for t in suite.trials if t.setting == "none" and t.precision == "float32")
    record = {"status": "ok", "trial": {**base.to_record(), "regularizers": []},
              "timing": {"data_s": 0.5, "build_s": 1.0, "first_step_s": 0.5, "step_time_p50_s": 0.002}}
    measured = cost.sessions_from_trials(sessions, [record])
    float32 = [s for s in sessions if s.base.precision == "float32"]
    assert set(measured) == {s.unit_id for s in float32}
    assert measured[float32[0].unit_id] == pytest.approx(0.5 + float32[0].expected_s(0.002, 1.5))


def test_plan_lists_trials_and_sessions_marks_what_is_skipped_here_and_says_where_durations_come_from():
    suite = _suite()
    out, err, found = describe(suite, list(suite.trials))
    trials = [line for line in out if not line.startswith("paired-")]
    sessions = [line for line in out if line.startswith("paired-")]
    assert len(trials) == 12 and len(sessions) == 4
    assert all(("skipped here: mixed_float16 on CPU" in line) == ("mixed_float16" in line) for line in out)
    assert all("paired: l2, dropout vs 3 baselines" in line or "paired: dropout, l2 vs 3 baselines" in line
               for line in sessions)
    assert err[0].startswith("12 trials (6 skipped here), 4 paired sessions (2 skipped here)")
    assert "expected: trials " in err[-1] and "sessions up to " in err[-1]
    assert err[-1].endswith("from the suite's expected_trial_s (4 s a trial; a session at most its budget or 4 s a model)")


def test_one_float16_slowdown_figure_is_quoted_where_a_trial_is_skipped():
    from bench.precision import FLOAT16_CPU_SLOWDOWN_X, skip_reason

    reason = skip_reason("mixed_float16", "cpu", "tensorflow", jit_compile=False)
    assert f"~{FLOAT16_CPU_SLOWDOWN_X}x slower than float32" in reason
