"""The trial-file and manifest contract (bench/schema): the schemas themselves, records built by
the measurement code, and `regbench validate` on whole runs (one line per problem, exit 2)."""
from __future__ import annotations

import copy
import json
import pathlib
import shutil

import jsonschema
import pytest

from bench import SCHEMA_VERSION, schema
from bench.measure.convergence import curve_rows, summarize
from bench.measure.energy import NvmlSampler
from bench.measure.memory import MemoryTracker
from bench.trial import Trial, result_skeleton
from tests.conftest import ROOT, regbench, validate

NODE = {"hostname": "h", "device_kind": "cpu", "device_name": "cpu", "executor": "process",
        "fingerprint_id": "f", "accelerator_type": None, "compute_capability": None, "cpu_threads": 1}


def ok_record(applicable: bool = True, target: float | None = 0.5) -> dict:
    """An ok CPU trial assembled by the same functions the runner uses (timing and compute by hand)."""
    trial = Trial("digits_mlp", (("dropout", {"rate": 0.3}),), "float32", 64, epochs=2)
    record = result_skeleton(trial, "ok", None, dict(NODE))
    record["timing"] = {"data_s": 0.05, "build_s": 0.05, "first_step_s": 0.4, "train_s": 0.6, "validation_s": 0.1,
                        "steps_run": 44, "steady_state_steps": 21, "step_time_p50_s": 0.0009,
                        "step_time_p95_s": 0.001, "step_time_mean_s": 0.00092, "step_time_cv": 0.07,
                        "samples_per_s": 69000.0, "jit_compile": False, "jit_compile_requested": "auto",
                        "jit_disabled_by": []}
    memory, nvml = MemoryTracker("tensorflow", gpu=False), NvmlSampler()
    nvml.handle, nvml.reason = None, "CUDA_VISIBLE_DEVICES is empty: this trial runs on the CPU"
    mem = memory.result()
    nv = nvml.memory_result()
    mem.update({k: v for k, v in nv.items() if k != "null_reasons"})
    mem["null_reasons"].update(nv["null_reasons"])
    record["memory"] = mem
    record["energy"] = nvml.energy_result(44 * 64)
    record["compute"] = {"flops_per_sample": 5e5, "achieved_flops_per_s": 3.5e10, "peak_flops_per_s": 2.3e11,
                         "mfu": 0.15, "null_reasons": {}}
    history = {"loss": [1.9, 0.9], "accuracy": [0.4, 0.7], "val_loss": [1.3, 0.5], "val_accuracy": [0.45, 0.8]}
    curve = curve_rows(history, [0.5, 0.7], [0.05, 0.05])
    record["convergence"] = summarize(curve, target if applicable else None, applicable, None, 0.8, 0.79, None)
    return record


def problems(record) -> list[str]:
    return [str(p) for p in schema.check_trial(record, "t.json")]


# ---------------------------------------------------------------------------- the schemas


