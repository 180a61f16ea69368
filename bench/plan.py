"""What a run does, batch after batch: isolated trials, then paired sessions, then (with a CI
target) more sessions for the cell groups whose step-time interval is still too wide.

A batch finishes before the next starts, so paired sessions never share a node with a trial.
Everything is derived from the suite and from the records already in the store, so a resumed
run picks up where it stopped, in any phase.
"""
from __future__ import annotations

import dataclasses
import time

from bench.paired import Session, plan_sessions


@dataclasses.dataclass
class RunPlan:
    trials: list
    sessions: list  # the suite's planned sessions (adaptive ones are added as they are decided)
    target_ci_pct: float | None = None
    max_sessions: int = 8
    budget_s: float = 600.0
    added: list = dataclasses.field(default_factory=list)  # adaptive sessions, with the reason
    unmet: list = dataclasses.field(default_factory=list)  # groups still wider than the target

    @classmethod
    def of(cls, suite, trials, target_ci_pct: float | None = None) -> "RunPlan":
        spec = suite.paired
        if not spec:
            return cls(list(trials), [])
        target = target_ci_pct if target_ci_pct is not None else spec["target_ci_pct"]
        return cls(list(trials), plan_sessions(trials, spec), target, spec["max_sessions"], spec["budget_s"])

    @property
    def unit_count(self) -> int:
        return len(self.trials) + len(self.sessions) + len(self.added)

    def batches(self, store, progress=None):
        """Yield lists of units not yet in the store: trials, sessions, then adaptive sessions.

        An adaptive batch starts only if it is expected to end inside `budget_s`: its wall time is
        estimated from the previous session batch (seconds per session, whatever the parallelism),
        and cut to the widest groups that fit."""
        done = store.finished_ids("trial")
        yield [t for t in self.trials if t.unit_id not in done]
        done = store.finished_ids("session")
        planned = [s for s in self.sessions if s.unit_id not in done]
        t0 = time.monotonic()
        yield planned
        if not self.sessions or self.target_ci_pct is None:
            return
        per_session_s = (time.monotonic() - t0) / len(planned) if planned else None
        deadline = time.monotonic() + self.budget_s
        from analysis import paired

        while True:
            records = store.records("session")
            table = paired.estimates(records)  # once per step: every decision below reads it
            extra = self.more_sessions(records, table)
            if not extra:
                return
            if per_session_s is None:  # resumed after the planned sessions: the slowest case, one at a time
                walls = sorted(r.get("wall_s") or 0.0 for r in records if r.get("status") == "ok")
                per_session_s = walls[len(walls) // 2] if walls else 0.0
            fits = len(extra) if per_session_s <= 0 else int((deadline - time.monotonic()) // per_session_s)
            if fits < 1:
                self.unmet = paired.wide_groups(table, self.target_ci_pct)
                if progress is not None:
                    progress.note(f"paired: time budget ({self.budget_s:g} s) spent; {len(self.unmet)} cell "
                                  f"group(s) still wider than +-{self.target_ci_pct:g} points")
                return
            extra = self.widest_first(extra, table)[:fits]
            self.added += extra
            if progress is not None:
                progress.add(len(extra))
                progress.note(f"paired: {len(extra)} more session(s) for cell groups whose step-time CI is "
                              f"wider than +-{self.target_ci_pct:g} points")
            store.update_manifest(session_ids=[s.unit_id for s in self.sessions + self.added])
            t0 = time.monotonic()
            yield extra
            per_session_s = (time.monotonic() - t0) / len(extra)

    @staticmethod
    def widest_first(sessions: list[Session], table) -> list[Session]:
        """`sessions` ordered by their group's widest step-time half-width (`table`:
        analysis.paired.estimates), widest first."""
        widest = table.fillna({"half_width_pct": float("inf")}).groupby("group_id")["half_width_pct"].max()
        return sorted(sessions, key=lambda s: -widest.get(s.group_id, float("inf")))

    def more_sessions(self, records: list[dict], table=None) -> list[Session]:
        """One more session for each group still wider than the target and under its cap (`table`:
        analysis.paired.estimates of `records`, when the caller has it)."""
        from analysis import paired

        table = paired.estimates(records) if table is None else table
        wide = set(paired.wide_groups(table, self.target_ci_pct))
        count: dict[str, int] = {}
        for s in self.sessions + self.added:
            count[s.group_id] = count.get(s.group_id, 0) + 1
        template = {s.group_id: s for s in self.sessions}
        out = []
        for gid in sorted(wide):
            if count.get(gid, 0) >= self.max_sessions or gid not in template:
                continue
            t = template[gid]
            i = count[gid]
            base = dataclasses.replace(t.base, repeat=i, seed=t.base.seed - t.base.repeat + i)
            out.append(dataclasses.replace(t, base=base))
        self.unmet = sorted(g for g in wide if count.get(g, 0) >= self.max_sessions)
        return out
