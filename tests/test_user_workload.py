"""A workload and a regularizer from outside the package (bench/workloads/README.md, "regbench.workload v1").

Tests named test_rewriter_* need bench/workloads/rewrite.py (a recipe-unaware model regularized by
regbench); they skip until it is there.
"""
from __future__ import annotations

import json
import pathlib
import shutil

import pytest

from conftest import regbench, run_worker

FIXTURES = pathlib.Path(__file__).parent / "fixtures" / "own_model"

SUITE = """
name: own
workloads:
  - {workload}
regularizers: {regularizers}
precisions: [float32]
batch_sizes: [32]
repeats: 1
epochs: 1
steps_per_epoch: 3
paired: false
backend: jax
"""


@pytest.fixture(autouse=True)
def _registry_restored():
    """Parsing a suite registers its user regularizers in this process: undo it after each test."""
    from bench.regularizers import REGISTRY

    before = dict(REGISTRY)
    yield
    REGISTRY.clear()
    REGISTRY.update(before)


def write_suite(folder: pathlib.Path, workload: str = "{path: model.py}", regularizers: str = "[none, l2]",
                model: str | None = "aware_model.py", extra: str = "") -> pathlib.Path:
    if model:
        shutil.copy(FIXTURES / model, folder / "model.py")
    suite = folder / "suite.yaml"
    suite.write_text(SUITE.format(workload=workload, regularizers=regularizers).replace("steps_per_epoch: 3\n", "")
                     + extra)
    return suite


def parse(suite: pathlib.Path):
    from bench import suite as suite_mod

    return suite_mod.load(str(suite))


def test_path_workload_trials_carry_source_and_data_hashes(tmp_path):
    s = parse(write_suite(tmp_path))
    assert [t.workload for t in s.trials] == ["aware_digits"] * 2
    t = s.trials[0]
    ref = t.user_code["workload"]
    assert ref["path"] == str(tmp_path / "model.py") and len(ref["sha256"]) == 64 and len(ref["data_sha256"]) == 64
    assert ref["kind"] == "tabular" and ref["arch"] == "mlp" and ref["inferred"] == ["KIND", "ARCH"]
    ids = {x.trial_id for x in s.trials}
    assert ids == {x.trial_id for x in parse(tmp_path / "suite.yaml").trials}  # the same file: the same ids
    # another version of the source, or of the data, never pairs with the first
    (tmp_path / "model.py").write_text((tmp_path / "model.py").read_text() + "\n# edited\n")
    assert not ids & {x.trial_id for x in parse(tmp_path / "suite.yaml").trials}
    src = (tmp_path / "model.py").read_text().replace("x[:1400], y[:1400], x[1400:], y[1400:]",
                                                      "x[:1300], y[:1300], x[1300:], y[1300:]")
    (tmp_path / "model.py").write_text(src)
    t2 = parse(tmp_path / "suite.yaml").trials[0]
    assert t2.user_code["workload"]["data_sha256"] != ref["data_sha256"]
    # the location is not identity: the same file elsewhere is the same trial
    other = tmp_path / "elsewhere"
    other.mkdir()
    shutil.copy(tmp_path / "model.py", other / "model.py")
    shutil.copy(tmp_path / "suite.yaml", other / "suite.yaml")
    assert {x.trial_id for x in parse(other / "suite.yaml").trials} == {x.trial_id for x in parse(tmp_path / "suite.yaml").trials}


def test_module_workload_and_user_regularizer(tmp_path):
    suite = write_suite(tmp_path, workload="{module: fixtures.own_model.aware_model, batch_sizes: [16]}",
                        regularizers="[none, {path: reg.py}, [l2, {strong_l2: {l2: 0.5}}]]", model=None)
    shutil.copy(FIXTURES / "my_reg.py", tmp_path / "reg.py")
    s = parse(suite)
    assert {t.batch_size for t in s.trials} == {16}
    assert s.trials[0].user_code["workload"]["module"] == "fixtures.own_model.aware_model"
    assert sorted(t.setting for t in s.trials) == ["l2+strong_l2(l2=0.5)", "none", "strong_l2"]
    from bench.regularizers import REGISTRY, Regularizer, recipe_for

    entry = REGISTRY["strong_l2"]
    assert isinstance(entry, Regularizer) and entry.params["l2"].default == 1e-2
    assert recipe_for([("strong_l2", {"l2": 1e-2})]).l2 == 1e-2
    user = next(t for t in s.trials if t.setting == "strong_l2").user_code
    assert set(user["regularizers"]) == {"strong_l2"} and len(user["regularizers"]["strong_l2"]["sha256"]) == 64


