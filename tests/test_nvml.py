"""NVML readings of a GPU trial, on the CPU with a fake pynvml (tests/fake_nvml.py): the trial's own
GPU on a node of several, opened by UUID; a MIG instance read through its parent and marked shared;
steady-window energy from the energy counter, not from 1 s-averaged power; windows too short for
a counter give null with the reason."""
from __future__ import annotations

import pytest

from tests.fake_nvml import FakeClock, FakeGpu, FakeNvml, install

# One trial: compile 0-3 s (100 W, idle), steady epoch 3-6 s (400 W, 95% busy), validation 6-7 s
# (150 W, 30%), steady epoch 7-10 s, then evaluation; the first step of each epoch is not steady.
PHASES_W = [(0.0, 100.0), (3.0, 400.0), (6.0, 150.0), (7.0, 400.0), (10.0, 120.0)]
PHASES_UTIL = [(0.0, 0.0), (3.0, 95.0), (6.0, 30.0), (7.0, 95.0), (10.0, 10.0)]
STEADY = [(3.1, 6.0), (7.1, 10.0)]


@pytest.fixture
def node(monkeypatch):
    """Three H100s in PCI bus order (100, 200, 300 W when idle), the second split into MIG instances."""
    from bench import env

    clock = FakeClock()
    gpus = [FakeGpu("GPU-aaa", power=[(0.0, 100.0)]),
            FakeGpu("GPU-bbb", power=[(0.0, 200.0)], mig_uuids=("MIG-b0", "MIG-b1")),
            FakeGpu("GPU-ccc", power=[(0.0, 300.0)])]
    nvml = FakeNvml(clock, gpus)
    install(monkeypatch, nvml)
    yield nvml
    env.fingerprint.cache_clear()


def run(nvml, spans=STEADY, until: float = 10.5, interval_s: float = 0.05, steady_samples: int = 5800):
    """A sampler on the fake clock, read every interval_s from 0 to `until`; its energy section."""
    from bench.measure.energy import NvmlSampler

    nvml.clock.t = 0.0
    s = NvmlSampler(interval_s=interval_s, clock=nvml.clock)
    assert s.available, s.reason
    nvml.calls.clear()  # the node fingerprint read every GPU once; the sampler must read one
    s._loop = lambda: None  # the test reads on the fake clock instead of the thread
    s.start()
    while nvml.clock.t < until - 1e-9:
        nvml.clock.t = round(nvml.clock.t + interval_s, 9)
        s._sample()
    s.stop()
    return s, s.energy_result(10_000, steady_spans=spans, steady_samples=steady_samples)


@pytest.mark.parametrize("visible, watts", [("GPU-ccc", 300), ("2", 300), ("0", 100), (None, 100), ("GPU-aaa,GPU-ccc", 100)])
def test_the_trials_gpu_is_read_by_uuid(node, monkeypatch, visible, watts):
    if visible is None:
        monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    else:
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
    s, e = run(node)
    assert {h for _, h in node.calls} == {("gpu", watts // 100 - 1)}  # no other GPU is ever read
    assert e["mean_power_w"] == pytest.approx(watts, rel=1e-3) and e["energy_shared"] is False
    assert s.gpu["uuid"] == f"GPU-{'abc'[watts // 100 - 1] * 3}"


def test_unknown_token_is_a_reason_not_gpu_0(node, monkeypatch):
    from bench.measure.energy import NvmlSampler

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "GPU-zzz")
    s = NvmlSampler()
    assert not s.available and "GPU-zzz" in s.reason and "matches no GPU" in s.reason
    e = s.energy_result(10)
    assert e["energy_j"] is None and "GPU-zzz" in e["null_reasons"]["energy_j"]


def test_mig_instance_reads_its_parent_and_marks_energy_shared(node, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "MIG-b1")
    s, e = run(node)
    assert ("energy", ("gpu", 1)) in node.calls and ("power", ("gpu", 1)) in node.calls  # the parent board
    assert ("memory", ("mig", 1, 1)) in node.calls  # memory: the instance's own
    assert e["energy_shared"] is True and e["energy_source"] == "total_energy_counter"
    assert e["energy_j"] == pytest.approx(200 * 10.5, rel=1e-3)  # the whole board, shared
    assert e["energy_per_sample_j"] is None and "shared" in e["null_reasons"]["energy_per_sample_j"]
    for k in ("gpu_util_mean", "steady_gpu_util_mean", "input_bound"):
        assert e[k] is None and "MIG" in e["null_reasons"][k], k
    m = s.memory_result()
    assert m["nvml_device_used_peak_bytes"] == 2**30 // 4 and m["nvml_used_peak_bytes"] == 300 * 2**20 // 4
    from bench import env

    assert env.trial_gpu()["mig_uuid"] == "MIG-b1" and env.trial_gpu()["uuid"] == "GPU-bbb"


def test_steady_energy_comes_from_the_counter_at_the_window_edges(node, monkeypatch):
    """Averaged power lags up to 1 s: compile and validation power would leak into the steady figure."""
    from bench.measure.energy import integrate

    node.gpus[0].power, node.gpus[0].util = PHASES_W, PHASES_UTIL
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    s, e = run(node)
    steady_s = sum(b - a for a, b in STEADY)
    assert e["energy_source"] == "total_energy_counter"
    assert e["steady_energy_j"] == pytest.approx(400 * steady_s, rel=0.005)
    assert e["steady_mean_power_w"] == pytest.approx(400, rel=0.005)
    assert e["energy_per_sample_j"] == pytest.approx(400 * steady_s / 5800, rel=0.005)
    exact = 100 * 3 + 400 * 3 + 150 + 400 * 3 + 120 * 0.5
    assert e["energy_j"] == pytest.approx(exact, rel=1e-3)
    # What integrating the 1 s-averaged readings gives instead: off by more than 5%.
    t, w = [x[0] for x in s.samples], [x[1] for x in s.samples]
    assert integrate(t, w, STEADY) < 0.95 * e["steady_energy_j"]
    # Utilization: only readings whose 1 s period lies inside a steady span.
    assert e["steady_gpu_util_mean"] == pytest.approx(95, abs=0.5) and e["input_bound"] is False
    assert e["gpu_util_mean"] < 80  # the whole window, compile included


def test_power_samples_are_the_marked_fallback(node, monkeypatch):
    node.gpus[0].power, node.gpus[0].util, node.gpus[0].energy_counter = PHASES_W, PHASES_UTIL, False
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "GPU-aaa")
    s, e = run(node)
    assert e["energy_source"] == "power_samples"
    assert e["steady_mean_power_w"] == pytest.approx(400, rel=0.01)  # no compile or validation in it
    assert e["steady_energy_j"] == pytest.approx(400 * sum(b - a for a, b in STEADY), rel=0.01)
    assert e["energy_j"] is not None and "energy" in s.read_errors


