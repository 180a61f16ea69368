"""Read a YAML file (a suite, a cluster config): every problem is one UserError line naming the file.

Hostile input is refused before it costs anything: a file over MAX_BYTES; nesting deeper than
MAX_DEPTH (checked while composing, so 5,000 open brackets cannot exhaust the stack; and again
through aliases); aliases that would expand past MAX_EXPANDED (a "billion laughs" bomb: the
expanded size is counted on the composed graph, each shared node once, before anything is built);
an alias inside its own anchor; and a key given twice in one mapping (YAML would keep the last).
"""
from __future__ import annotations

import pathlib
from typing import Any

import yaml

from bench.errors import UserError

MAX_BYTES = 1 << 20  # suites and cluster configs are a few kB
MAX_DEPTH = 32  # levels of nested mappings and lists; suites use about 6, cluster configs about 12
MAX_EXPANDED = 1 << 22  # nodes plus scalar characters of the document with every alias written out
_MERGE = "tag:yaml.org,2002:merge"


class _Loader(yaml.SafeLoader):
    """SafeLoader that bounds nesting while composing and refuses duplicate keys."""

    def __init__(self, stream):
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent, index):
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                raise yaml.composer.ComposerError(None, None, f"nested deeper than {MAX_DEPTH} levels",
                                                  self.peek_event().start_mark)
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            first: dict = {}
            for key_node, _ in node.value:
                if key_node.tag == _MERGE or not isinstance(key_node, yaml.ScalarNode):
                    continue  # merged keys may be overridden; a non-scalar key is refused by the base class
                key = self.construct_object(key_node)
                if key in first:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"duplicate key {key!r} (first at line {first[key]})", key_node.start_mark)
                first[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep=deep)


def _children(node) -> list:
    if isinstance(node, yaml.SequenceNode):
        return node.value
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    return []


def _check_expansion(root, path) -> None:
    """Refuse a composed document whose aliases expand too far, too deep, or into themselves.
    Iterative, each node measured once: cheap however large the expansion would be."""
    size: dict[int, tuple[int, int]] = {}  # id(node) -> (expanded size, depth)
    open_ = set()  # nodes being measured: meeting one again is an alias inside its own anchor
    stack = [(root, False)]
    while stack:
        node, done = stack.pop()
        key = id(node)
        if done:
            open_.discard(key)
            kids = [size[id(k)] for k in _children(node)]
            own = len(node.value) if isinstance(node, yaml.ScalarNode) else 0
            total, depth = 1 + own + sum(k[0] for k in kids), 1 + max((k[1] for k in kids), default=0)
            if total > MAX_EXPANDED:
                raise UserError(f"{path}: aliases expand to more than {MAX_EXPANDED:,} nodes and characters "
                                f"(at line {node.start_mark.line + 1}); write the values out instead")
            if depth > MAX_DEPTH:
                raise UserError(f"{path}: nested deeper than {MAX_DEPTH} levels through aliases "
                                f"(at line {node.start_mark.line + 1})")
            size[key] = (total, depth)
        elif key not in size:
            if key in open_:
                raise UserError(f"{path}: an alias at line {node.start_mark.line + 1} refers to itself")
            open_.add(key)
            stack.append((node, True))
            stack += [(k, False) for k in _children(node) if id(k) not in size]


def load(path: pathlib.Path) -> Any:
    """The parsed YAML of `path`; missing, unreadable, malformed or hostile files raise UserError."""
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_BYTES + 1)
        if len(raw) > MAX_BYTES:
            raise UserError(f"{path}: larger than {MAX_BYTES // 1024} KiB; a suite or cluster file is a few kB")
        text = raw.decode("utf-8")
    except FileNotFoundError:
        raise UserError(f"{path}: file not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: cannot read ({getattr(e, 'strerror', None) or e})") from None
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _check_expansion(node, path)
        return loader.construct_document(node)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise UserError(f"{path}: not valid YAML{where}: {problem}") from None
    finally:
        loader.dispose()


def load_mapping(path: pathlib.Path, what: str) -> dict:
    """`load`, and a mapping at the top level ("expected a mapping of {what} at the top level")."""
    data = load(path)
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a mapping of {what} at the top level")
    return data