@pytest.mark.parametrize("kind", ["trial", "manifest"])
def test_schema_is_draft_2020_12_and_states_its_version(kind):
    doc = schema.schema(kind)
    assert doc["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    jsonschema.Draft202012Validator.check_schema(doc)
    assert doc["properties"]["schema_version"]["const"] == SCHEMA_VERSION
    assert (ROOT / "bench" / "schema" / f"{kind}.schema.json").is_file()


def test_schemas_ship_as_package_data():
    tomllib = pytest.importorskip("tomllib")
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["bench"]
    assert "schema/*.json" in data


# ---------------------------------------------------------------------------- records


def test_records_the_measurement_code_writes_meet_the_contract():
    assert problems(ok_record()) == []
    assert problems(ok_record(applicable=False)) == []  # synthetic data: accuracies null with a reason
    missed = ok_record(target=0.99)
    assert missed["convergence"]["epochs_to_target"] is None
    assert problems(missed) == []  # the miss is said for time_to_target_s and epochs_to_target
    skipped = result_skeleton(Trial("digits_mlp", (), "mixed_float16", 64), "skipped", "no fp16 here", dict(NODE))
    assert problems(skipped) == []


def test_a_null_measured_field_needs_a_reason():
    record = ok_record()
    assert record["energy"]["energy_j"] is None
    del record["energy"]["null_reasons"]["energy_j"]
    record["compute"]["mfu"] = None
    assert problems(record) == ["t.json: energy.energy_j: null without a reason in energy.null_reasons",
                                "t.json: compute.mfu: null without a reason in compute.null_reasons"]
    record = ok_record()
    record["convergence"]["stopped_epoch"] = None  # a null with a documented meaning: no early stop
    assert problems(record) == []


@pytest.mark.parametrize("change, expected", [
    (lambda r: r["timing"].update(step_time_p50_s=-1),
     "t.json: timing.step_time_p50_s: -1 is less than the minimum of 0"),
    (lambda r: r["timing"].update(step_time_p95_s=0.0005),
     "t.json: timing.step_time_p95_s: 0.0005 is less than step_time_p50_s 0.0009"),
    (lambda r: r["timing"].update(samples_per_s=0),
     "t.json: timing.samples_per_s: 0 is less than or equal to the minimum of 0"),
    (lambda r: r["memory"].update(host_peak_bytes=-5),
     "t.json: memory.host_peak_bytes: -5 is less than the minimum of 0"),
    (lambda r: r.update(status="okay"),
     "t.json: status: 'okay' is not one of ['ok', 'failed', 'diverged', 'skipped']"),
    (lambda r: r.update(reason="why not"), "t.json: reason: must be null when status is ok"),
    (lambda r: r.pop("compute"), "t.json: compute: missing (required when status is ok)"),
    (lambda r: r["convergence"].pop("curve"), "t.json: convergence.curve: missing (required when status is ok)"),
    (lambda r: r["trial"].pop("seed"), "t.json: trial.seed: missing"),
    (lambda r: r["node"].update(device_kind="tpu"), "t.json: node.device_kind: 'tpu' is not one of ['cpu', 'gpu']"),
    (lambda r: r["convergence"]["curve"][1].update(val_accuracy=1.5),
     "t.json: convergence.curve[1].val_accuracy: 1.5 is greater than the maximum of 1"),
    (lambda r: r["timing"].update(train_s=float("nan")), "t.json: timing.train_s: nan is not a finite number"),
])
def test_one_line_per_problem_naming_the_field(change, expected):
    record = ok_record()
    change(record)
    assert problems(record) == [expected]


def test_failed_trials_need_a_reason_and_no_measurements():
    failed = result_skeleton(Trial("digits_mlp", (), "float32", 64), "failed", "timeout: killed after 9 s", dict(NODE))
    assert problems(failed) == []
    failed["reason"] = ""
    assert problems(failed) == ["t.json: reason: must be a non-empty string (why) when status is not ok"]


def test_new_fields_are_accepted_everywhere():
    record = ok_record()
    record["timing"]["end_to_end_samples_per_s"] = 21000.0
    record["process"] = {"start_method": "spawn"}
    record["node"]["numa_node"] = 0
    record["a_new_section"] = {"anything": [1, 2]}
    assert problems(record) == []


def test_versions_foreign_and_non_object_files():
    newer = ok_record()
    newer["schema_version"] = SCHEMA_VERSION + 1
    assert problems(newer) == [f"t.json: schema_version {SCHEMA_VERSION + 1} is newer than this regbench reads "
                               f"({SCHEMA_VERSION}): upgrade regbench to read it"]
    older = ok_record()
    older["schema_version"] = 0
    assert problems(older) == [f"t.json: schema_version 0 is not one this regbench reads ({SCHEMA_VERSION})"]
    assert problems({"hello": 1}) == ["t.json: not a trial file: a JSON object without trial_id or trial"]
    assert problems([1, 2]) == ["t.json: not a trial file: the top level is a JSON array, not an object"]


# ---------------------------------------------------------------------------- files and runs


def test_single_trial_file_form(tmp_path):
    good = tmp_path / "good.json"
    good.write_text(json.dumps(ok_record()))
    proc = validate(good)
    assert proc.returncode == 0 and proc.stdout.strip() == f"{good}: valid trial file (schema_version 1)"
    newer = ok_record()
    newer["schema_version"] = 99
    bad = tmp_path / "newer.json"
    bad.write_text(json.dumps(newer))
    proc = validate(bad)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stdout.strip().splitlines() == [f"{bad}: schema_version 99 is newer than this regbench reads (1): "
                                                "upgrade regbench to read it"]
    assert proc.stderr.strip() == f"regbench: error: {bad}: 1 problem"


@pytest.fixture
def run_copy(smoke_run, tmp_path) -> pathlib.Path:
    copy_ = tmp_path / smoke_run.name
    shutil.copytree(smoke_run, copy_)
    return copy_


def lines_of(proc) -> list[str]:
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    return proc.stdout.strip().splitlines()


def test_corrupted_truncated_and_foreign_files_one_line_each(run_copy):
    trials = sorted((run_copy / "trials").glob("*.json"))
    corrupted, truncated = trials[0], trials[1]
    corrupted.write_bytes(b"\x89PNG\r\n\x1a\n\x00\xff garbage")
    text = truncated.read_text()
    truncated.write_text(text[: len(text) // 2])
    foreign = run_copy / "trials" / "notes.json"
    foreign.write_text(json.dumps({"note": "copied here by hand"}))
    lines = lines_of(validate(run_copy))
    assert len(lines) == 3, lines
    by_file = {line.split(": ", 1)[0]: line.split(": ", 1)[1] for line in lines}
    assert by_file[str(corrupted)].startswith("not valid JSON: not UTF-8 text at byte 0"), lines
    assert by_file[str(truncated)].startswith("not valid JSON: truncated (the text ends at line "), lines
    assert by_file[str(foreign)] == "not a trial file: a JSON object without trial_id or trial", lines


def test_counts_against_the_manifest(run_copy):
    trials = sorted((run_copy / "trials").glob("*.json"))
    trials[0].unlink()  # planned, no file
    record = json.loads(trials[1].read_text())
    renamed = run_copy / "trials" / "renamed.json"  # a second file of one trial under another name
    renamed.write_text(json.dumps(record))
    stray = copy.deepcopy(record)
    stray["trial_id"] = "not-planned-0123456789"
    (run_copy / "trials" / "not-planned-0123456789.json").write_text(json.dumps(stray))
    (run_copy / "trials" / "README.txt").write_text("x")
    (run_copy / "trials" / f".{trials[2].name}.abc.tmp").write_text("{")
    lines = lines_of(validate(run_copy))
    t = run_copy / "trials"
    assert lines == [
        f"{t / f'.{trials[2].name}.abc.tmp'}: leftover temporary file of an interrupted write "
        "(`regbench run --resume` removes it)",
        f"{t / 'README.txt'}: stray file: trials/ holds only <trial_id>.json files",
        f"{t / 'not-planned-0123456789.json'}: stray trial file: not-planned-0123456789 is not planned in "
        "manifest.json trial_ids",
        f"{renamed}: trial_id: '{record['trial_id']}' does not match the file name (a trial file is named "
        "<trial_id>.json)",
        f"{trials[0]}: missing: planned in manifest.json, no file",
    ], lines


def test_manifest_problems(run_copy):
    manifest = json.loads((run_copy / "manifest.json").read_text())
    manifest["status"] = "done"
    manifest["trial_ids"].append("never-run-0123456789")
    (run_copy / "manifest.json").write_text(json.dumps(manifest))
    lines = lines_of(validate(run_copy))
    assert lines == [
        f"{run_copy / 'manifest.json'}: status: 'done' is not one of ['running', 'complete', 'interrupted']",
        f"{run_copy / 'trials' / 'never-run-0123456789.json'}: missing: planned in manifest.json, no file "
        f"(run status done: `regbench run --resume {run_copy}` finishes it)",
    ]
    manifest["schema_version"] = 2
    (run_copy / "manifest.json").write_text(json.dumps(manifest))
    lines = lines_of(validate(run_copy))
    assert lines == [f"{run_copy / 'manifest.json'}: schema_version 2 is newer than this regbench reads (1): "
                     "upgrade regbench to read it"]
    (run_copy / "manifest.json").unlink()
    assert lines_of(validate(run_copy)) == [
        f"{run_copy / 'manifest.json'}: missing: the run's plan is unknown, trial counts are not checked"]


def test_a_folder_that_is_not_a_run(tmp_path):
    proc = regbench("validate", tmp_path)
    assert proc.returncode == 2 and proc.stderr.strip() == f"regbench: error: {tmp_path}: not a regbench run " \
                                                           "(no manifest.json and no trials/)"


@pytest.mark.parametrize("change, expected", [
    (lambda r: r["timing"].update(attention_path="flash"),
     "t.json: timing.attention_path: 'flash' is not one of ['fused', 'explicit', 'mixed', None]"),
    (lambda r: r["timing"].update(host_sync_per_step="yes"), "t.json: timing.host_sync_per_step: 'yes' is not of type 'boolean'"),
    (lambda r: r["compute"].update(mfu_datasheet=-0.1), "t.json: compute.mfu_datasheet: -0.1 is less than the minimum of 0"),
    (lambda r: r["compute"].update(mfu_datasheet=None),
     "t.json: compute.mfu_datasheet: null without a reason in compute.null_reasons"),
    (lambda r: r["energy"].update(power_average_window_source="guess"),
     "t.json: energy.power_average_window_source: 'guess' is not one of ['nvml', 'assumed', None]"),
])
def test_attention_host_sync_datasheet_and_power_window_fields_are_checked(change, expected):
    record = ok_record()
    change(record)
    assert problems(record) == [expected]


def test_session_records_name_each_models_attention_path():
    doc = {"schema_version": SCHEMA_VERSION, "kind": "paired_session", "session_id": "s", "status": "skipped",
           "reason": "no fp16 here", "node": dict(NODE),
           "session": {"group_id": "g", "workload": "w", "precision": "float32", "batch_size": 1,
                       "backend": "jax", "repeat": 0, "labels": ["none"], "cell_ids": {}},
           "attention": {"none": {"attention_path": "fused", "attention_kernel": "cudnn"},
                         "dropout": {"attention_path": "explicit", "attention_kernel": "einsum"}}}
    assert schema.check_session(doc) == []
    doc["attention"]["dropout"]["attention_path"] = "flash"
    assert [p.field for p in schema.check_session(doc)] == ["attention.dropout.attention_path"]


@pytest.mark.parametrize("cut", ['{"a": 1, "b": tr', '{"a": 1, "b": nul', '{"a": 1, "b": "x', '{"a": 1, "b": '])
def test_a_file_cut_inside_a_literal_is_truncated_not_corrupt(tmp_path, cut):
    path = tmp_path / "t.json"
    path.write_text(cut)
    _, problem = schema.read_json_file(path)
    assert problem.message.startswith("not valid JSON: truncated"), problem


def test_the_input_side_fields_are_part_of_the_contract():
    """Defect caught: the feed and the input side's figures written with no contract (any value passed)."""
    record = ok_record()
    record["timing"].update(input_feed="uint8-cast-on-device", input_batch_bytes=64 * 3072 + 256,
                            input_time_per_batch_s=0.0004, input_workers=1, input_overlaps_step=True,
                            input_side_bound=False)
    assert problems(record) == []
    for change, expected in [
        (dict(input_feed="float32"), "t.json: timing.input_feed: must be <dtype>-host or uint8-cast-on-device"),
        (dict(input_time_per_batch_s=-0.1), "t.json: timing.input_time_per_batch_s: -0.1 is less than the minimum of 0"),
        (dict(input_workers=0), "t.json: timing.input_workers: 0 is less than the minimum of 1"),
        (dict(input_side_bound=None), "t.json: timing.input_side_bound: null without a reason in timing.null_reasons"),
    ]:
        bad = copy.deepcopy(record)
        bad["timing"].update(change)
        assert problems(bad) == [expected]


@pytest.mark.parametrize("tail", ['{"a": tr', '{"a": 1, "b": nu', '{"a": -', '{"a": fals'])
def test_a_literal_cut_short_reads_as_truncated(tmp_path, tail):
    """Defect caught: a file cut inside true/false/null read as corrupted ('Expecting value'), not as
    a write cut short."""
    path = tmp_path / "t.json"
    path.write_text(tail)
    _, problem = schema.read_json_file(path, "t.json")
    assert str(problem).startswith("t.json: not valid JSON: truncated (the text ends at line 1"), problem