def test_windows_too_short_for_the_counters_are_null_with_the_reason(node, monkeypatch):
    """The gpu suite's old ~0.25 s steady windows: shorter than a 1 s power average or utilization period."""
    node.gpus[0].power, node.gpus[0].util = PHASES_W, PHASES_UTIL
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    short = [(3.5, 3.9), (7.5, 7.9)]
    _, e = run(node, spans=short, steady_samples=100)
    assert e["steady_gpu_util_mean"] is None and "seconds, not steps" in e["null_reasons"]["steady_gpu_util_mean"]
    assert e["input_bound"] is None and e["null_reasons"]["input_bound"]
    assert e["steady_energy_j"] is None and "shorter than the 1 s" in e["null_reasons"]["steady_energy_j"]
    assert e["energy_per_sample_j"] is None and e["null_reasons"]["energy_per_sample_j"]
    assert e["energy_j"] is not None  # the whole window is long enough
    node.gpus[0].energy_counter = False
    _, e = run(node, spans=short, steady_samples=100)
    assert e["steady_energy_j"] is None and "1 s average" in e["null_reasons"]["steady_energy_j"]


def test_every_null_has_a_reason_and_cpu_trials_say_why(node, monkeypatch):
    from bench.measure.energy import ENERGY_KEYS, NvmlSampler

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    s = NvmlSampler()
    s.start()
    s.stop()
    e = s.energy_result(1000)
    assert all(e[k] is None and "CPU" in e["null_reasons"][k] for k in ENERGY_KEYS)
    assert s.memory_result()["nvml_used_peak_bytes"] is None
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    _, e = run(node, spans=[])
    assert all(e[k] is not None or e["null_reasons"].get(k) for k in ENERGY_KEYS)
    assert e["null_reasons"]["steady_energy_j"] == "no steady-state steps"


def test_integrate_holds_the_ends():
    from bench.measure.energy import integrate, readings_inside

    assert integrate([0, 1], [0, 10], [(0.0, 1.0)]) == pytest.approx(5)
    assert integrate([0, 1], [0, 10], [(2.0, 3.0)]) == pytest.approx(10)
    assert readings_inside([1.0, 1.5, 2.0, 2.5], [1, 2, 3, 4], [(0.5, 2.0)], 1.0) == [2, 3]


@pytest.mark.parametrize("fields, reading, window_s, source", [
    (("instant", "average"), "NVML_FI_DEV_POWER_INSTANT", 0.0, "nvml"),
    (("average",), "NVML_FI_DEV_POWER_AVERAGE", 1.0, "nvml"),
    ((), "nvmlDeviceGetPowerUsage", 1.0, "assumed"),  # an older driver: no power fields
])
def test_power_averaging_window_comes_from_the_board_or_is_named_assumed(node, monkeypatch, fields, reading,
                                                                         window_s, source):
    node.gpus[0].power, node.gpus[0].util, node.gpus[0].energy_counter = PHASES_W, PHASES_UTIL, False
    node.gpus[0].power_fields = fields
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    short = [(3.2, 3.9), (7.2, 7.9)]  # steady spans shorter than a 1 s average
    _, e = run(node, spans=short, steady_samples=100)
    assert (e["power_reading"], e["power_average_window_s"], e["power_average_window_source"]) == (
        reading, window_s, source)
    if window_s == 0.0:  # instantaneous readings: the short steady spans get their power, and only theirs
        assert e["steady_mean_power_w"] == pytest.approx(400, rel=0.01)
    else:
        assert e["steady_energy_j"] is None and f"{window_s:g} s average" in e["null_reasons"]["steady_energy_j"]
    if source == "assumed":
        assert "assumed" in e["power_average_window_note"] and "GA100" in e["power_average_window_note"]
