"""Commands and end-of-run hooks that other packages add to `regbench`, found by entry points.

bench imports nothing from analysis: dependencies point one way. A package adds a command by
declaring a `Command` under the entry-point group `regbench.commands` (the entry point's name is
the command's), and work to do when a run completes under `regbench.after_run` (a callable taking
the run directory), in its pyproject.toml:

    [project.entry-points."regbench.commands"]
    report = "analysis.commands:REPORT"

    [project.entry-points."regbench.after_run"]
    report = "analysis.commands:report_after_run"

An entry point is loaded only when used (a command when it is asked for, a hook when a run
completes), so `regbench plan` does not pay for importing analysis. The declarations are read
from the installed package's metadata: after editing them, `pip install -e .` again.
"""
from __future__ import annotations

import argparse
import dataclasses
import pathlib
from importlib.metadata import EntryPoint, entry_points
from typing import Callable

GROUP = "regbench.commands"
AFTER_RUN = "regbench.after_run"


@dataclasses.dataclass(frozen=True)
class Command:
    """One `regbench NAME ...` command: its help line, its arguments, and what it does (an exit code)."""

    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


class PluginError(Exception):
    """A declared entry point that cannot be loaded (an install out of date with the code)."""


def found(group: str = GROUP) -> dict[str, EntryPoint]:
    """The entry points declared under `group`, by name, not loaded."""
    return {ep.name: ep for ep in entry_points(group=group)}


def load(ep: EntryPoint, kind: type | None = Command):
    """The object `ep` names (of type `kind` when given), or PluginError naming the entry point."""
    try:
        obj = ep.load()
    except (ImportError, AttributeError) as e:
        raise PluginError(f"{ep.group} {ep.name} = {ep.value}: cannot load ({e}); reinstall regbench "
                          "(pip install -e .)") from None
    if kind is not None and not isinstance(obj, kind):
        raise PluginError(f"{ep.group} {ep.name} = {ep.value}: not a {kind.__name__}")
    return obj


def after_run_hooks() -> list[Callable[[pathlib.Path], object]]:
    """The callables registered to run when a run completes, loaded now."""
    return [load(ep, None) for ep in found(AFTER_RUN).values()]