BAD = {
    "missing path": ("{path: nothere.py}", None, "workloads[0].path: ", "does not exist"),
    "module that does not import": ("{module: no_such_pkg.models}", None, "workloads[0].module: ",
                                    "does not import (ModuleNotFoundError"),
    "no build": ("{path: model.py}", "def load(seed):\n    return None\n", "workloads[0].path: ", "has no build("),
    "no load": ("{path: model.py}", "def build(recipe, data):\n    return None\n", "workloads[0].path: ", "has no load("),
    "import error in the file": ("{path: model.py}", "import no_such_module_x\n", "workloads[0].path: ",
                                 "does not import (ModuleNotFoundError: No module named 'no_such_module_x')"),
    "mismatched lengths": ("{path: model.py}", "LENGTHS", "workloads[0].path: ",
                           "load(0) returned 1400 rows of x_train but 1399 of y_train"),
    "wrong output shape": ("{path: model.py}", "SHAPE", "workloads[0].path: ",
                           "build() returned a model whose output shape is (None, 3); "
                           "for 10 classes it must be (None, 10)"),
}


@pytest.mark.parametrize("case", BAD)
def test_bad_user_code_is_one_line_exit_2_nothing_written(case, tmp_path):
    workload, source, field, message = BAD[case]
    suite = write_suite(tmp_path, workload=workload)
    aware = (FIXTURES / "aware_model.py").read_text()
    if source == "LENGTHS":
        source = aware.replace("y[:1400], x[1400:]", "y[:1399], x[1400:]")
    elif source == "SHAPE":
        source = aware.replace("classifier_head(x, data.num_classes, recipe)", "classifier_head(x, 3, recipe)")
    if source is not None:
        (tmp_path / "model.py").write_text(source)
    out = tmp_path / "out"
    proc = regbench("run", "--suite", suite, "--executor", "process", "--out", out, "--no-report", timeout=300)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"regbench: error: {suite}: {field}"), proc.stderr
    assert message in lines[0], lines[0]
    assert not out.exists() or not any(out.iterdir())


def test_bad_user_regularizer_same_errors_as_built_in(tmp_path):
    from bench.errors import UserError

    shutil.copy(FIXTURES / "my_reg.py", tmp_path / "reg.py")
    suite = write_suite(tmp_path, regularizers="[none, {path: reg.py, params: {l3: 1}}]")
    with pytest.raises(UserError, match=r"regularizers\[1\]\.strong_l2\.l3: unknown parameter of strong_l2 \(allowed: l2\)"):
        parse(suite)
    suite = write_suite(tmp_path, regularizers="[none, {path: reg.py, params: {l2: 2}}]")
    with pytest.raises(UserError, match=r"regularizers\[1\]\.strong_l2\.l2: "):
        parse(suite)
    (tmp_path / "reg.py").write_text((FIXTURES / "my_reg.py").read_text().replace('"strong_l2"', '"l2"'))
    with pytest.raises(UserError, match=r"regularizers\[1\]\.path: .*NAME 'l2' is a built-in regularizer"):
        parse(write_suite(tmp_path, regularizers="[none, {path: reg.py}]"))
    (tmp_path / "reg.py").write_text("NAME = 'x'\n")
    with pytest.raises(UserError, match=r"regularizers\[1\]\.path: .*has no apply\("):
        parse(write_suite(tmp_path, regularizers="[none, {path: reg.py}]"))


def test_changed_file_and_failing_build_are_failed_records(tmp_path):
    """The trial process re-imports the module, checks its hash, and records the user's traceback."""
    source = (FIXTURES / "aware_model.py").read_text().replace(
        "    inputs = keras.Input", "    if recipe.l2:\n        raise RuntimeError('my build broke')\n    inputs = keras.Input")
    write_suite(tmp_path)
    (tmp_path / "model.py").write_text(source)
    s = parse(tmp_path / "suite.yaml")
    l2 = next(t for t in s.trials if t.setting == "l2")
    rec = run_worker(l2, tmp_path, "l2")
    assert rec["status"] == "failed" and rec["reason"] == "RuntimeError: my build broke", rec["reason"]
    assert "model.py" in rec["traceback"] and "my build broke" in rec["traceback"]
    (tmp_path / "model.py").write_text(source + "\n# changed after planning\n")
    rec = run_worker(s.trials[0], tmp_path, "changed")
    assert rec["status"] == "failed" and "changed since the run was planned" in rec["reason"], rec["reason"]
    assert str(tmp_path / "model.py") in rec["reason"]


