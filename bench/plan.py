"""What a run does, batch after batch: isolated trials, then paired sessions, then (with a CI
target) more sessions for the cell groups whose step-time interval is still too wide.

A batch finishes before the next starts, so paired sessions never share a node with a trial.
Everything is derived from the suite and from the records already in the store, so a resumed
run picks up where it stopped, in any phase.
"""
from __future__ import annotations

import dataclasses
import time

from bench import cost, session_estimates
from bench.units import runners
from bench.units.session import Session, plan_sessions


@dataclasses.dataclass
class RunPlan:
    trials: list
    sessions: list  # the suite's planned sessions (adaptive ones are added as they are decided)
    target_ci_pct: float | None = None
    max_sessions: int = 8
    budget_s: float = 600.0
    run_budget_s: float | None = None  # the added sessions also end within this much of `started`
    started: float = dataclasses.field(default_factory=lambda: time.monotonic())  # when this invocation planned
    added: list = dataclasses.field(default_factory=list)  # adaptive sessions, with the reason
    unmet: list = dataclasses.field(default_factory=list)  # groups still wider than the target
    suite: object = None  # the suite planned (the ETA's expectations: bench/cost.py)

    @classmethod
    def of(cls, suite, trials, target_ci_pct: float | None = None) -> "RunPlan":
        spec = suite.paired
        if not spec:
            return cls(list(trials), [], suite=suite)
        target = target_ci_pct if target_ci_pct is not None else spec["target_ci_pct"]
        return cls(list(trials), plan_sessions(trials, spec), target, spec["max_sessions"], spec["budget_s"],
                   spec.get("run_budget_s"), suite=suite)

    @property
    def unit_count(self) -> int:
        return len(self.trials) + len(self.sessions) + len(self.added)

    def batches(self, store, progress=None):
        """Yield lists of units not yet in the store: trials, sessions, then adaptive sessions.

        An adaptive batch starts only if it is expected to end inside `budget_s` (counted from the
        end of the planned sessions) and, with `run_budget_s`, within that much of the run's start
        (this invocation's: trials and planned sessions included, so a slow day ends on time). The previous
        session batch says how many sessions run side by side and how long one wave of them takes
        (whatever the executor and the cluster); a batch is cut to the widest groups that fit in
        the waves left. When fewer groups are wide than sessions run side by side, each wide group
        gets several sessions, so no slot idles."""
        done = store.finished_ids("trial")
        trials = [t for t in self.trials if t.unit_id not in done]
        done = store.finished_ids("session")
        planned = [s for s in self.sessions if s.unit_id not in done]
        skipped: dict = {}
        if progress is not None and self.suite is not None:  # the ETA weighs each unit by its expected seconds
            skipped = {**skipped_here(self.suite, trials), **skipped_here(self.suite, planned)}
            expected = cost.from_suite(self.suite, trials, planned, skipped).unit_s
            progress.expect("trial", {t.unit_id: expected[t.unit_id] for t in trials})
            progress.expect("session", {s.unit_id: expected[s.unit_id] for s in planned})
        yield trials
        if progress is not None and planned:  # the cells' baseline trials measured: sessions' seconds from them
            measured = cost.sessions_from_trials(planned, store.records("trial"))
            progress.expect("session", {uid: 0.0 if uid in skipped else v for uid, v in measured.items()})
        t0 = time.monotonic()
        yield planned
        if not self.sessions or self.target_ci_pct is None:
            return
        batch, batch_wall_s = planned, time.monotonic() - t0
        side_by_side, wave_s = 1, None
        deadline, spent = time.monotonic() + self.budget_s, f"time budget ({self.budget_s:g} s)"
        if self.run_budget_s is not None and self.started + self.run_budget_s < deadline:
            deadline, spent = self.started + self.run_budget_s, f"run time budget ({self.run_budget_s:g} s from its start)"
        while True:
            records = store.records("session")
            if batch:
                ran, wave_s = _pace(records, batch, batch_wall_s)
                side_by_side = max(side_by_side, ran)
            table = session_estimates.estimates(records)  # once per step: every decision below reads it
            extra = self.more_sessions(records, table, slots=side_by_side)
            if not extra:
                return
            if wave_s is None:  # resumed after the planned sessions: the slowest case, one at a time
                walls = sorted(r.get("wall_s") or 0.0 for r in records if r.get("status") == "ok")
                wave_s = walls[len(walls) // 2] if walls else 0.0
            fits = len(extra) if wave_s <= 0 else int((deadline - time.monotonic()) // wave_s) * side_by_side
            if fits < 1:
                self.unmet = session_estimates.wide_groups(table, self.target_ci_pct)
                if progress is not None:
                    progress.note(f"paired: {spent} spent; {len(self.unmet)} cell "
                                  f"group(s) still wider than +-{self.target_ci_pct:g} points")
                return
            extra = self.widest_first(extra, table)[:fits]
            self.added += extra
            if progress is not None:
                progress.add(len(extra))
                progress.expect("session", {s.unit_id: wave_s for s in extra})  # a session lasts about a wave
                progress.note(f"paired: {len(extra)} more session(s) for cell groups whose step-time CI is "
                              f"wider than +-{self.target_ci_pct:g} points")
            store.update_manifest(session_ids=[s.unit_id for s in self.sessions + self.added])
            t0 = time.monotonic()
            yield extra
            batch, batch_wall_s = extra, time.monotonic() - t0

    @staticmethod
    def widest_first(sessions: list[Session], table) -> list[Session]:
        """`sessions` ordered by their group's widest step-time half-width (`table`:
        bench.session_estimates.estimates), widest first."""
        widest = table.fillna({"half_width_pct": float("inf")}).groupby("group_id")["half_width_pct"].max()
        return sorted(sessions, key=lambda s: -widest.get(s.group_id, float("inf")))

    def more_sessions(self, records: list[dict], table=None, slots: int = 1) -> list[Session]:
        """More sessions for the groups still wider than the target, within their cap: one each, or
        enough to fill `slots` sessions side by side when fewer groups are wide (`table`:
        bench.session_estimates.estimates of `records`, when the caller has it)."""
        table = session_estimates.estimates(records) if table is None else table
        wide = set(session_estimates.wide_groups(table, self.target_ci_pct))
        per_group = -(-slots // max(len(wide), 1))
        count: dict[str, int] = {}
        for s in self.sessions + self.added:
            count[s.group_id] = count.get(s.group_id, 0) + 1
        template = {s.group_id: s for s in self.sessions}
        out = []
        for gid in sorted(wide):
            if count.get(gid, 0) >= self.max_sessions or gid not in template:
                continue
            t = template[gid]
            for i in range(count[gid], min(count[gid] + per_group, self.max_sessions)):
                base = dataclasses.replace(t.base, repeat=i, seed=t.base.seed - t.base.repeat + i)
                out.append(dataclasses.replace(t, base=base))
        self.unmet = sorted(g for g in wide if count.get(g, 0) >= self.max_sessions)
        return out


def _pace(records: list[dict], batch: list, wall_s: float) -> tuple[int, float]:
    """(how many sessions of `batch` ran side by side, the wall time of one wave of them): their
    summed process wall time (from the session `records`) over the batch's wall time (1 when
    unknown, and then a wave is one session), the batch's wall time over its number of waves.
    Sessions recorded as skipped (a precision this device does not run) took no wave."""
    ids = {s.unit_id for s in batch}
    ran = [r for r in records if r.get("session_id") in ids and r.get("status") != "skipped"]
    busy_s = sum(r.get("wall_s") or 0.0 for r in ran)
    side_by_side = max(1, round(busy_s / wall_s)) if wall_s > 0 else 1
    return side_by_side, wall_s / -(-(len(ran) or len(batch)) // side_by_side)


# ---- what a run of a suite would do here, before it starts (`regbench plan`) -----------------

def skipped_here(suite, units) -> dict[str, str]:
    """unit_id -> why this machine would record it as skipped (its precision on this device),
    decided as the executors decide it, without a trial process."""
    slots = _slots(suite, units[0].kind) if units else [None]
    out = {}
    for u in units:
        gpu = u.device == "gpu" or (u.device is None and any(s is not None for s in slots))
        record = runners.precheck(u, "process", gpu)
        if record is not None:
            out[u.unit_id] = record["reason"]
    return out


def _slots(suite, kind: str) -> list:
    """The process executor's slots here for units of `kind` (one CPU slot where it would refuse
    the suite: the run says why)."""
    from bench.errors import UserError
    from bench.executors.local import slots_for

    try:
        return slots_for(suite, kind)
    except UserError:
        return [None]


def describe(suite, trials, calibrate: bool = False, note=None) -> tuple[list[str], list[str], dict]:
    """(stdout lines: one per trial, then one per planned session, each marked where this machine
    skips it; stderr lines: the counts and the expected durations, and their source; the
    bench.cost.Estimate and skip reasons, for --json)."""
    plan = RunPlan.of(suite, trials)
    skipped = {**skipped_here(suite, plan.trials), **skipped_here(suite, plan.sessions)}
    if calibrate:
        gpu_slot = next((s for s in _slots(suite, "trial") if s is not None), None)
        estimate = cost.calibrate(plan.trials, plan.sessions, skipped, gpu_slot, note)
    else:
        estimate = cost.from_suite(suite, plan.trials, plan.sessions, skipped)
    mark = lambda u: f"\tskipped here: {skipped[u.unit_id]}" if u.unit_id in skipped else ""  # noqa: E731
    out = [f"{t.trial_id}\t{t.workload}\t{t.setting}\t{t.precision}\tb{t.batch_size}\tr{t.repeat}{mark(t)}"
           for t in plan.trials]
    out += [f"{s.unit_id}\t{s.base.workload}\tpaired: {', '.join(s.labels) or '-'} vs 3 baselines\t{s.base.precision}"
            f"\tb{s.base.batch_size}\ts{s.base.repeat}{mark(s)}" for s in plan.sessions]
    n_skip = lambda units: sum(u.unit_id in skipped for u in units)  # noqa: E731
    reasons = sorted({skipped[u.unit_id] for u in plan.trials if u.unit_id in skipped})
    slots_t, slots_s = len(_slots(suite, "trial")), len(_slots(suite, "session"))
    trials_s = estimate.startup_s + estimate.batch_wall_s(plan.trials, slots_t)
    sessions_s = estimate.batch_wall_s(plan.sessions, slots_s)
    budget = (suite.paired or {}).get("session_budget_s")
    err = [f"{len(plan.trials)} trials ({n_skip(plan.trials)} skipped here), {len(plan.sessions)} paired sessions "
           f"({n_skip(plan.sessions)} skipped here) ({suite.name}, backend {suite.resolved['backend']})"]
    err += [f"skipped here: {r}" for r in reasons]
    err.append(f"expected: trials {cost.minutes(trials_s)} ({slots_t} side by side), sessions "
               f"{'up to ' if estimate.sessions_bounded else ''}{cost.minutes(sessions_s)} "
               f"({slots_s} side by side{f', each at most ~{budget:g} s of timing' if budget else ''}); "
               f"from {estimate.source}")
    return out, err, {"estimate": estimate, "skipped": skipped, "plan": plan}
