"""Trackers: timing, memory, energy, compute, convergence.

Trackers that watch a window share one tiny interface: start() at the window's start, stop() at
its end, result() -> dict (one section of the trial file; absent values are None with a reason in
result()["null_reasons"]).
"""
from __future__ import annotations

from typing import Protocol


class Tracker(Protocol):
    def start(self) -> None: ...

    def stop(self) -> None: ...

    def result(self) -> dict: ...
