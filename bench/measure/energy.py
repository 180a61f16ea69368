"""NVML: device and per-process memory, energy, power and utilization over the timed window.

A background thread samples every `interval_s`. Energy is the difference of the board's energy
counter (mJ) when the GPU has one, else the integral of sampled power. Without NVML or without a
visible GPU every field is None with the reason; that is normal on CPU nodes.
"""
from __future__ import annotations

import os
import threading
import time

INPUT_BOUND_UTIL_PERCENT = 80.0


def _visible_index() -> int | None:
    """NVML index of the first GPU this process may use (CUDA_VISIBLE_DEVICES honoured)."""
    vis = os.environ.get("CUDA_VISIBLE_DEVICES")
    if vis is None:
        return 0
    first = vis.split(",")[0].strip()
    if first == "":
        return None
    if first.isdigit():
        return int(first)
    import pynvml

    return pynvml.nvmlDeviceGetIndex(pynvml.nvmlDeviceGetHandleByUUID(first))


class NvmlSampler:
    def __init__(self, interval_s: float = 0.05):
        self.interval_s = interval_s
        self.reason = None
        self.handle = None
        self.samples = []  # (t, power_w, util_percent, device_used_bytes, process_used_bytes)
        self._stop = threading.Event()
        self._thread = None
        self.energy_mj = [None, None]
        self.t = [None, None]
        try:
            import pynvml

            pynvml.nvmlInit()
            index = _visible_index()
            if index is None:
                self.reason = "CUDA_VISIBLE_DEVICES is empty: this trial runs on the CPU"
            elif pynvml.nvmlDeviceGetCount() == 0:
                self.reason = "NVML reports no GPU"
            else:
                self.handle = pynvml.nvmlDeviceGetHandleByIndex(index)
        except Exception as e:  # noqa: BLE001 - NVML missing is normal on CPU nodes
            self.reason = f"NVML unavailable ({type(e).__name__}: {e})".replace("\n", " ")

    @property
    def available(self) -> bool:
        return self.handle is not None

    def _energy(self):
        import pynvml

        try:
            return pynvml.nvmlDeviceGetTotalEnergyConsumption(self.handle)
        except Exception:  # noqa: BLE001 - older boards have no energy counter
            return None

    def _sample(self):
        import pynvml

        power = pynvml.nvmlDeviceGetPowerUsage(self.handle) / 1000.0
        util = pynvml.nvmlDeviceGetUtilizationRates(self.handle).gpu
        used = pynvml.nvmlDeviceGetMemoryInfo(self.handle).used
        mine = None
        try:
            pid = os.getpid()
            for p in pynvml.nvmlDeviceGetComputeRunningProcesses(self.handle):
                if p.pid == pid and p.usedGpuMemory is not None:
                    mine = int(p.usedGpuMemory)
        except Exception:  # noqa: BLE001 - not permitted in some containers
            pass
        self.samples.append((time.perf_counter(), power, float(util), int(used), mine))

    def _loop(self):
        while not self._stop.wait(self.interval_s):
            self._sample()

    def start(self) -> None:
        if not self.available:
            return
        self.energy_mj[0], self.t[0] = self._energy(), time.perf_counter()
        self._sample()
        self._thread = threading.Thread(target=self._loop, name="nvml-sampler", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if not self.available or self._thread is None:
            return
        self._stop.set()
        self._thread.join()
        self._sample()
        self.energy_mj[1], self.t[1] = self._energy(), time.perf_counter()

    def energy_result(self, samples_seen: int | None, steady_spans=None, steady_samples: int | None = None) -> dict:
        """Energy over the whole fit() window, and over the steady-state steps.

        energy_j / mean_power_w / gpu_util_mean: the whole window (first step's compile and the
        validation passes included). steady_*: only the steady-state steps (`steady_spans`, from
        StepTimer), integrated from the sampled power and utilization; energy_per_sample_j and
        input_bound use them when given, so compile time at 0% utilization does not flag a short
        trial as input-bound.
        """
        keys = ("energy_j", "mean_power_w", "gpu_util_mean", "energy_per_sample_j", "input_bound",
                "steady_energy_j", "steady_mean_power_w", "steady_gpu_util_mean")
        if not self.available or len(self.samples) < 2:
            reason = self.reason or "too few NVML samples"
            return {**{k: None for k in keys}, "null_reasons": {k: reason for k in keys}}
        t0, t1 = self.t
        s = self.samples
        times = [x[0] for x in s]
        if None not in self.energy_mj:
            energy_j = (self.energy_mj[1] - self.energy_mj[0]) / 1000.0
        else:  # trapezoid integral of sampled power
            energy_j = integrate(times, [x[1] for x in s], [(times[0], times[-1])])
        util = integrate(times, [x[2] for x in s], [(times[0], times[-1])]) / max(times[-1] - times[0], 1e-9)
        out = {
            "energy_j": energy_j,
            "mean_power_w": energy_j / (t1 - t0),
            "gpu_util_mean": util,
            "energy_per_sample_j": energy_j / samples_seen if samples_seen else None,
            "input_bound": util < INPUT_BOUND_UTIL_PERCENT,
            "steady_energy_j": None, "steady_mean_power_w": None, "steady_gpu_util_mean": None,
            "null_reasons": {},
        }
        spans = [(a, b) for a, b in (steady_spans or []) if b > a]
        steady_s = sum(b - a for a, b in spans)
        if steady_s > 0:
            steady_j = integrate(times, [x[1] for x in s], spans)
            steady_util = integrate(times, [x[2] for x in s], spans) / steady_s
            out.update(steady_energy_j=steady_j, steady_mean_power_w=steady_j / steady_s,
                       steady_gpu_util_mean=steady_util, input_bound=steady_util < INPUT_BOUND_UTIL_PERCENT)
            if steady_samples:
                out["energy_per_sample_j"] = steady_j / steady_samples
        else:
            for k in ("steady_energy_j", "steady_mean_power_w", "steady_gpu_util_mean"):
                out["null_reasons"][k] = "no steady-state steps"
        return out

    def memory_result(self) -> dict:
        """nvml_used_peak_bytes: this process's peak when NVML reports it, else the device's."""
        if not self.available or not self.samples:
            return {"nvml_used_peak_bytes": None, "nvml_device_used_peak_bytes": None,
                    "null_reasons": {"nvml_used_peak_bytes": self.reason or "no NVML samples"}}
        mine = [x[4] for x in self.samples if x[4] is not None]
        device = max(x[3] for x in self.samples)
        return {"nvml_used_peak_bytes": max(mine) if mine else device,
                "nvml_used_is_process": bool(mine),
                "nvml_device_used_peak_bytes": device, "null_reasons": {}}


def integrate(times: list[float], values: list[float], spans) -> float:
    """Integral over `spans` [(start, end)] of the piecewise-linear curve through (times, values),
    held constant beyond the first and last sample. Units: value x seconds (W -> J)."""
    import numpy as np

    t, v = np.asarray(times, dtype=float), np.asarray(values, dtype=float)
    total = 0.0
    for a, b in spans:
        inner = t[(t > a) & (t < b)]
        grid = np.concatenate(([a], inner, [b]))
        y = np.interp(grid, t, v)
        total += float(np.sum((grid[1:] - grid[:-1]) * (y[1:] + y[:-1]) / 2))
    return total
