"""A declared parameter (default and valid range) and how a mapping of them is resolved.

Used by regularizer entries (their parameters) and by workloads (their model options, e.g.
transformer_encoder's layers/width/heads); errors name the file and field, one line.
"""
from __future__ import annotations

import dataclasses
import math
import re
from typing import Any

from bench.errors import UserError

_DECIMAL = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")


def as_number(value: Any) -> Any:
    """A string YAML 1.1 left unread because it is written like 1e-3 or 1e6 (its floats need a dot)
    becomes that float; anything else is returned as it is."""
    if isinstance(value, str) and _DECIMAL.fullmatch(value.strip()):
        return float(value)
    return value


def is_number(value: Any) -> bool:
    """An int or a finite float (not a bool)."""
    return isinstance(value, int) and not isinstance(value, bool) or isinstance(value, float) and math.isfinite(value)


@dataclasses.dataclass(frozen=True)
class Param:
    default: Any
    low: float | None = None  # inclusive unless low_open
    high: float | None = None  # inclusive unless high_open
    low_open: bool = False
    high_open: bool = False
    choices: tuple | None = None
    kind: type = float

    def check(self, value: Any) -> str | None:
        """None when valid, else what is wrong (without the field name)."""
        if self.choices is not None:
            return None if value in self.choices else f"{value!r} is not one of {list(self.choices)}"
        if self.kind is bool:
            return None if isinstance(value, bool) else f"{value!r} is not true/false"
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return f"{value!r} is not a number"
        if isinstance(value, float) and not math.isfinite(value):
            return f"{value!r} is not a finite number"
        if self.kind is int and int(value) != value:
            return f"{value!r} is not an integer"
        lo_bad = self.low is not None and (value <= self.low if self.low_open else value < self.low)
        hi_bad = self.high is not None and (value >= self.high if self.high_open else value > self.high)
        if lo_bad or hi_bad:
            lo = "-inf" if self.low is None else self.low
            hi = "inf" if self.high is None else self.high
            return f"{value!r} is out of range {'(' if self.low_open else '['}{lo}, {hi}{')' if self.high_open else ']'}"
        return None


def resolve(spec: dict[str, Param], given: dict | None, where: str) -> dict:
    """`given` checked against `spec`, defaults filled, ints as int; UserError names `where`.field."""
    if given is None:
        given = {}
    if not isinstance(given, dict):
        raise UserError(f"{where}: expected a mapping of options, got {given!r}")
    for key in given:
        if key not in spec:
            raise UserError(f"{where}.{key}: unknown option (allowed: {', '.join(spec) or 'none'})")
    out = {}
    for key, p in spec.items():
        value = as_number(given.get(key, p.default)) if p.kind is float else given.get(key, p.default)
        if p.kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        problem = p.check(value)
        if problem:
            raise UserError(f"{where}.{key}: {problem}")
        out[key] = int(value) if p.kind is int else value
    return out