@pytest.mark.slow
def test_user_workload_outside_the_repo_on_the_process_executor(tmp_path):
    suite = write_suite(tmp_path, regularizers="[none, {path: reg.py}]")
    shutil.copy(FIXTURES / "my_reg.py", tmp_path / "reg.py")
    out = tmp_path / "out"
    proc = regbench("run", "--suite", suite, "--executor", "process", "--out", out, "--no-report", timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run_dir = pathlib.Path(proc.stdout.strip().splitlines()[-1])
    records = [json.loads(p.read_text()) for p in (run_dir / "trials").glob("*.json")]
    assert sorted(r["trial"]["setting"] for r in records) == ["none", "strong_l2"]
    for r in records:
        assert r["status"] == "ok", r.get("reason")
        w = r["workload"]
        assert w["contract"] == "regbench.workload v1" and w["inferred"] == ["KIND", "ARCH"] and w["arch"] == "mlp"
        assert w["loaded_from"] == str(tmp_path / "model.py")
    assert regbench("report", run_dir).returncode == 0


@pytest.mark.slow
def test_rewriter_example_on_the_process_executor(tmp_path):
    """The README example, as written: l2 reaches the loss, dropout layers where the record says."""
    pytest.importorskip("bench.workloads.rewrite")
    shutil.copy(FIXTURES / "user_model.py", tmp_path)
    suite = tmp_path / "user_model.yaml"
    suite.write_text((FIXTURES / "user_model.yaml").read_text())
    proc = regbench("run", "--suite", suite, "--executor", "process", "--out", tmp_path / "out", timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run_dir = pathlib.Path(proc.stdout.strip().splitlines()[-1])
    records = {r["trial"]["setting"]: r for r in (json.loads(p.read_text()) for p in (run_dir / "trials").glob("*.json"))}
    assert {s: r["status"] for s, r in records.items()} == {"none": "ok", "l2": "ok", "dropout": "ok"}
    curve = records["l2"]["convergence"]["curve"][-1]
    assert curve["loss"] > curve["xent_loss"]
    assert any(p["regularizer"] == "dropout" for p in records["dropout"]["workload"]["placements"])
    assert (run_dir / "report").is_dir()


RAY_MODEL = '''"""A user's model outside the repository, reading its data from a file it declares."""
import pathlib

import numpy as np

RECIPE_AWARE = True
DATA_FILES = {"digits.npz": "%s"}


def load(seed):
    d = np.load(pathlib.Path(__file__).parent / "digits.npz")
    return d["x"][:1400], d["y"][:1400], d["x"][1400:], d["y"][1400:]


def build(recipe, data):
    import keras

    from bench.workloads.common import classifier_head, dense_block

    inputs = keras.Input(shape=data.input_shape)
    return keras.Model(inputs, classifier_head(dense_block(inputs, 32, recipe, name="h0"), data.num_classes, recipe))
'''


@pytest.mark.slow
def test_user_workload_outside_the_repo_on_a_multi_node_ray_cluster(tmp_path, monkeypatch):
    """The module and its data file travel to every node through the run and are checked by hash there."""
    import hashlib

    import numpy as np
    from ray.cluster_utils import Cluster
    from sklearn.datasets import load_digits
    from test_ray_cluster import load_run, run_cli

    user = tmp_path / "mine"
    user.mkdir()
    x, y = load_digits(return_X_y=True)
    np.savez(user / "digits.npz", x=(x / 16.0).astype("float32"), y=y.astype("int32"))
    (user / "model.py").write_text(RAY_MODEL % hashlib.sha256((user / "digits.npz").read_bytes()).hexdigest())
    suite = write_suite(user, workload="{path: model.py}", model=None,
                        extra="device: cpu\nisolation: cpu\ntimeout_s: 300\n")
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    data_dir = tmp_path / "node-data"
    monkeypatch.setenv("REGBENCH_DATA_DIR", str(data_dir))  # the nodes' data root, where the files are staged
    cluster = Cluster(initialize_head=True, connect=False, head_node_args={"num_cpus": 0, "include_dashboard": False})
    try:
        for _ in range(2):
            cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        rc, out, err = run_cli(suite, tmp_path / "out", cluster.address)
    finally:
        cluster.shutdown()
    assert rc == 0, err[-3000:]
    assert sum("user code" in line and "data on" in line for line in err.splitlines()) == 3, err  # head + 2 nodes
    records, _ = load_run(tmp_path / "out")
    assert sorted(r["trial"]["setting"] for r in records.values()) == ["l2", "none"]
    for r in records.values():
        assert r["status"] == "ok", r.get("reason")
        # imported from the copy staged on its node, not from the user's folder
        assert r["workload"]["loaded_from"].startswith(str(data_dir / "regbench-user")), r["workload"]
        assert r["node"]["executor"] == "ray"


@pytest.mark.slow
def test_rewriter_example_on_ray(tmp_path):
    """The README example on a private local Ray instance."""
    pytest.importorskip("bench.workloads.rewrite")
    shutil.copy(FIXTURES / "user_model.py", tmp_path)
    suite = tmp_path / "user_model.yaml"
    suite.write_text((FIXTURES / "user_model.yaml").read_text().replace("[none, l2, dropout]", "[none, l2]"))
    proc = regbench("run", "--suite", suite, "--executor", "ray", "--out", tmp_path / "out", "--no-report",
                    timeout=600, env={"RAY_ADDRESS": "local"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    run_dir = pathlib.Path(proc.stdout.strip().splitlines()[-1])
    records = [json.loads(p.read_text()) for p in (run_dir / "trials").glob("*.json")]
    assert sorted(r["status"] for r in records) == ["ok", "ok"]
    assert all(r["workload"]["source"] == str(tmp_path / "user_model.py") for r in records)
