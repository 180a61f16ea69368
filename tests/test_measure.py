"""Measurement units with known answers: StepTimer's steady-state window (single-epoch warm-up and
multi-epoch paths) on a scripted clock and in a real fit, and the host memory peak read from the
trial's own process."""
from __future__ import annotations

import json
import subprocess
import sys
import types

import numpy as np
import pytest

from bench.measure import timing
from tests.conftest import ROOT


class Clock:
    """A scripted perf_counter/time for StepTimer: the test advances it by hand."""

    def __init__(self):
        self.now = 100.0

    def perf_counter(self) -> float:
        return self.now

    def time(self) -> float:
        return 1.7e9 + self.now


def drive(timer, clock, epochs: list[list[float]], validation_s: float = 0.0, first_s: float = 5.0) -> None:
    """Run StepTimer's hooks as fit() would: per epoch the given step durations (the very first
    step of training takes `first_s` instead), then a validation pass of validation_s."""
    timer.on_train_begin()
    for e, steps in enumerate(epochs):
        timer.on_epoch_begin(e)
        for b, dt in enumerate(steps):
            timer.on_train_batch_begin(b)
            clock.now += first_s if (e, b) == (0, 0) else dt
            timer.on_train_batch_end(b, {"loss": 1.0})
        if validation_s:
            timer.on_test_begin()
            clock.now += validation_s
            timer.on_test_end()
        timer.on_epoch_end(e, {"val_xent_loss": 0.5})
    timer.on_train_end()


@pytest.fixture
def clock(monkeypatch):
    c = Clock()
    monkeypatch.setattr(timing, "time", types.SimpleNamespace(perf_counter=c.perf_counter, time=c.time,
                                                               process_time=c.perf_counter))
    return c


def test_single_epoch_run_drops_its_warmup_steps(clock):
    """Defect caught: the first (trace/compile-dominated) steps of a one-epoch run counted in the
    steady state, or steady steps dropped. 40 steps: the first takes 5 s, the next 10 are warm-up
    (0.1 s each), then 29 steady steps of 10 and 12 ms."""
    steady = [0.010, 0.012] * 14 + [0.010]
    timer = timing.StepTimer(warmup_steps=10)
    drive(timer, clock, [[0.0] + [0.1] * 10 + steady])
    r = timer.result(batch_size=64)
    assert r["steps_run"] == 40 and r["first_step_s"] == pytest.approx(5.0)
    assert r["steady_state_steps"] == 29
    assert r["steady_state_s"] == pytest.approx(sum(steady))
    assert r["step_time_p50_s"] == pytest.approx(0.010) and r["step_time_p95_s"] == pytest.approx(0.012)
    assert r["step_time_mean_s"] == pytest.approx(np.mean(steady))
    assert r["samples_per_s"] == pytest.approx(64 * 29 / sum(steady))
    assert r["train_s"] == pytest.approx(5.0 + 1.0 + sum(steady))
    assert r["end_to_end_samples_per_s"] == pytest.approx(39 * 64 / (1.0 + sum(steady)))
    spans = timer.steady_spans()
    assert len(spans) == 1 and spans[0][1] - spans[0][0] == pytest.approx(sum(steady))  # one merged window


def test_multi_epoch_run_drops_the_first_epoch_first_batches_and_validation(clock):
    """Defect caught: first-epoch steps, the first batch of an epoch (iterator start) or the
    validation pass inside the steady state."""
    timer = timing.StepTimer(warmup_steps=10)
    drive(timer, clock, [[0.0] + [0.05] * 7, [0.5] + [0.02] * 7, [0.5] + [0.03] * 7], validation_s=2.0)
    r = timer.result(batch_size=8)
    assert r["steps_run"] == 24 and r["steady_state_steps"] == 14  # epochs 2-3, their first batch excluded
    assert r["step_time_mean_s"] == pytest.approx(0.025) and r["steady_state_s"] == pytest.approx(0.35)
    assert r["validation_s"] == pytest.approx(6.0)
    assert r["train_s"] == pytest.approx(5.0 + 0.35 + 2 * 0.5 + 0.35)  # validation excluded
    assert timer.epoch_validation_s == [2.0, 2.0, 2.0]
    assert r["per_epoch_overhead_s"] == pytest.approx(0.5)  # the iterator-start batch of epochs 2 and 3
    assert len(timer.steady_spans()) == 2  # the validation pass splits the window


def test_single_epoch_warmup_in_a_real_fit():
    """The same window in a real Keras fit: one epoch of 30 batches keeps 30 - 1 - 10 steps."""
    import keras

    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(4, activation="softmax")])
    model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
    x, y = np.random.default_rng(0).random((30 * 4, 8)).astype("float32"), np.zeros(30 * 4, "int32")
    timer = timing.StepTimer(warmup_steps=10)
    model.fit(x, y, batch_size=4, epochs=1, verbose=0, shuffle=False, callbacks=[timer])
    r = timer.result(4)
    assert r["steps_run"] == 30 and r["steady_state_steps"] == 19
    assert [s[1] for s in timer.steps][-19:] == list(range(11, 30))  # batches 11..29 are the steady ones
    assert 0 < r["step_time_p50_s"] <= r["step_time_p95_s"] and r["first_step_s"] > r["step_time_p50_s"]


