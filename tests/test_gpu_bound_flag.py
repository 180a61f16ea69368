"""The report flags a GPU baseline under 80% steady-state GPU utilization (or with none measured) as
not measuring the regularizer: a finding at the top, a note on each of its cell's overheads."""
from __future__ import annotations

import json

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
    flagged = analysis.overheads.gpu_baselines_not_gpu_bound(data.trials)
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
