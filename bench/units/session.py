"""The paired session unit: the baseline and every regularized model of one cell, timed in short
alternating blocks inside ONE fresh process; its plan and its ratio rule. How it is timed:
bench/units/session_run.py.

Why: on a shared machine fresh processes differ by 7-19% CV in step time, so a ratio of two
separate trials carries that whole between-process spread. Inside one process the baseline and
the regularized model run under the same conditions, block after block, so their ratio does not.
Memory, energy, convergence and end-to-end figures still come from isolated trials (runner.py);
a session measures one thing: each setting's steady-state step time relative to the baseline.

The ratio of a setting is formed per round: its block against the median of the three baseline
models' blocks of that round. Each model instance has its own speed, a few percent either way on
a shared VM and now and then 14-22% off (two back-to-back runs: 3 of 30 sessions had an A/A
ratio beyond 5%), and every ratio of the session shares the reference: the median of three
instances drops one such instance, where the mean of two moved every ratio of its session by
half of it. The session's estimate is the median over rounds, which resists blocks hit by a
burst of steal time (`round_log_ratios`, shared with the estimates). Across sessions (each one a new
set of instances), bench/session_estimates.py combines the session estimates; the A/A ratio
(second baseline over first) is the noise floor.

A setting whose training step is the baseline's (early stopping only acts at epoch ends: its cost
is the validation pass) is not timed again: its step-time figure is the A/A control, and its
real cost shows in the end-to-end throughput of the isolated trials.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math

import numpy as np

from bench import SCHEMA_VERSION
from bench.regularizers import Recipe, recipe_for, setting_label
from bench.trial import Trial, canonical_json, now_iso

AA_LABEL = "none (A/A)"  # the second baseline model: its ratio to the baseline is the noise floor
THIRD_LABEL = "none (3rd)"  # the third baseline model: with the other two, the reference of every ratio
WARMUP_STEPS = 10  # a warm-up block: enough to trace and compile, short for a slow model
MIN_BLOCK_STEPS = 10  # a block the budget shortens keeps this many steps (its median still drops a slow one)


@dataclasses.dataclass(frozen=True)
class Session:
    """One paired session: the cell's baseline `base` and the regularizer `settings` timed against it."""

    base: Trial  # the cell's baseline trial (regularizers=()); its repeat is the session index
    settings: tuple  # regularizer settings timed, each a tuple of (name, params); () is not listed
    same_step: tuple = ()  # settings whose training step is the baseline's: not timed (see the A/A)
    rounds: int = 12
    block_min_steps: int = 50
    block_min_s: float = 0.15
    budget_s: float | None = None  # the timed part (data, build, warm-up, rounds) ends near this: see session_run.fit_rounds

    kind = "session"
    plural = "paired sessions"

    @classmethod
    def whole_cpu_node(cls, suite) -> bool:
        """On a CPU, a session takes its node (nothing else timed beside it: a neighbour on another
        core shifts step-time ratios) unless the suite says `paired: {isolation: slot}`."""
        return suite.isolation == "node" or suite.paired_isolation == "node"

    @property
    def backend(self) -> str:
        return self.base.backend

    @property
    def cpu_threads(self) -> int | None:
        return self.base.cpu_threads

    @property
    def timeout_s(self) -> float:
        return self.base.timeout_s

    @property
    def device(self) -> str | None:
        """The device kind the session's cell runs on ("gpu" | "cpu"; None: the suite's)."""
        return self.base.device

    @property
    def accelerator_type(self) -> str | None:
        return self.base.accelerator_type

    @property
    def labels(self) -> list[str]:
        return [setting_label(s) for s in self.settings]

    def expected_s(self, step_s: float, model_s: float) -> float:
        """Seconds its build, warm-up and rounds should take (bench/units/session_run.py), every
        model stepping at `step_s` and taking `model_s` to build and compile; the budget bounds
        the rounds, down to one round of MIN_BLOCK_STEPS-step blocks."""
        models = 3 + len(self.settings)
        steps = max(self.block_min_steps, math.ceil(self.block_min_s / max(step_s, 1e-9)) + 1)
        setup_s = models * model_s + (models + 1) * min(self.block_min_steps, WARMUP_STEPS) * step_s
        rounds_s = self.rounds * models * steps * step_s
        if self.budget_s is not None:
            rounds_s = min(rounds_s, max(self.budget_s - setup_s, models * min(MIN_BLOCK_STEPS, steps) * step_s))
        return setup_s + rounds_s

    def trial_for(self, setting: tuple) -> Trial:
        """The isolated trial this setting's block times (same cell id as the suite's trials)."""
        return dataclasses.replace(self.base, regularizers=setting)

    @property
    def group_id(self) -> str:
        """Id shared by every session of this cell group (all its repeats)."""
        return hashlib.sha256(canonical_json(self._identity(False)).encode()).hexdigest()[:10]

    @property
    def unit_id(self) -> str:
        b = self.base
        slug = f"paired-{b.workload}-{b.precision}-b{b.batch_size}-{b.backend[:2]}-s{b.repeat}"
        return f"{slug}-{hashlib.sha256(canonical_json(self._identity(True)).encode()).hexdigest()[:10]}"

    session_id = unit_id

    def _identity(self, with_repeat: bool) -> dict:
        d = self.to_dict()
        d["base"] = self.base._identity(with_repeat)
        return d

    def to_dict(self) -> dict:
        listed = lambda ss: [[{"name": n, "params": dict(p)} for n, p in s] for s in ss]  # noqa: E731
        d = {"base": self.base.to_dict(), "settings": listed(self.settings), "same_step": listed(self.same_step),
             "rounds": self.rounds, "block_min_steps": self.block_min_steps, "block_min_s": self.block_min_s}
        if self.budget_s is not None:  # absent: no budget (and the id sessions had before budgets)
            d["budget_s"] = self.budget_s
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "Session":
        parse = lambda ss: tuple(tuple((r["name"], dict(sorted(r.get("params", {}).items()))) for r in s)  # noqa: E731
                                 for s in ss)
        return cls(base=Trial.from_dict(d["base"]), settings=parse(d["settings"]), same_step=parse(d.get("same_step", [])),
                   rounds=d["rounds"], block_min_steps=d["block_min_steps"], block_min_s=d["block_min_s"],
                   budget_s=d.get("budget_s"))

    def __hash__(self) -> int:
        return hash(self.unit_id)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Session) and self.unit_id == other.unit_id

    def skeleton(self, status: str, reason: str | None, node: dict) -> dict:
        """A session record with the always-present fields; run_session adds the measured ones."""
        b = self.base
        return {
            "schema_version": SCHEMA_VERSION, "kind": "paired_session", "session_id": self.unit_id,
            "status": status, "reason": reason,
            "session": {**self.to_dict(), "group_id": self.group_id, "workload": b.workload,
                        "precision": b.precision, "batch_size": b.batch_size, "backend": b.backend,
                        "float32_matmul": b.float32_matmul,
                        "repeat": b.repeat, "seed": b.seed, "labels": [AA_LABEL, THIRD_LABEL, *self.labels],
                        "cell_ids": {AA_LABEL: b.cell_id, THIRD_LABEL: b.cell_id, **{setting_label(s): self.trial_for(s).cell_id
                                                             for s in self.settings + self.same_step}},
                        "same_step_as_baseline": [setting_label(s) for s in self.same_step]},
            "node": node,
        }


