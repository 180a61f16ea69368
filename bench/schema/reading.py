"""What a reader of results files needs beyond json.loads: a nesting bound, and the JSON types of
the fields the tables read.

`parse_json` refuses a document nested deeper than MAX_JSON_DEPTH (NestedTooDeep, a ValueError),
whether json itself runs out of stack (100,000 open brackets) or a recursive reader after it would
(a few hundred). `read_type_problems` checks the fields `bench.records` flattens into tables against
the types the trial schema gives them, without jsonschema: the analysis runs it on every file.
"""
from __future__ import annotations

import functools
import json
from typing import Any

from bench import records

MAX_JSON_DEPTH = 100  # a trial file is about 5 levels deep, a manifest (with its suite) under 40
_PY_TYPES = {"string": str, "integer": int, "number": (int, float), "boolean": bool, "object": dict,
             "array": list, "null": type(None)}


class NestedTooDeep(ValueError):
    """A JSON document nested deeper than MAX_JSON_DEPTH; str() says so in one line."""


def parse_json(text: str | bytes) -> Any:
    """json.loads, refusing documents nested deeper than MAX_JSON_DEPTH (NestedTooDeep)."""
    try:
        doc = json.loads(text)
    except RecursionError:
        doc = None
    else:
        if not _deeper_than(doc, MAX_JSON_DEPTH):
            return doc
    raise NestedTooDeep(f"nested deeper than {MAX_JSON_DEPTH} levels")


def _deeper_than(doc: Any, limit: int) -> bool:
    stack = [(doc, 1)]
    while stack:
        value, depth = stack.pop()
        children = value.values() if isinstance(value, dict) else value if isinstance(value, list) else ()
        if children and depth > limit:
            return True
        stack += [(c, depth + 1) for c in children if isinstance(c, (dict, list))]
    return False


def json_type(value) -> str:
    """The JSON name of a Python value's type: 'array' for a list, 'number' for a float."""
    return {list: "array", dict: "object", str: "string", int: "number", float: "number", bool: "boolean",
            type(None): "null"}.get(type(value), type(value).__name__)


def _is(value, types: tuple) -> bool:
    for t in types:
        if t in ("integer", "number") and isinstance(value, bool):
            continue
        if isinstance(value, _PY_TYPES[t]) or (t == "integer" and isinstance(value, float) and value.is_integer()):
            return True
    return False


@functools.cache
def _read_types(version: int) -> dict:
    """section ('' for the top level, 'convergence.curve[]' for a curve point) -> field -> JSON types."""
    from bench.schema import _resolve, schema

    root = schema("trial", version)

    def types(sub: dict) -> tuple:
        sub = _resolve(sub, root)
        t = sub.get("type") or sorted({json_type(v) for v in sub.get("enum", ())})
        return (t,) if isinstance(t, str) else tuple(t)

    props = root["properties"]
    out = {"": {f: types(props[f]) for f in records.TOP_FIELDS if f in props}}
    for section, fields in records.SECTIONS:
        if section in props:
            sub = _resolve(props[section], root).get("properties", {})
            out[section] = {f: types(sub[f]) for f in (*fields, "curve") if f in sub}
    point = _resolve(root["$defs"]["curve_point"], root).get("properties", {})
    out["convergence.curve[]"] = {f: types(point[f]) for f in records.CURVE_FIELDS if f in point}
    return out


def read_type_problems(record: dict, version: int) -> list[tuple[str, str]]:
    """(field, what is wrong) for each field the tables read whose value is of a type the trial
    schema does not allow there (a null is read as missing and passes)."""
    from bench.schema import SCHEMAS

    spec, out = _read_types(version if version in SCHEMAS["trial"] else max(SCHEMAS["trial"])), []

    def check(data: dict, fields: dict, prefix: str):
        for name, allowed in fields.items():
            value = data.get(name)
            if value is not None and allowed and not _is(value, allowed):
                shown = repr(value) if len(repr(value)) <= 40 else f"a JSON {json_type(value)}"
                out.append((prefix + name, f"{shown} is not of type {' or '.join(allowed)}"))

    check(record, spec[""], "")
    for section, fields in spec.items():
        if not section or section.endswith("[]"):
            continue
        data = record.get(section)
        if data is not None and not isinstance(data, dict):
            out.append((section, f"a JSON {json_type(data)}, not an object"))
        elif data is not None:
            check(data, fields, f"{section}.")
    curve = record.get("convergence", {}).get("curve") if isinstance(record.get("convergence"), dict) else None
    for i, point in enumerate(curve if isinstance(curve, list) else ()):
        if not isinstance(point, dict):
            out.append((f"convergence.curve[{i}]", f"a JSON {json_type(point)}, not an object"))
        else:
            check(point, spec["convergence.curve[]"], f"convergence.curve[{i}].")
    return out
