"""Hostile or careless input, in process: suite names that would leave --out, YAML bombs and deep
nesting, duplicate keys, non-finite and out-of-range numbers, and trial files a report cannot use.
Each is refused (or, for one trial file among many, left out with a warning) before any work."""
from __future__ import annotations

import json

import pytest

import analysis
from bench import schema, suite as S, yamlfile
from bench.errors import UserError
from bench.store import RunStore, read_json
from tests.conftest import write_suite
from tests.fixtures import synthetic_runs as synthetic

BASE = ("workloads: [digits_mlp]\nregularizers: [none]\nprecisions: [float32]\nbatch_sizes: [64]\n"
        "repeats: 1\nepochs: 2\n")


def load_text(tmp_path, text: str, name: str = "s.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return S.load(str(path))


def error_of(fn, *args) -> str:
    with pytest.raises(UserError) as e:
        fn(*args)
    msg = str(e.value)
    assert "\n" not in msg, msg
    return msg


def suite_error(tmp_path, text: str) -> str:
    msg = error_of(load_text, tmp_path, text)
    assert str(tmp_path / "s.yaml") in msg, msg
    return msg


def bomb(levels: int, width: int = 9, leaf: str = "lol") -> str:
    """The billion-laughs document: each level's list aliases the one below `width` times."""
    lines = [f"a0: &a0 {leaf}"]
    for i in range(1, levels + 1):
        lines.append(f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * width)}]")
    return "\n".join(lines) + "\n"


# ---- item 1: the suite name -----------------------------------------------------------------

@pytest.mark.parametrize("name", ["../../../../tmp/x", "/tmp/abs", "x/y", ".hidden", "..", "a" * 65, "a b", "",
                                  {"a": 1}, 123, ["x"]])
def test_suite_name_must_be_a_safe_slug(tmp_path, name):
    msg = error_of(S.load, str(write_suite(tmp_path / "s.yaml", name=name)))
    assert f"{tmp_path / 's.yaml'}: name:" in msg, msg


def test_safe_names_and_the_file_name_fallback(tmp_path):
    assert S.load(str(write_suite(tmp_path / "s.yaml", name="my-suite_1.0"))).name == "my-suite_1.0"
    path = tmp_path / "odd name!.yaml"
    path.write_text(BASE)
    assert S.load(str(path)).name == "odd-name"  # no name given: the file's stem, made safe


@pytest.mark.parametrize("name", ["../escape", "/tmp/regbench-abs-escape", "a/../../escape"])
def test_run_store_keeps_every_run_under_out(tmp_path, name):
    out = tmp_path / "a" / "b"
    out.mkdir(parents=True)
    msg = error_of(RunStore.create, out, {"name": name}, ["t1"])
    assert str(out) in msg and "outside" in msg, msg
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["a", "b"]  # nothing written anywhere
    assert not list(tmp_path.parent.glob("*escape*"))


def test_a_symlinked_out_is_followed_into_its_target(tmp_path):
    target = tmp_path / "target"
    target.mkdir()
    (tmp_path / "link").symlink_to(target)
    store = RunStore.create(tmp_path / "link", {"name": "s"}, ["t1"])
    assert store.path.resolve().parent == target.resolve()
    assert (target / store.path.name / "manifest.json").is_file()


# ---- item 3: YAML bombs, deep nesting, big files, field types -------------------------------

def test_alias_bomb_is_refused_before_it_expands(tmp_path):
    path = tmp_path / "bomb.yaml"
    path.write_text(BASE + "description:\n  " + bomb(9).replace("\n", "\n  ").rstrip() + "\n")
    msg = error_of(yamlfile.load, path)
    assert str(path) in msg and "aliases expand" in msg, msg
    # few aliases, long strings: 10**4 copies of a 100 kB string are 1 GB
    path.write_text(bomb(4, width=10, leaf="x" * 100_000))
    assert "aliases expand" in error_of(yamlfile.load, path)
    path.write_text("a: &a [*a]\n")  # an alias inside its own anchor: infinite
    assert "refers to itself" in error_of(yamlfile.load, path)


