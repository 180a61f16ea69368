import pytest

from bench import suite as S
from bench.errors import UserError
from bench.regularizers import REGISTRY
from tests.conftest import write_suite


def parse(tmp_path, **fields):
    path = write_suite(tmp_path / "s.yaml", **fields)
    return S.load(str(path))


def error(tmp_path, **fields) -> str:
    with pytest.raises(UserError) as e:
        parse(tmp_path, **fields)
    msg = str(e.value)
    assert "\n" not in msg and str(tmp_path / "s.yaml") in msg
    return msg


def test_expansion_interleaves_repeats_and_pairs_cells(tmp_path):
    s = parse(tmp_path, regularizers=["none", "l2", ["dropout", "batch_norm"]],
              precisions=["float32", "mixed_bfloat16"], batch_sizes=[32, 64], repeats=3)
    assert len(s.trials) == 3 * 2 * 2 * 3
    reps = [t.repeat for t in s.trials]
    assert reps == sorted(reps)  # all of repeat 0, then all of repeat 1, ...
    first = s.trials[: len(s.trials) // 3]
    assert [t.cell_id for t in first] == [t.cell_id for t in s.trials[len(first): 2 * len(first)]]
    assert len({t.trial_id for t in s.trials}) == len(s.trials)
    assert {t.seed for t in s.trials} == {0, 1, 2}
    assert {t.setting for t in s.trials} == {"none", "l2", "dropout+batch_norm"}


@pytest.mark.parametrize("fields,expected", [
    ({"regularizers": ["none", "dropot"]}, "regularizers[1]: unknown regularizer 'dropot' (did you mean 'dropout'?)"),
    ({"regularizers": [{"dropout": {"rate": 1.5}}]}, "regularizers[0].dropout.rate: 1.5 is out of range"),
    ({"batch_sizes": [0]}, "batch_sizes[0]: 0 is out of range"),
    ({"precisions": ["mixed_float61"]}, "precisions[0]: unknown value 'mixed_float61' (did you mean 'mixed_float16'?)"),
    ({"workloads": ["digit_mlp"]}, "workloads[0].name: unknown value 'digit_mlp' (did you mean 'digits_mlp'?)"),
    ({"regularizers": []}, "regularizers: is empty"),
    ({"repeat": 3}, "unknown key 'repeat' (did you mean 'repeats'?)"),
    ({"regularizers": [["none", "l2"]]}, "regularizers[0][0]: 'none' cannot be part of a combination"),
    ({"regularizers": ["l2", {"l2": {"l2": 1e-4}}]}, "regularizers: setting 'l2' is listed twice"),
    ({"regularizers": [["l2", "l2"]]}, "l2 appears twice in one combination"),
    ({"epochs": "ten"}, "epochs: 'ten' is not an integer"),
    ({"workloads": [{"name": "digits_mlp", "target_val_accuracy": 1.5}]}, "target_val_accuracy: 1.5 is not in (0, 1]"),
])
def test_bad_input_is_one_line_naming_file_and_field(tmp_path, fields, expected):
    assert expected in error(tmp_path, **fields)


def test_malformed_yaml_and_missing_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nregularizers: [l2\n")
    with pytest.raises(UserError, match=r"bad.yaml: not valid YAML at line \d+, column \d+"):
        S.load(str(bad))
    with pytest.raises(UserError, match="nope.yaml: file not found"):
        S.load(str(tmp_path / "nope.yaml"))
    with pytest.raises(UserError, match="unknown suite 'quik' \\(did you mean 'quick'\\?\\)"):
        S.load("quik")
    missing = tmp_path / "m.yaml"
    missing.write_text("name: x\nworkloads: [digits_mlp]\n")
    with pytest.raises(UserError, match="missing required key 'regularizers'"):
        S.load(str(missing))


def test_builtin_suites_cover_the_mission():
    for name in S.builtin_names():
        S.load(name)
    quick = S.load("quick")
    names = {n for t in quick.trials for n, _ in t.regularizers}
    assert names == set(REGISTRY)  # every regularizer
    assert {"none"} <= {t.setting for t in quick.trials}
    assert {t.precision for t in quick.trials} == {"float32", "mixed_float16", "mixed_bfloat16"}
    assert len({t.repeat for t in quick.trials}) >= 3
    full = S.load("full")
    assert len({t.workload for t in full.trials}) == 4 and len({t.repeat for t in full.trials}) == 5
    assert min(len({t.batch_size for t in full.trials if t.workload == w}) for w in {t.workload for t in full.trials}) >= 2
    assert S.load("smoke", backend="jax").trials[0].backend == "jax"


def test_only_filters_by_glob_or_substring():
    quick = S.load("quick")
    assert {t.setting for t in S.filter_trials(quick.trials, "*-l2-float32-*")} == {"l2"}
    assert S.filter_trials(quick.trials, "batch_norm") and not S.filter_trials(quick.trials, "zzz")
