import json

import pytest

from bench import SCHEMA_VERSION
from bench.errors import UserError
from bench.store import RunStore, read_json, write_json_atomic


def record(tid, status="ok"):
    return {"schema_version": SCHEMA_VERSION, "trial_id": tid, "status": status, "reason": None,
            "trial": {"workload": "w", "regularizers": [], "precision": "float32"},
            "timing": {"samples_per_s": 1.0}, "convergence": {"curve": [{"epoch": 1, "loss": 1.0}]}}


def test_atomic_write_never_leaves_partial_files(tmp_path):
    target = tmp_path / "a.json"
    write_json_atomic(target, {"x": 1})

    class Unwritable:
        def __str__(self):
            raise RuntimeError("cannot serialize")

    with pytest.raises(RuntimeError):
        write_json_atomic(target, {"x": 2, "y": Unwritable()})  # fails midway through the dump
    assert json.loads(target.read_text()) == {"x": 1}  # old content intact
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]  # no temp file left


def test_trial_written_once_and_corrupt_or_newer_files_are_named(tmp_path):
    store = RunStore.create(tmp_path, {"name": "s"}, ["t1", "t2"])
    store.write_trial(record("t1"))
    store.write_trial({**record("t1"), "status": "failed"})  # a duplicate result is ignored
    assert read_json(store.trial_path("t1"))["status"] == "ok"
    store.trial_path("t2").write_text('{"schema_version": 1, "trial_id": "t2", "sta')  # torn by hand
    assert store.finished_ids() == {"t1"}
    with pytest.raises(UserError, match="t2.json: not valid JSON"):
        read_json(store.trial_path("t2"))
    store.write_trial(record("t2"))  # a corrupt leftover is replaced by the real result
    assert store.finished_ids() == {"t1", "t2"}
    newer = tmp_path / "n.json"
    newer.write_text(json.dumps({"schema_version": SCHEMA_VERSION + 1}))
    with pytest.raises(UserError, match=f"n.json: schema_version {SCHEMA_VERSION + 1} is newer"):
        read_json(newer)


def test_open_rejects_what_is_not_a_run(tmp_path):
    with pytest.raises(UserError, match="not a regbench run"):
        RunStore.open(tmp_path)
    with pytest.raises(UserError, match="missing: no such file or directory"):
        RunStore.open(tmp_path / "missing")
    (tmp_path / "file").write_text("x")
    with pytest.raises(UserError, match="file: not a directory"):
        RunStore.open(tmp_path / "file")


def test_manifest_and_parquet_export(tmp_path):
    import pandas as pd

    store = RunStore.create(tmp_path, {"name": "s"}, ["t1"])
    store.update_manifest(nodes={"fp": {"cpu": "x"}}, status="complete")
    store.update_manifest(nodes={"fp2": {"cpu": "y"}})
    m = store.manifest()
    assert set(m["nodes"]) == {"fp", "fp2"} and m["schema_version"] == SCHEMA_VERSION
    store.write_trial(record("t1"))
    store.export_parquet()
    trials = pd.read_parquet(store.path / "trials.parquet")
    curves = pd.read_parquet(store.path / "curves.parquet")
    assert trials.loc[0, "trial_id"] == "t1" and trials.loc[0, "samples_per_s"] == 1.0
    assert list(curves["epoch"]) == [1]
    assert not any(p.name.endswith(".tmp") for p in store.path.iterdir())


def test_the_run_layout_has_one_owner(tmp_path):
    """Every name inside a run directory comes from bench/layout.py, and one function says what is
    not a run: the store, validate (schema) and analysis all ask it."""
    from bench import layout

    store = RunStore.create(tmp_path, {"name": "s"}, ["t1"])
    store.write_trial(record("t1"))
    store.write_log("t1", "out")
    store.export_parquet()
    run = layout.RunLayout(store.path)
    assert run.manifest == store.manifest_path and run.manifest.is_file()
    assert run.record("trial", "t1").is_file() and run.log("t1").is_file()
    assert all(run.table(name).is_file() for name in layout.TABLES)
    assert run.unit_dir("session") == store.unit_dir("session") and run.history("trial", "t1", 2).parts[-3:] == \
        ("history", "trials", "t1.2.json")
    assert layout.require_run(store.path) == run
    empty = tmp_path / "empty"
    empty.mkdir()
    for manifest, why in ((True, "(no manifest.json)"), (False, "(no manifest.json and no trials/)")):
        with pytest.raises(UserError) as e:
            layout.require_run(empty, manifest=manifest)
        assert str(e.value) == f"{empty}: not a regbench run {why}"
    with pytest.raises(ValueError, match="missing: no such file or directory"):
        layout.require_run(tmp_path / "missing", error=ValueError)