MIB = 2**20
# The measured process: its own child peaks at 500 MiB, it holds 150 MiB itself during the window
# and 250 MiB more after it.
HOST_PEAK = r"""
import json, subprocess, sys
import numpy as np
from bench.measure.memory import MemoryTracker, host_peak_bytes

subprocess.run([sys.executable, "-c", "b = b'x' * (500 * 2**20)"], check=True)
a = np.ones(150 * 2**20 // 8)
m = MemoryTracker("tensorflow", gpu=False)
m.start()
m.stop()
at_stop = host_peak_bytes()
b = np.ones(250 * 2**20 // 8)
hwm = int(next(l for l in open("/proc/self/status") if l.startswith("VmHWM")).split()[1]) * 1024
print(json.dumps({"tracked": m.result()["host_peak_bytes"], "at_stop": at_stop, "after": host_peak_bytes(),
                  "hwm": hwm}))
"""
# ...started by a parent that holds 500 MiB when it starts it (as a driver or a Ray worker would)
LAUNCHER = r"""
import subprocess, sys
held = b"x" * (500 * 2**20)
sys.exit(subprocess.run([sys.executable, "-c", sys.argv[1]]).returncode)
"""


def test_host_peak_is_this_process_and_read_at_the_end_of_the_window():
    """Defect caught: the host peak of another process: the trial's child (RUSAGE_CHILDREN), its
    parent, or the parent's size carried across exec (getrusage's ru_maxrss on Linux), each 500 MiB
    here; or the peak read after the training window (evaluation's memory counted)."""
    proc = subprocess.run([sys.executable, "-c", LAUNCHER, HOST_PEAK], capture_output=True, text=True, timeout=120,
                          cwd=ROOT, env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stderr[-2000:]
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    assert 150 * MIB < r["tracked"] < 350 * MIB, r  # its own 150 MiB + the interpreter and numpy
    assert r["tracked"] == r["at_stop"]
    assert r["after"] > r["tracked"] + 200 * MIB, r  # the later 250 MiB shows in the process...
    assert abs(r["after"] - r["hwm"]) < 2 * MIB, r  # ...as this process's high-water mark (read just before) says


# ---- MFU against the measured matmul peak and against the board's datasheet ----------------------

@pytest.mark.parametrize("board, dtype, float32_matmul, tflops", [
    ("NVIDIA H100 80GB HBM3", "bfloat16", None, 989.5),  # SXM: 1,979 with sparsity
    ("NVIDIA H100 80GB HBM3", "float32", "tf32", 494.5),
    ("NVIDIA H100 80GB HBM3", "float32", "ieee", 67.0),
    ("NVIDIA H100 PCIe", "float16", None, 756.5),
    ("NVIDIA H200", "bfloat16", None, 989.5),
    ("NVIDIA A100-SXM4-80GB", "bfloat16", None, 312.0),
    ("NVIDIA A100-PCIE-40GB", "float32", "tf32", 156.0),
    ("NVIDIA L4", "float16", None, 121.0),
    ("NVIDIA L40S", "bfloat16", None, 362.05),
])
def test_datasheet_dense_peaks_by_nvml_name(board, dtype, float32_matmul, tflops):
    from bench.measure import datasheet

    peak, source = datasheet.dense_peak_flops_per_s(board, dtype, float32_matmul)
    assert peak == pytest.approx(tflops * 1e12)
    assert "datasheet" in source and "dense" in source


def test_unknown_board_cpu_and_mig_have_no_datasheet_peak():
    from bench.measure import datasheet

    for board, why in [("NVIDIA GeForce RTX 4090", "not in"), (None, "CPU")]:
        peak, reason = datasheet.dense_peak_flops_per_s(board, "bfloat16")
        assert peak is None and why in reason
    peak, reason = datasheet.dense_peak_flops_per_s("NVIDIA H100 80GB HBM3", "bfloat16", mig=True)
    assert peak is None and "MIG" in reason


def test_mfu_is_recorded_against_both_peaks():
    import keras

    from bench.measure.compute import compute_section

    model = keras.Sequential([keras.Input((64,)), keras.layers.Dense(10)])
    flops = 3 * 2 * 64 * 10
    out = compute_section(model, 1000.0, 2e12, "measured in this trial", datasheet=(4e12, "NVIDIA datasheet"))
    assert out["mfu"] == pytest.approx(flops * 1000 / 2e12)
    assert out["mfu_datasheet"] == pytest.approx(flops * 1000 / 4e12)
    assert out["peak_flops_per_s_datasheet"] == 4e12 and out["peak_flops_datasheet_source"] == "NVIDIA datasheet"
    out = compute_section(model, 1000.0, 2e12, "measured", datasheet=(None, "a CPU: no datasheet peak"))
    assert out["mfu_datasheet"] is None and out["null_reasons"]["mfu_datasheet"] == "a CPU: no datasheet peak"
    assert out["null_reasons"]["peak_flops_per_s_datasheet"] == "a CPU: no datasheet peak"