def round_log_ratios(record: dict) -> dict[str, np.ndarray]:
    """label -> per-round log ratios of a session record's blocks (`blocks.step_time_s`): each
    setting's block against the round's reference, the median of the three baseline models'
    blocks (the geometric mean of two in sessions recorded before the third); for the A/A label,
    the second baseline over the first."""
    step_time_s = {k: np.asarray(v, dtype=float) for k, v in record["blocks"]["step_time_s"].items()}
    first, second = np.log(step_time_s[setting_label(())]), np.log(step_time_s[AA_LABEL])
    baselines = (setting_label(()), AA_LABEL, THIRD_LABEL)
    if THIRD_LABEL in step_time_s:
        ref = np.median([first, second, np.log(step_time_s[THIRD_LABEL])], axis=0)
    else:
        ref = (first + second) / 2
    out = {AA_LABEL: second - first}
    for label, blocks in step_time_s.items():
        if label not in baselines:
            out[label] = np.log(blocks) - ref
    return out


def plan_sessions(trials, spec: dict) -> list[Session]:
    """The sessions of a suite: one per cell group (trials that differ only in their regularizer
    setting, repeat and seed) and session index, every setting of the group timed against its
    baseline. Groups without a baseline setting get no session."""
    groups: dict = {}
    for t in trials:
        key = json.dumps(dataclasses.replace(t, regularizers=(), repeat=0, seed=0).to_dict(), sort_keys=True)
        groups.setdefault(key, []).append(t)
    sessions = []
    for members in groups.values():
        by_label = {setting_label(t.regularizers): t.regularizers for t in members}
        settings = list(by_label.values())
        if () not in settings or len(settings) < 2:
            continue
        first = members[0]
        suite_seed = first.seed - first.repeat  # trials use suite seed + repeat; sessions + 1000 + index
        same = tuple(s for s in settings if s != () and recipe_for(s).training_step() == Recipe())
        timed = tuple(s for s in settings if s != () and s not in same)
        for i in range(spec["sessions"]):
            base = dataclasses.replace(first, regularizers=(), repeat=i, seed=suite_seed + 1000 + i)
            sessions.append(Session(base=base, settings=timed, same_step=same, rounds=spec["rounds"],
                                    block_min_steps=spec["block_min_steps"], block_min_s=spec["block_min_s"],
                                    budget_s=spec.get("session_budget_s")))
    return sessions
