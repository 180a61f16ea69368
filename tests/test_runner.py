"""The runner on real TensorFlow, one fresh process per trial (python -m bench.executors.child)."""
import pytest

from bench import schema
from bench.trial import Trial
from tests.conftest import run_worker


def trial(**kw):
    base = dict(workload="digits_mlp", regularizers=(), precision="float32", batch_size=64, epochs=3,
                cpu_threads=1)
    base.update(kw)
    return Trial(**base)


def test_phases_and_steady_state_window(tmp_path):
    regs = (("batch_norm", {}), ("augmentation", {"where": "pipeline", "strength": 0.1}),
            ("early_stopping", {"patience": 50, "min_delta": 0.0, "monitor": "val_accuracy",
                                "restore_best_weights": True}))
    r = run_worker(trial(regularizers=regs, precision="mixed_bfloat16"), tmp_path)
    assert r["status"] == "ok", r.get("reason")
    t, c = r["timing"], r["convergence"]
    steps_per_epoch = 1437 // 64  # sklearn digits: 1437 training rows, partial batch dropped
    # steady state: epochs 2..3, first batch of each epoch (iterator start) excluded
    assert t["steady_state_steps"] == 2 * (steps_per_epoch - 1)
    assert t["steps_run"] == 3 * steps_per_epoch
    for key in ("data_s", "build_s", "first_step_s", "train_s", "validation_s"):
        assert t[key] > 0, key
    assert t["first_step_s"] > t["step_time_p50_s"]  # tracing/compilation is kept out of steady state
    assert t["samples_per_s"] == pytest.approx(64 / t["step_time_mean_s"], rel=1e-6)
    # the free-running figure: one more epoch, timed from its second batch begin to its last, a sync at each
    assert t["free_running_steps"] == steps_per_epoch - 2 and t["free_running_syncs"] == "step"  # TF reads every step
    assert t["free_running_samples_per_s"] == pytest.approx(64 / t["free_running_step_s"])
    assert 0.2 < t["free_running_step_s"] / t["step_time_p50_s"] < 5
    assert t["input_pipeline"].startswith("PyDataset")  # input-side augmentation keeps its PyDataset
    assert c["stopped_epoch"] is None and c["epochs_run"] == 3  # patience 50 never stops
    assert all(p["train_wall_s"] < p["wall_s"] for p in c["curve"])
    assert c["curve"][-1]["wall_s"] == pytest.approx(t["train_s"] + t["validation_s"], rel=0.05)
    assert c["loss_scale_skipped_steps"] is None  # only mixed_float16 scales the loss
    assert r["process"]["dtype_policy_at_start"] == "float32"


def test_early_stopping_stops_and_records_the_epoch(tmp_path):
    es = (("early_stopping", {"patience": 0, "min_delta": 0.5, "monitor": "val_accuracy",
                              "restore_best_weights": True}),)
    r = run_worker(trial(regularizers=es, epochs=6), tmp_path)
    c = r["convergence"]
    # min_delta 0.5 means no epoch after the first counts as an improvement: stop after epoch 2
    assert r["status"] == "ok" and c["epochs_run"] == 2 and c["stopped_epoch"] == 2
    assert r["timing"]["input_pipeline"].startswith("tf.data built once per trial")  # validation fed alike


def test_synthetic_workload_is_throughput_only(tmp_path):
    r = run_worker(trial(workload="synthetic_cnn", max_train_samples=512, epochs=2), tmp_path)
    assert r["status"] == "ok", r.get("reason")
    c = r["convergence"]
    assert c["applicable"] is False and c["best_val_accuracy"] is None and c["time_to_target_s"] is None
    assert "not applicable" in c["null_reasons"]["best_val_accuracy"]
    assert [str(p) for p in schema.check_trial(r)] == []  # every null has its reason
    t = r["timing"]  # uint8 images (3 KiB each, int32 labels) cast in the model; tf.data gathers them ahead
    assert t["input_feed"] == "uint8-cast-on-device" and t["input_batch_bytes"] == 64 * (32 * 32 * 3 + 4)
    assert t["input_time_per_batch_s"] > 0 and (t["input_workers"], t["input_overlaps_step"]) == (1, True)
    assert isinstance(t["input_side_bound"], bool)
    # analytic conv FLOPs: 32x32 input, 3x3 kernels, strides 1,2,2,2, filters 32,64,128,128; head 128->256->10
    convs = [(32, 32, 3, 32), (16, 16, 32, 64), (8, 8, 64, 128), (4, 4, 128, 128)]
    forward = sum(2 * h * w * 9 * cin * cout for h, w, cin, cout in convs) + 2 * (128 * 256 + 256 * 10)
    assert r["compute"]["flops_per_sample"] == 3 * forward


def test_precision_skip_is_a_result_not_an_hour(tmp_path):
    r = run_worker(trial(precision="mixed_float16"), tmp_path)
    assert r["status"] == "skipped" and "mixed_float16 on CPU" in r["reason"]
    assert r["wall_s"] < 30