def test_ordinary_aliases_and_merge_keys_still_load(tmp_path):
    path = tmp_path / "ok.yaml"
    path.write_text("base: &b {x: 1, y: 2}\nsame: *b\nmerged:\n  <<: *b\n  y: 3\n")
    assert yamlfile.load(path) == {"base": {"x": 1, "y": 2}, "same": {"x": 1, "y": 2}, "merged": {"x": 1, "y": 3}}
    path.write_text(bomb(3))  # a 9**3 = 729-leaf expansion is fine
    assert len(yamlfile.load(path)["a3"]) == 9


def test_yaml_size_and_nesting_are_capped(tmp_path):
    path = tmp_path / "deep.yaml"
    path.write_text("description: " + "[" * 5000 + "]" * 5000 + "\n")
    msg = error_of(yamlfile.load, path)
    assert str(path) in msg and "nested deeper than" in msg and "line 1" in msg, msg
    deep_alias = "a: &a " + "[" * 30 + "]" * 30 + "\nb: &b " + "[" * 30 + "*a" + "]" * 30 + "\n"
    path.write_text(deep_alias)  # each part is shallow, together through the alias they are not
    assert "nested deeper than" in error_of(yamlfile.load, path)
    path.write_text("description: '" + "x" * (yamlfile.MAX_BYTES + 1) + "'\n")
    msg = error_of(yamlfile.load, path)
    assert str(path) in msg and "larger than" in msg, msg


@pytest.mark.parametrize("field,value,expected", [
    ("description", [1, 2], "description: [1, 2] is not a string"),
    ("description", {"a": 1}, "description: {'a': 1} is not a string"),
    ("backend", {"a": 1}, "backend: unknown value {'a': 1}"),
    ("precisions", [["float32"]], "precisions[0]: unknown value ['float32']"),
    ("accelerator_types", [{"a": 1}], "accelerator_types[0]: {'a': 1} is not a string"),
    ("jit_compile", ["on"], "jit_compile: unknown value ['on']"),
])
def test_every_top_level_field_is_type_checked(tmp_path, field, value, expected):
    msg = error_of(S.load, str(write_suite(tmp_path / "s.yaml", **{field: value})))
    assert expected in msg and str(tmp_path / "s.yaml") in msg, msg


# ---- item 8: validation gaps ------------------------------------------------------------------

def test_duplicate_keys_are_refused_naming_key_and_line(tmp_path):
    msg = suite_error(tmp_path, BASE + "epochs: 5\n")
    assert "duplicate key 'epochs'" in msg and "line 7" in msg and "line 6" in msg, msg
    msg = suite_error(tmp_path, BASE.replace("[digits_mlp]", "\n  - name: digits_mlp\n    epochs: 1\n    epochs: 2"))
    assert "duplicate key 'epochs'" in msg and "line 4" in msg, msg


@pytest.mark.parametrize("line,field", [
    ("timeout_s: .nan", "timeout_s"), ("timeout_s: .inf", "timeout_s"), ("learning_rate: .inf", "learning_rate"),
    ("learning_rate: .nan", "learning_rate"), ("expected_trial_s: .inf", "expected_trial_s"),
    ("paired: {budget_s: .inf}", "paired.budget_s"), ("paired: {run_budget_s: .nan}", "paired.run_budget_s"),
])
def test_non_finite_numbers_are_refused(tmp_path, line, field):
    msg = suite_error(tmp_path, BASE + line + "\n")
    assert f"{field}:" in msg and "finite" in msg, msg


def test_non_finite_regularizer_parameters_are_refused(tmp_path):
    msg = suite_error(tmp_path, BASE.replace("[none]", "[{l2: {l2: .nan}}]"))
    assert "regularizers[0].l2.l2:" in msg and "finite" in msg, msg


@pytest.mark.parametrize("key", ["epochs", "max_train_samples", "steps_per_epoch"])
def test_workload_overrides_have_bounds(tmp_path, key):
    msg = error_of(S.load, str(write_suite(tmp_path / "s.yaml", workloads=[{"name": "digits_mlp", key: 10 ** 22}])))
    assert f"workloads[0].{key}: {10 ** 22} is out of range [1, " in msg, msg
    assert "epochs: 100000 is out of range" not in msg
    assert S.load(str(write_suite(tmp_path / "s.yaml", workloads=[{"name": "digits_mlp", "epochs": 100000}])))


