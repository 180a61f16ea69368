"""Units of work: what the executors place, start in a fresh trial process and record.

Two kinds, one face. A unit is frozen plain data with these names (the `Unit` protocol below):

    kind                       "trial" | "session": the store's folder for its records, the request's tag
    plural                     what a batch of them is called in progress lines ("trials", ...)
    unit_id                    stable id, the record's file name
    backend, device, cpu_threads, timeout_s, accelerator_type
                               what it runs on and how long it may take
    whole_cpu_node(suite)      (classmethod) whether one of this kind, on a CPU, runs alone on its node
    to_dict() / from_dict(d)   plain data, the request a trial process reads
    skeleton(status, reason, node) -> record with the always-present fields

and its runner in bench/units/runners.py: `runners.precheck(unit, executor, gpu)` (a `skipped`
record when this device should not run it, decided without a trial process, else None) and
`runners.run(unit, executor, gpu)` (run it in this fresh process and return its record).

- trial (bench/trial.py `Trial`, run by bench/runner.py): one timed training run, isolated;
- session (bench/units/session.py `Session`, run by bench/units/session_run.py): the baseline and
  every regularized model of one cell timed in alternating blocks inside one process.

The executors never special-case a kind: they look a unit's runner up by its kind (runners.py),
and turn a kind named in a request back into its class here, once (`unit_from_dict`). To add a
kind, write a class with these names, list it in UNIT_KINDS and its runner in runners.RUNNERS.
"""
from __future__ import annotations

from typing import Protocol

from bench.trial import Trial
from bench.units.session import Session


class Unit(Protocol):
    """One unit of work (see the module docstring)."""

    kind: str
    plural: str

    @property
    def unit_id(self) -> str: ...
    @property
    def backend(self) -> str: ...
    @property
    def device(self) -> str | None: ...
    @property
    def cpu_threads(self) -> int | None: ...
    @property
    def timeout_s(self) -> float: ...
    @property
    def accelerator_type(self) -> str | None: ...
    @classmethod
    def whole_cpu_node(cls, suite) -> bool: ...
    def to_dict(self) -> dict: ...
    @classmethod
    def from_dict(cls, d: dict) -> "Unit": ...
    def skeleton(self, status: str, reason: str | None, node: dict) -> dict: ...


UNIT_KINDS: dict[str, type] = {cls.kind: cls for cls in (Trial, Session)}


def unit_type(kind: str) -> type:
    """The class of the units of `kind` (ValueError naming an unknown one)."""
    try:
        return UNIT_KINDS[kind]
    except KeyError:
        raise ValueError(f"unknown unit kind {kind!r} (known: {', '.join(UNIT_KINDS)})") from None


def unit_from_dict(kind: str, d: dict) -> Unit:
    """A unit from its kind and its to_dict() form (a trial process's request, a Ray task's arguments)."""
    return unit_type(kind).from_dict(d)
