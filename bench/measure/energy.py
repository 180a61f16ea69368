"""NVML: device and per-process memory, energy, power and utilization over the timed window.

Which GPU: the trial's GPU as CUDA and the framework see it (the first CUDA_VISIBLE_DEVICES token:
an index in PCI bus order, a GPU UUID or a MIG UUID), resolved once by `bench.env.resolve_gpu` and
opened by UUID (`nvmlDeviceGetHandleByUUID`), never by a CUDA index. A MIG instance is read through
its parent GPU: power, energy and utilization are the whole board's, shared with the other
instances (`energy_shared`), so the per-sample energy and the utilization are null with that
reason; memory is the instance's own.

Energy over a window comes from the board's total-energy counter (`nvmlDeviceGetTotalEnergyConsumption`,
mJ, Volta and newer) where the device has one (`energy_source: total_energy_counter`). Only without
it is sampled power integrated (`energy_source: power_samples`): only readings whose whole averaging
period lies inside the window count, and a window shorter than that period has no power figure.

Power readings and their averaging period (`power_reading`, `power_average_window_s`,
`power_average_window_source`): NVML reports no period in seconds, but its power fields name
theirs. Where the board answers the field NVML_FI_DEV_POWER_INSTANT, that is read (period 0 s,
source "nvml"); else NVML_FI_DEV_POWER_AVERAGE (a 1 s average by NVML's definition, "nvml"); else
`nvmlDeviceGetPowerUsage`, which NVML documents as a 1 s average on Ampere (except GA100) and newer
and instantaneous on GA100 and older: 1 s is then assumed (source "assumed"; the longer period
only drops readings, never mixes compile or validation power into a window). Utilization is "the
share of the last sample period (1/6 s to 1 s, by product) in which a kernel ran": likewise only
readings whose whole period lies in the steady window count. A window too short for a counter
gives null with the reason, never a figure that mixes in compile or validation time.

A background thread reads every `interval_s`. Without NVML or without a visible GPU every field
is None with the reason; that is normal on CPU nodes.
"""
from __future__ import annotations

import os
import threading
import time

INPUT_BOUND_UTIL_PERCENT = 80.0
POWER_AVERAGE_S = 1.0  # NVML_FI_DEV_POWER_AVERAGE, and nvmlDeviceGetPowerUsage where no field answers (assumed)
POWER_FIELDS = (  # (pynvml constant, its value in nvml.h, averaging period s): the first the board answers is read
    ("NVML_FI_DEV_POWER_INSTANT", 186, 0.0),
    ("NVML_FI_DEV_POWER_AVERAGE", 185, POWER_AVERAGE_S),
)
POWER_USAGE_NOTE = ("no NVML power field answers: nvmlDeviceGetPowerUsage is read, which NVML documents as a 1 s "
                    "average on Ampere (except GA100) and newer and instantaneous on GA100 and older; 1 s assumed")
UTIL_PERIOD_S = 1.0  # nvmlDeviceGetUtilizationRates: the last 1/6 s .. 1 s (the longest assumed)
MIN_READINGS = 5  # of readings wholly inside the window, for an averaged figure
COUNTER_INTERVALS = 20  # a counter window spans at least this many reading intervals (edge error < ~5%)
ENERGY_KEYS = ("energy_j", "mean_power_w", "gpu_util_mean", "energy_per_sample_j", "input_bound",
               "steady_energy_j", "steady_mean_power_w", "steady_gpu_util_mean", "energy_source", "energy_shared",
               "power_reading", "power_average_window_s", "power_average_window_source", "power_average_window_note")


