"""Read a YAML file (a suite, a cluster config): every problem is one UserError line naming the file."""
from __future__ import annotations

import pathlib
from typing import Any

import yaml

from bench.errors import UserError


def load(path: pathlib.Path) -> Any:
    """The parsed YAML of `path`; missing, unreadable or malformed files raise UserError."""
    try:
        text = pathlib.Path(path).read_text()
    except FileNotFoundError:
        raise UserError(f"{path}: file not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: cannot read ({getattr(e, 'strerror', None) or e})") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise UserError(f"{path}: not valid YAML{where}: {problem}") from None


def load_mapping(path: pathlib.Path, what: str) -> dict:
    """`load`, and a mapping at the top level ("expected a mapping of {what} at the top level")."""
    data = load(path)
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a mapping of {what} at the top level")
    return data
