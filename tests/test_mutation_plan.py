"""tests/mutation.py stays in step with the code and the suite: every mutant's edit still applies to
today's code, and every test named to kill a mutant exists and runs in CI (collected under
`-m "not slow"`, as `make test` collects it). The mutation run itself: `python -m tests.mutation`."""
from __future__ import annotations

from tests.conftest import ROOT
from tests.mutation import MUTANTS


def test_every_mutant_still_applies_to_the_code():
    """Defect caught: a mutant whose edit matches nothing any more, so it would mutate nothing."""
    names = [m.name for m in MUTANTS]
    assert len(names) == len(set(names))
    for m in MUTANTS:
        for rel, old, new in m.edits:
            assert old != new
            assert old in (ROOT / rel).read_text(), (m.name, rel, old)


def _marks(obj) -> list:
    marks = getattr(obj, "pytestmark", [])
    return marks if isinstance(marks, list) else [marks]


def test_every_killing_test_exists_and_is_not_marked_slow():
    """Defect caught: a mutant 'killed' by a test that was renamed away, or that only runs with the
    slow ones (the mutation run and this check use -m "not slow")."""
    import importlib

    for node in sorted({t for m in MUTANTS for t in m.tests}):
        path, _, name = node.partition("::")
        func, _, param = name.partition("[")
        module = importlib.import_module(path[:-3].replace("/", "."))
        fn = getattr(module, func, None)
        assert callable(fn) and func.startswith("test_"), node
        marks = _marks(module) + _marks(fn)
        assert not any(m.name == "slow" for m in marks), node
        if param:
            values = [v for m in marks if m.name == "parametrize" for v in m.args[1]]
            assert param[:-1] in [str(v) for v in values], (node, values)
