"""One float32 matmul policy on every backend: a suite field (default ieee), carried by each trial and
its cell id, applied through each framework's own switch and read back into the record (the
per-backend application is checked in tests/test_device_check.py's trial processes), and never
paired or pooled across policies by the analysis."""
from __future__ import annotations

import pandas as pd
import pytest

from bench.errors import UserError
from tests.fixtures import synthetic_runs as synthetic


def _suite(**extra):
    from bench import suite

    return suite.parse({"name": "t", "workloads": ["digits_mlp"], "regularizers": ["none", "l2"],
                        "precisions": ["float32"], "batch_sizes": [64], "repeats": 1, **extra}, "t.yaml")


def test_suite_field_default_and_identity():
    ieee, tf32 = _suite(), _suite(float32_matmul="tf32")
    assert {t.float32_matmul for t in ieee.trials} == {"ieee"} and ieee.resolved["float32_matmul"] == "ieee"
    assert {t.float32_matmul for t in tf32.trials} == {"tf32"}
    by_setting = lambda s: {t.setting: t for t in s.trials}  # noqa: E731
    for setting, a in by_setting(ieee).items():
        b = by_setting(tf32)[setting]
        assert a.cell_id != b.cell_id and a.trial_id != b.trial_id  # a different experiment
        assert a.to_record()["float32_matmul"] == "ieee" and b.to_record()["float32_matmul"] == "tf32"
        assert type(a).from_dict(b.to_dict()).float32_matmul == "tf32"
    with pytest.raises(UserError, match="float32_matmul: unknown value 'tf31'"):
        _suite(float32_matmul="tf31")


def test_set_float32_matmul_rejects_unknown_policies():
    from bench import backends

    with pytest.raises(ValueError, match="unknown float32 matmul policy"):
        backends.set_float32_matmul("jax", "bf16")


def _docs(policy_of_setting: dict, repeats: int = 3) -> list[dict]:
    docs = []
    for setting, policy in policy_of_setting.items():
        for r in range(repeats):
            d = synthetic.trial_doc(workload="w", setting=setting, precision="float32", repeat=r,
                                    step_time_s=0.01 * (1.2 if setting != "none" else 1.0), id_salt=policy)
            d["trial"]["float32_matmul"] = policy
            docs.append(d)
    return docs


def _trials(docs) -> pd.DataFrame:
    from bench.records import flatten_trial

    return pd.DataFrame([flatten_trial(d) for d in docs]).assign(run="r")


def test_overheads_never_pair_cells_of_different_policies():
    import analysis

    mixed = _trials(_docs({"none": "ieee", "l2": "tf32"}))
    assert "float32_matmul" in mixed.columns
    row = analysis.overhead(mixed, ["step_time"]).iloc[0]
    assert row["float32_matmul"] == "tf32" and row["mark"] == "no baseline", row.to_dict()
    same = _trials(_docs({"none": "tf32", "l2": "tf32"}))
    row = analysis.overhead(same, ["step_time"]).iloc[0]
    assert row["estimate"] == pytest.approx(1.2) and row["mark"] != "no baseline"


def test_compare_keeps_policies_apart():
    from analysis.axes import device_labels, with_axis
    from analysis.comparison import throughput

    both = _trials(_docs({"none": "ieee"}) + [dict(d, trial_id=d["trial_id"] + "x", trial={**d["trial"], "float32_matmul": "tf32"})
                                              for d in _docs({"none": "ieee"})])
    tp = throughput(with_axis(both, "device"))
    assert sorted(tp["float32_matmul"]) == ["ieee", "tf32"] and len(set(device_labels(both))) == 2


def test_torch_flags_stay_readable_both_ways():
    """torch >= 2.9 raises wherever its old and new TF32 flags disagree (cuBLAS reads them on every
    matmul): after applying either policy, in either order, every flag reads back."""
    import importlib.util

    if importlib.util.find_spec("torch") is None:
        pytest.skip("torch is not installed")
    import torch

    from bench import backends

    for policy in ("tf32", "ieee", "tf32", "ieee"):
        applied = backends.set_float32_matmul("torch", policy)
        assert applied["cuda.matmul.allow_tf32"] is applied["cudnn.allow_tf32"] is (policy == "tf32")
        for flags in (torch.backends.cuda.matmul, torch.backends.cudnn.conv, torch.backends.cudnn.rnn):
            getattr(flags, "fp32_precision", None)  # the new API's view reads too
