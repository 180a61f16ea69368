"""What runs each kind of unit: its precheck (decided without a trial process) and its run (in a
fresh trial process). The units are plain data (bench/units); this table is the one place that
joins a kind to its runner, so neither imports the other.
"""
from __future__ import annotations

from bench import runner
from bench.trial import Trial
from bench.units import session_run
from bench.units.session import Session

RUNNERS = {  # kind -> (precheck(unit, executor, gpu), run(unit, executor, gpu))
    Trial.kind: (runner.precheck, runner.run_trial),
    Session.kind: (session_run.precheck, session_run.run_session),
}


def precheck(unit, executor: str, gpu: bool) -> dict | None:
    """A `skipped` record when this device should not run `unit`, else None."""
    return RUNNERS[unit.kind][0](unit, executor, gpu)


def run(unit, executor: str = "process", gpu: bool | None = None) -> dict:
    """Run `unit` in this fresh process and return its record."""
    return RUNNERS[unit.kind][1](unit, executor, gpu)
