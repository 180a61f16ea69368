"""The report flags cells whose figures measure the host (analysis.flags): a GPU baseline or
regularized cell under 80% steady-state GPU utilization (or with none measured), an input-side
bound cell, and synced vs free-running step times more than 10% apart: a finding at the top, a
note on each of its cell's overheads, a row of the Flagged cells table."""
from __future__ import annotations

import json

import pytest

import analysis
from analysis.report import write_report
from tests.fixtures import synthetic_runs as synthetic


def _gpu_docs(workload: str, util: float | None) -> list[dict]:
    docs = []
    for setting, factor in (("none", 1.0), ("dropout", 1.1)):
        for r in range(3):
            d = synthetic.trial_doc(workload=workload, setting=setting, precision="mixed_bfloat16", repeat=r,
                                    device_kind="gpu", device_name="NVIDIA H200", step_time_s=0.02 * factor)
            d["energy"].update(steady_gpu_util_mean=util, input_bound=None if util is None else util < 80)
            if util is None:
                d["energy"]["null_reasons"]["steady_gpu_util_mean"] = "steady window 0.3 s is too short"
            docs.append(d)
    return docs


def test_gpu_baselines_under_80_percent_are_flagged(tmp_path):
    docs = _gpu_docs("synthetic_cnn", 45.0) + _gpu_docs("resnet50", 97.0) + _gpu_docs("transformer_encoder", None)
    run = synthetic.write_run(tmp_path / "run", workloads=("digits_mlp",), settings={"none": (1, 1, 0), "l2": (1.2, 1, 0)},
                              precisions={"float32": 1.0}, repeats=2, extra_docs=docs)
    data = analysis.load(run)
    flagged = analysis.flags.gpu_baselines_not_gpu_bound(data.trials)
    assert sorted(flagged["workload"]) == ["synthetic_cnn", "transformer_encoder"]  # not resnet50, not the CPU cell
    table = analysis.overhead(data.trials)
    notes = table.groupby("workload")["note"].agg(lambda n: " | ".join(n))
    assert "45% < 80%: not measuring the regularizer" in notes["synthetic_cnn"]
    assert "not shown to be GPU-bound" in notes["transformer_encoder"]
    assert "80%" not in notes["resnet50"] and "80%" not in notes["digits_mlp"]
    index = write_report(run)
    summary = (index.parent / "summary.md").read_text()
    assert "WARNING: the GPU baseline of synthetic_cnn (mixed_bfloat16" in summary
    assert "not measuring the regularizer" in summary and "GPU util, steady (%)" in summary
    assert "GPU baseline of resnet50" not in summary


def _cell(workload: str, factors: dict, **per_setting) -> list[dict]:
    """GPU trial docs of one cell: setting -> step-time factor; per_setting[name](doc) edits a setting's docs."""
    docs = []
    for setting, factor in factors.items():
        for r in range(3):
            d = synthetic.trial_doc(workload=workload, setting=setting, precision="mixed_bfloat16", repeat=r,
                                    device_kind="gpu", device_name="NVIDIA H200", step_time_s=0.02 * factor)
            d["energy"].update(steady_gpu_util_mean=97.0, input_bound=False)
            per_setting.get(setting, lambda doc: None)(d)
            docs.append(d)
    return docs


def _report(tmp_path, docs):
    run = synthetic.write_run(tmp_path / "run", workloads=("digits_mlp",), settings={"none": (1, 1, 0)},
                              precisions={"float32": 1.0}, repeats=2, extra_docs=docs)
    data = analysis.load(run)
    notes = analysis.overhead(data.trials).set_index(["workload", "setting", "metric"])["note"]
    summary = (write_report(run).parent / "summary.md").read_text()
    return data, notes, summary


def test_a_regularized_cell_under_80_percent_is_flagged_even_when_its_baseline_is_not(tmp_path):
    """Defect caught: only baselines checked for GPU utilization, so a regularizer that starves the
    GPU (a host-side transform) reads as a GPU cost."""
    def starved(d):
        d["energy"].update(steady_gpu_util_mean=52.0, input_bound=True)

    data, notes, summary = _report(tmp_path, _cell("resnet50", {"none": 1.0, "dropout": 1.05, "mixup": 1.6},
                                                   mixup=starved))
    flags = analysis.flags.cell_flags(data.trials)
    util = flags[flags["flag"] == "not_gpu_bound"]
    assert util[["workload", "setting"]].values.tolist() == [["resnet50", "mixup"]]
    assert "52% < 80%" in notes[("resnet50", "mixup", "step_time")]
    assert "80%" not in notes[("resnet50", "dropout", "step_time")]
    assert "GPU baseline of resnet50" not in summary  # the baseline is GPU-bound
    assert "## Flagged cells" in summary and "52% < 80%" in summary.split("## Flagged cells")[1]


def test_input_side_bound_cells_are_flagged_in_the_table_and_the_report(tmp_path):
    """Defect caught: a mixup cell whose host-side mixing is slower than its step shown as the
    regularizer's GPU cost, with nothing said."""
    def slow_input(d):
        d["timing"].update(input_time_per_batch_s=0.045, input_workers=1, input_overlaps_step=False,
                           input_side_bound=True, input_feed="uint8-cast-on-device")

    def quick_input(d):
        d["timing"].update(input_time_per_batch_s=0.002, input_workers=1, input_overlaps_step=False,
                           input_side_bound=False, input_feed="uint8-cast-on-device")

    data, notes, summary = _report(tmp_path, _cell("synthetic_cnn", {"none": 1.0, "mixup": 3.0, "l2": 1.1},
                                                   none=quick_input, l2=quick_input, mixup=slow_input))
    flags = analysis.flags.cell_flags(data.trials)
    bound = flags[flags["flag"] == "input_side_bound"]
    assert bound[["workload", "setting"]].values.tolist() == [["synthetic_cnn", "mixup"]]
    assert "input-side bound" in notes[("synthetic_cnn", "mixup", "step_time")]
    assert "45.0 ms" in notes[("synthetic_cnn", "mixup", "step_time")]
    assert "input-side bound" not in notes[("synthetic_cnn", "l2", "step_time")]
    assert "input-side bound" in summary.split("## What could not be decided")[1].split("##")[0]
    assert "input-side bound" in summary.split("## Flagged cells")[1]


def test_synced_and_free_running_step_times_apart_by_more_than_10_percent_are_flagged(tmp_path):
    """Defect caught: a cell whose synced step carries host work the device would overlap (its
    overheads then include that host work) reported without a word."""
    def apart(d):  # free-running 20% under the synced median
        d["timing"].update(free_running_step_s=d["timing"]["step_time_p50_s"] * 0.8)

    def close(d):  # 5%: within the limit
        d["timing"].update(free_running_step_s=d["timing"]["step_time_p50_s"] * 0.95)

    data, notes, summary = _report(tmp_path, _cell("transformer_encoder", {"none": 1.0, "dropout": 1.3, "l2": 1.1},
                                                   none=close, dropout=apart, l2=close))
    flags = analysis.flags.cell_flags(data.trials)
    gap = flags[flags["flag"] == "sync_gap"]
    assert gap[["workload", "setting"]].values.tolist() == [["transformer_encoder", "dropout"]]
    assert gap["value"].iloc[0] == pytest.approx(-0.2)
    assert analysis.flags.SYNC_GAP_LIMIT == 0.10
    assert "free-running" in notes[("transformer_encoder", "dropout", "step_time")]
    assert "free-running" not in notes[("transformer_encoder", "l2", "step_time")]
    assert "more than 10%" in summary.split("## Flagged cells")[1]
