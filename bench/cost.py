"""What a run will take, before it starts (`regbench plan`) and while it runs (the ETA of
bench/progress.py): each unit's expected seconds, and where they came from.

Two sources:
- the suite's `expected_trial_s` (nothing measured): a trial takes that long; a paired session
  takes at most its budget (`paired.session_budget_s`) or, when shorter, `expected_trial_s` per
  model it builds. A rough bound: `plan --calibrate` measures.
- a calibration (`plan --calibrate`): one 2-epoch baseline trial per cell group (CALIBRATION_EPOCHS),
  each in a fresh trial process as a run starts them. From its record: the fixed cost (data, build,
  compile: its wall time less its epochs), an epoch's seconds (steps and the validation pass) and
  the step time. A trial is then the fixed cost plus its epochs; a session its data and build and
  the blocks it plans, bounded by its budget (Session.expected_s); the process start-up (a
  zygote's imports), once per run.

A batch's wall time is its units' seconds over the slots that run them side by side (a unit that
this machine skips takes none).
"""
from __future__ import annotations

import dataclasses
import json
import tempfile
import time
from pathlib import Path

EXPECTED_FROM_SUITE = "the suite's expected_trial_s"
CALIBRATION_EPOCHS = 2  # a trial's steady state starts at its second epoch (or after 10 steps)


@dataclasses.dataclass
class Estimate:
    unit_s: dict  # unit_id -> expected seconds in its trial process (skipped units: 0)
    source: str  # EXPECTED_FROM_SUITE, or what was calibrated
    sessions_bounded: bool = False  # the sessions' figures are upper bounds, not expectations
    startup_s: float = 0.0  # once per run: the trial processes' start-up (a zygote's imports), measured

    def batch_wall_s(self, units, slots: int) -> float:
        return sum(self.unit_s.get(u.unit_id, 0.0) for u in units) / max(1, slots)


def from_suite(suite, trials, sessions, skipped: dict) -> Estimate:
    """Expected seconds from the suite's `expected_trial_s` alone."""
    t = suite.expected_trial_s
    unit_s = {u.unit_id: 0.0 if u.unit_id in skipped else t for u in trials}
    for s in sessions:
        models = 3 + len(s.settings)
        bound = models * t if s.budget_s is None else min(models * t, s.budget_s + t)
        unit_s[s.unit_id] = 0.0 if s.unit_id in skipped else bound
    return Estimate(unit_s, f"{EXPECTED_FROM_SUITE} ({t:g} s a trial; a session at most its budget or "
                            f"{t:g} s a model)", sessions_bounded=True)


def group_key(trial) -> str:
    """Trials that share this key train the same model on the same data at the same speed (their
    cell group: all but the regularizer setting, repeat and seed)."""
    return json.dumps(dataclasses.replace(trial, regularizers=(), repeat=0, seed=0).to_dict(), sort_keys=True)


def calibrate(trials, sessions, skipped: dict, gpu_tokens=None, note=None) -> Estimate:
    """Expected seconds from one measured short baseline trial per cell group that runs here
    (`gpu_tokens`: the GPU a unit gets here, None on a CPU)."""
    from bench.executors.trial_process import Launcher, wait_and_collect

    groups: dict = {}
    for u in [t for t in trials if t.unit_id not in skipped] + [s.base for s in sessions if s.unit_id not in skipped]:
        groups.setdefault(group_key(u), u)
    measured, why = {}, None  # why: the first calibration that failed
    with tempfile.TemporaryDirectory() as tmp:
        launcher = Launcher(Path(tmp), "process")
        try:
            for i, (key, trial) in enumerate(groups.items()):
                probe = dataclasses.replace(trial, regularizers=(), epochs=CALIBRATION_EPOCHS,
                                            target_val_accuracy=None)
                if note:
                    note(f"calibrating {i + 1}/{len(groups)}: {trial.workload} {trial.precision} b{trial.batch_size}")
                t0 = time.perf_counter()
                record = wait_and_collect(launcher.launch(probe, gpu_tokens), "process").record
                outside_s = time.perf_counter() - t0
                if record and record.get("status") == "ok":
                    measured[key] = calibration_figures(record, outside_s)
                elif why is None:
                    why = (record or {}).get("reason") or "its trial process left no record"
        finally:
            launcher.close()
    unit_s = {}
    for t in trials:
        m = measured.get(group_key(t))
        unit_s[t.unit_id] = 0.0 if t.unit_id in skipped else (  # the process start-up is counted once: startup_s
            m["fixed_s"] + t.epochs * m["epoch_s"] if m else t.timeout_s)
    for s in sessions:
        m = measured.get(group_key(s.base))
        unit_s[s.unit_id] = 0.0 if s.unit_id in skipped else (
            m["data_s"] + s.expected_s(m["step_s"], m["model_s"]) if m else s.timeout_s)
    return Estimate(unit_s, f"a calibration: {len(measured)} {CALIBRATION_EPOCHS}-epoch baseline trial(s) measured here"
                            + (f", {len(groups) - len(measured)} failed ({why}; their units at their timeout)"
                               if len(measured) < len(groups) else ""),
                    startup_s=max((m["start_s"] for m in measured.values()), default=0.0))


def calibration_figures(record: dict, outside_s: float) -> dict:
    """A CALIBRATION_EPOCHS-epoch trial's record -> fixed_s (data, build, compile, the free-running
    window: its wall time less its epochs), epoch_s (steps and validation), step_s, start_s (the
    process start-up: `outside_s` less its record's wall time), data_s, model_s (build and compile)."""
    t = record["timing"]
    epoch_s = (max(t["train_s"] - t["first_step_s"], 0.0) + t["validation_s"]) / CALIBRATION_EPOCHS
    return {"fixed_s": max(record["wall_s"] - CALIBRATION_EPOCHS * epoch_s, 0.0), "epoch_s": epoch_s,
            "step_s": t["step_time_p50_s"],
            "start_s": max(outside_s - record["wall_s"], 0.0), "data_s": t["data_s"],
            "model_s": t["build_s"] + t["first_step_s"]}


def sessions_from_trials(sessions, trial_records: list[dict]) -> dict[str, float]:
    """session unit_id -> expected seconds, from the measured baseline trial of its cell (the
    isolated trials a run does first): data, build and compile, and its step time. Sessions whose
    cell has no ok baseline record are left out."""
    baseline = {r["trial"]["cell_id"]: r for r in trial_records
                if r.get("status") == "ok" and not r["trial"].get("regularizers") and r.get("timing")}
    out = {}
    for s in sessions:
        r = baseline.get(s.base.cell_id)
        if r is not None:
            t = r["timing"]
            out[s.unit_id] = t["data_s"] + s.expected_s(t["step_time_p50_s"], t["build_s"] + t["first_step_s"])
    return out


def minutes(seconds: float) -> str:
    return f"{seconds / 60:.1f} min" if seconds >= 60 else f"{seconds:.0f} s"