def test_exponent_numbers_yaml_reads_as_strings_are_numbers(tmp_path):
    s = load_text(tmp_path, BASE.replace("[none]", "[{l2: {l2: 1e-4}}]") + "learning_rate: 1e-3\ntimeout_s: 1e3\n")
    assert s.resolved["learning_rate"] == 1e-3 and s.resolved["timeout_s"] == 1000.0
    assert s.trials[0].learning_rate == 1e-3 and s.resolved["regularizers"][0][0]["params"]["l2"] == 1e-4
    assert load_text(tmp_path, BASE + "learning_rate: 1e6\n").resolved["learning_rate"] == 1e6
    for bad in ("1e", "nan", "inf", "0x10", "1_000"):
        msg = suite_error(tmp_path, BASE + f"learning_rate: '{bad}'\n")
        assert "learning_rate:" in msg, msg


def test_trial_files_of_the_wrong_type_are_left_out_with_a_warning(tmp_path, capsys):
    run = synthetic.write_run(tmp_path / "run", settings={"none": (1, 1, 0), "l2": (1.2, 1, 0)}, repeats=2,
                              precisions={"float32": 1.0})
    trials = run / "trials"
    good = json.loads(sorted(trials.iterdir())[0].read_text())
    bad = {
        "timing_list.json": dict(good, trial_id="timing_list", timing=[1, 2]),
        "step_str.json": dict(good, trial_id="step_str", timing={**good["timing"], "step_time_p50_s": "fast"}),
        "batch_str.json": dict(good, trial_id="batch_str", trial={**good["trial"], "batch_size": "big"}),
        "curve_str.json": dict(good, trial_id="curve_str",
                               convergence={**good["convergence"], "curve": [{"epoch": 1, "loss": "low"}]}),
        "node_num.json": dict(good, trial_id="node_num", node=7),
    }
    for name, doc in bad.items():
        (trials / name).write_text(json.dumps(doc))
    data = analysis.load(run)
    err = capsys.readouterr().err
    reasons = dict(zip(data.problems["file"].map(lambda f: f.rsplit("/", 1)[1]), data.problems["reason"]))
    for name in bad:
        assert f"{name}: " in err and "wrong type" in reasons[name], (name, reasons.get(name), err)
    assert "timing.step_time_p50_s" in reasons["step_str.json"] and "trial.batch_size" in reasons["batch_str.json"]
    assert len(data.trials) == 4  # every good file is read


def test_json_nested_too_deep_is_a_problem_not_a_crash(tmp_path, capsys):
    run = synthetic.write_run(tmp_path / "run", settings={"none": (1, 1, 0)}, repeats=2, precisions={"float32": 1.0})
    deep = run / "trials" / "deep.json"
    deep.write_text("[" * 100_000 + "]" * 100_000)
    data = analysis.load(run)
    assert "deep.json: " in capsys.readouterr().err and len(data.trials) == 2
    assert "nested deeper than" in data.problems.set_index("file").loc[str(deep), "reason"]
    mid = run / "trials" / "mid.json"  # parses, but deeper than the walkers that follow should meet
    good = json.loads(sorted((run / "trials").glob("digits*"))[0].read_text())
    mid.write_text(json.dumps({**good, "trial_id": "mid", "timing": "DEEP"}).replace('"DEEP"', "[" * 500 + "]" * 500))
    for path in (deep, mid):
        problems = schema.check_trial_file(path)
        assert len(problems) == 1 and "nested deeper than" in str(problems[0]), problems
        assert "nested deeper than" in error_of(read_json, path)
    (run / "manifest.json").write_text('{"a": ' * 100_000 + "1" + "}" * 100_000)
    assert "nested deeper than" in error_of(RunStore.open, run)
    reasons = analysis.load(run, warn=False).problems.set_index("file")["reason"]
    assert "nested deeper than" in reasons[str(run / "manifest.json")]


@pytest.mark.parametrize("cut", ['{"a": -', '{"a": 1.5e', '{"a": 1.', '{"a": tr', '{"a": nul', '{"a": 1, "b": "x'])
def test_a_file_cut_inside_a_value_is_truncated_not_corrupt(tmp_path, cut):
    path = tmp_path / "t.json"
    path.write_text(cut)
    problem = schema.read_json_file(path)[1]
    assert problem.message.startswith("not valid JSON: truncated"), problem