class NvmlSampler:
    """Samples the trial's GPU. `gpu`: its NVML record (bench.env.resolve_gpu); None resolves the
    first CUDA_VISIBLE_DEVICES token against this node's GPUs. `clock`: seconds, the clock of the
    steady spans passed to energy_result (time.perf_counter, as StepTimer)."""

    def __init__(self, interval_s: float = 0.05, gpu: dict | None = None, clock=time.perf_counter):
        self.interval_s = interval_s
        self.clock = clock
        self.reason = None
        self.handle = None  # the GPU (a MIG instance's parent): power, energy, utilization
        self.memory_handle = None  # the GPU, or the MIG instance: memory and processes
        self.gpu = None
        self.shared = False
        self.samples = []  # (t, power_w, util_percent, device_used_bytes, process_used_bytes, energy_mj)
        self.read_errors: dict[str, str] = {}
        self._stop = threading.Event()
        self._thread = None
        self.energy_mj = [None, None]
        self.t = [None, None]
        self.power_field = None  # the NVML field id read for power, or None: nvmlDeviceGetPowerUsage
        self.power = {}  # power_reading, power_average_window_s, power_average_window_source, ..._note
        try:
            import pynvml

            pynvml.nvmlInit()
            self.gpu = gpu if gpu is not None else self._resolve()
            if self.gpu is not None:
                self.handle = pynvml.nvmlDeviceGetHandleByUUID(self.gpu["uuid"])
                self.memory_handle = self.handle
                if self.gpu.get("mig_uuid"):
                    self.shared = True
                    self.memory_handle = pynvml.nvmlDeviceGetHandleByUUID(self.gpu["mig_uuid"])
                self._choose_power_reading()
        except Exception as e:  # noqa: BLE001 - NVML missing is normal on CPU nodes
            self.handle = self.memory_handle = None
            self.reason = f"NVML unavailable ({type(e).__name__}: {e})".replace("\n", " ")

    def _resolve(self) -> dict | None:
        """The NVML record of this process's first visible GPU, or None with self.reason set."""
        from bench import env

        tokens = env.visible_gpu_tokens()
        if tokens == []:
            self.reason = "CUDA_VISIBLE_DEVICES is empty: this trial runs on the CPU"
            return None
        gpus = env.fingerprint()["gpus"]
        if not gpus:
            self.reason = "NVML reports no GPU"
            return None
        if tokens is None:
            return dict(gpus[0], mig_uuid=None)
        found = env.resolve_gpu(tokens[0], gpus)
        if found is None:
            self.reason = (f"CUDA_VISIBLE_DEVICES token {tokens[0]!r} matches no GPU NVML reports "
                           f"({', '.join(g['uuid'] for g in gpus)})")
        return found

    def _choose_power_reading(self) -> None:
        """The first power field the board answers (POWER_FIELDS), else nvmlDeviceGetPowerUsage; sets
        self.power_field and self.power (the record's power_* fields)."""
        import pynvml

        for name, number, window_s in POWER_FIELDS:
            field = getattr(pynvml, name, number)
            try:
                self._field_w(field)
            except Exception:  # noqa: BLE001 - an older driver or board: the next reading
                continue
            self.power_field = field
            self.power = {"power_reading": name, "power_average_window_s": window_s,
                          "power_average_window_source": "nvml",
                          "power_average_window_note": f"{name} answers on this board: "
                                                       + ("instantaneous power" if window_s == 0 else
                                                          f"a {window_s:g} s average, by NVML's definition")}
            return
        self.power = {"power_reading": "nvmlDeviceGetPowerUsage", "power_average_window_s": POWER_AVERAGE_S,
                      "power_average_window_source": "assumed", "power_average_window_note": POWER_USAGE_NOTE}

    def _field_w(self, field: int) -> float:
        """One NVML power field of the GPU, in W; raises when the board does not answer it."""
        import pynvml

        value = pynvml.nvmlDeviceGetFieldValues(self.handle, [field])[0]
        if value.nvmlReturn != getattr(pynvml, "NVML_SUCCESS", 0):
            raise RuntimeError(f"NVML field {field}: return code {value.nvmlReturn}")
        kind = ("dVal", "uiVal", "ulVal", "ullVal", "sllVal", "siVal", "usVal")[value.valueType]
        return float(getattr(value.value, kind)) / 1000.0  # mW

    def _power_w(self) -> float:
        import pynvml

        if self.power_field is not None:
            return self._field_w(self.power_field)
        return pynvml.nvmlDeviceGetPowerUsage(self.handle) / 1000.0

    @property
    def available(self) -> bool:
        return self.handle is not None

    def _read(self, name: str, fn):
        """fn() or None; the first error of each reading is kept for the null reasons."""
        try:
            return fn()
        except Exception as e:  # noqa: BLE001 - a reading a board lacks is a null with a reason
            self.read_errors.setdefault(name, f"{type(e).__name__}: {e}".replace("\n", " ")[:200])
            return None

    def _energy(self):
        import pynvml

        return self._read("energy", lambda: pynvml.nvmlDeviceGetTotalEnergyConsumption(self.handle))

    def _processes(self):
        import pynvml

        pid = os.getpid()
        for p in pynvml.nvmlDeviceGetComputeRunningProcesses(self.memory_handle):
            if p.pid == pid and p.usedGpuMemory is not None:
                return int(p.usedGpuMemory)
        return None

    def _sample(self):
        import pynvml

        t = self.clock()
        power = self._read("power", self._power_w)
        util = None
        if not self.shared:  # NVML has no utilization for a MIG instance or its MIG-enabled parent
            util = self._read("utilization", lambda: float(pynvml.nvmlDeviceGetUtilizationRates(self.handle).gpu))
        used = self._read("memory", lambda: int(pynvml.nvmlDeviceGetMemoryInfo(self.memory_handle).used))
        mine = self._read("processes", self._processes)
        self.samples.append((t, power, util, used, mine, self._energy()))

    def _loop(self):
        while not self._stop.wait(self.interval_s):
            self._sample()

    def start(self) -> None:
        if not self.available:
            return
        self.t[0] = self.clock()
        self._sample()
        self.energy_mj[0] = self.samples[-1][5]
        self._thread = threading.Thread(target=self._loop, name="nvml-sampler", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if not self.available or self._thread is None:
            return
        self._stop.set()
        self._thread.join()
        self._sample()
        self.energy_mj[1], self.t[1] = self.samples[-1][5], self.clock()

    # -- results -----------------------------------------------------------------------------
    def _column(self, i: int) -> tuple[list[float], list[float]]:
        rows = [(s[0], s[i]) for s in self.samples if s[i] is not None]
        return [r[0] for r in rows], [float(r[1]) for r in rows]

    def energy_result(self, samples_seen: int | None, steady_spans=None, steady_samples: int | None = None) -> dict:
        """Energy, power and utilization over the whole fit() window and over the steady-state steps.

        energy_j / mean_power_w / gpu_util_mean: the whole window (first step's compile and the
        validation passes included). steady_*: only the steady-state steps (`steady_spans`
        [(start, end)] on self.clock, from StepTimer). energy_per_sample_j = steady energy over
        `steady_samples`; input_bound = steady utilization under 80%. Each figure is null, with the
        reason, when the readings cannot give it for that window.
        """
        out: dict = {k: None for k in ENERGY_KEYS}
        reasons: dict = {}
        if not self.available or len(self.samples) < 2:
            reason = self.reason or "too few NVML samples"
            return {**out, "null_reasons": {k: reason for k in ENERGY_KEYS}}
        shared = ("MIG instance: the parent GPU's energy and power are shared with its other MIG instances, "
                  "not this trial's alone")
        out["energy_shared"] = self.shared
        out.update(self.power)
        window_s = self.power["power_average_window_s"]
        t0, t1 = self.t
        counter_t, counter = self._column(5)
        power_t, power = self._column(1)
        util_t, util = self._column(2)
        whole = [(t0, t1)]

        # whole window
        if None not in self.energy_mj:
            out["energy_j"] = (self.energy_mj[1] - self.energy_mj[0]) / 1000.0
            out["energy_source"] = "total_energy_counter"
        elif len(power) >= 2:
            out["energy_j"] = integrate(power_t, power, whole)
            out["energy_source"] = "power_samples"
        else:
            reasons["energy_j"] = reasons["energy_source"] = (
                "no energy counter and no power readings: " + self._errors("energy", "power"))
        if out["energy_j"] is not None and t1 > t0:
            out["mean_power_w"] = out["energy_j"] / (t1 - t0)
        elif out["energy_j"] is not None:
            reasons["mean_power_w"] = "an empty window"
        if util:
            out["gpu_util_mean"] = integrate(util_t, util, whole) / max(t1 - t0, 1e-9)
        elif self.shared:
            reasons["gpu_util_mean"] = "NVML reports no utilization for a MIG instance or its parent GPU"
        else:
            reasons["gpu_util_mean"] = "no utilization readings: " + self._errors("utilization")

        # steady window
        spans = [(a, b) for a, b in (steady_spans or []) if b > a]
        steady_s = sum(b - a for a, b in spans)
        if steady_s <= 0:
            for k in ("steady_energy_j", "steady_mean_power_w", "steady_gpu_util_mean"):
                reasons[k] = "no steady-state steps"
        else:
            if out["energy_source"] == "total_energy_counter":
                need = COUNTER_INTERVALS * self.interval_s
                if steady_s >= need:
                    out["steady_energy_j"] = sum(interp(counter_t, counter, b) - interp(counter_t, counter, a)
                                                 for a, b in spans) / 1000.0
                else:
                    reasons["steady_energy_j"] = (
                        f"steady window {steady_s:.3g} s is shorter than the {need:g} s the energy counter needs "
                        f"(read every {self.interval_s:g} s)")
            elif out["energy_source"] == "power_samples":
                inside = readings_inside(power_t, power, spans, window_s)
                if len(inside) >= MIN_READINGS:
                    out["steady_energy_j"] = sum(inside) / len(inside) * steady_s
                else:
                    reasons["steady_energy_j"] = (
                        f"no energy counter, and {len(inside)} power readings (< {MIN_READINGS}) have their "
                        f"{window_s:g} s average wholly inside the steady spans (longest "
                        f"{max(b - a for a, b in spans):.3g} s)")
            else:
                reasons["steady_energy_j"] = reasons["energy_j"]
            if out["steady_energy_j"] is not None:
                out["steady_mean_power_w"] = out["steady_energy_j"] / steady_s
            else:
                reasons["steady_mean_power_w"] = reasons["steady_energy_j"]
            if util:
                inside = readings_inside(util_t, util, spans, UTIL_PERIOD_S)
                if len(inside) >= MIN_READINGS:
                    out["steady_gpu_util_mean"] = sum(inside) / len(inside)
                else:
                    reasons["steady_gpu_util_mean"] = (
                        f"{len(inside)} utilization readings (< {MIN_READINGS}) cover a {UTIL_PERIOD_S:g} s period "
                        f"wholly inside the steady spans (longest {max(b - a for a, b in spans):.3g} s): "
                        "lengthen the steady window (seconds, not steps)")
            else:
                reasons["steady_gpu_util_mean"] = reasons["gpu_util_mean"]

        # per sample and input-bound: steady window only
        if self.shared:
            reasons["energy_per_sample_j"] = shared
        elif out["steady_energy_j"] is not None and steady_samples:
            out["energy_per_sample_j"] = out["steady_energy_j"] / steady_samples
        else:
            reasons["energy_per_sample_j"] = reasons.get("steady_energy_j", "no steady-state samples")
        if out["steady_gpu_util_mean"] is not None:
            out["input_bound"] = out["steady_gpu_util_mean"] < INPUT_BOUND_UTIL_PERCENT
        else:
            reasons["input_bound"] = reasons["steady_gpu_util_mean"]
        out["null_reasons"] = {k: v for k, v in reasons.items() if out.get(k) is None}
        return out

    def _errors(self, *names: str) -> str:
        return "; ".join(f"{n}: {self.read_errors[n]}" for n in names if n in self.read_errors) or "not reported"

    def memory_result(self) -> dict:
        """nvml_used_peak_bytes: this process's peak when NVML reports it, else the device's (the
        MIG instance's memory for a MIG trial)."""
        used = [x[3] for x in self.samples if x[3] is not None]
        if not self.available or not used:
            reason = self.reason or "no NVML memory readings: " + self._errors("memory")
            return {"nvml_used_peak_bytes": None, "nvml_device_used_peak_bytes": None,
                    "null_reasons": {"nvml_used_peak_bytes": reason, "nvml_device_used_peak_bytes": reason}}
        mine = [x[4] for x in self.samples if x[4] is not None]
        device = max(used)
        return {"nvml_used_peak_bytes": max(mine) if mine else device,
                "nvml_used_is_process": bool(mine),
                "nvml_device_used_peak_bytes": device, "null_reasons": {}}


def interp(times: list[float], values: list[float], t: float) -> float:
    """The piecewise-linear curve through (times, values) at t, held constant beyond the ends."""
    import numpy as np

    return float(np.interp(t, times, values))


def readings_inside(times: list[float], values: list[float], spans, period_s: float) -> list[float]:
    """Readings taken at t whose period (t - period_s, t] lies wholly inside one span."""
    return [v for t, v in zip(times, values) if any(a <= t - period_s and t <= b for a, b in spans)]


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
