"""A fake pynvml for CPU tests: several GPUs in PCI bus order, MIG instances, power as NVML reports it
on A100/H100 (a 1 s trailing average; the power fields NVML_FI_DEV_POWER_INSTANT / _AVERAGE where a
GPU's `power_fields` says the board answers them), a total-energy counter, utilization over a 1 s period.

Each GPU has a power profile and a utilization profile: piecewise-constant functions of the fake
clock, [(from_s, watts or percent), ...]. The energy counter is the exact integral of the power
profile (mJ); nvmlDeviceGetPowerUsage is the profile's mean over the last second (mW), so power
drawn in a compile or a validation pass shows up in readings up to a second after it ended.

    clock = FakeClock()
    nvml = FakeNvml(clock, [FakeGpu("GPU-aaa", power=[(0, 100.0)]), ...])
    monkeypatch.setitem(sys.modules, "pynvml", nvml)
"""
from __future__ import annotations

import dataclasses
import os
from types import SimpleNamespace


class FakeClock:
    """Seconds; advanced by the test (time.perf_counter's stand-in)."""

    def __init__(self, t: float = 0.0):
        self.t = t

    def __call__(self) -> float:
        return self.t


def _mean(profile, a: float, b: float) -> float:
    """Mean of a piecewise-constant profile [(from_s, value), ...] over [a, b]."""
    edges = [p[0] for p in profile[1:]]
    total, t = 0.0, a
    for i, (_, value) in enumerate(profile):
        end = min(b, edges[i]) if i < len(edges) else b
        if end > t:
            total += value * (end - t)
            t = end
    return total / (b - a)


def _integral(profile, b: float) -> float:
    return _mean(profile, 0.0, b) * b if b > 0 else 0.0


@dataclasses.dataclass
class FakeGpu:
    uuid: str
    name: str = "NVIDIA H100 80GB HBM3"
    power: list = dataclasses.field(default_factory=lambda: [(0.0, 100.0)])  # W
    util: list = dataclasses.field(default_factory=lambda: [(0.0, 0.0)])  # percent
    mig_uuids: tuple = ()  # MIG mode on when not empty
    energy_counter: bool = True  # Volta and newer
    memory_used: int = 2**30
    process_memory: int | None = 300 * 2**20  # this process's usage, when NVML reports it
    power_fields: tuple = ()  # NVML power fields the board answers: "instant" and/or "average" (newer drivers)


class NVMLError(Exception):
    pass


class FakeNvml:
    NVMLError = NVMLError
    NVML_DEVICE_MIG_ENABLE = 1
    NVML_SUCCESS = 0
    NVML_ERROR_NOT_SUPPORTED = 3
    NVML_VALUE_TYPE_UNSIGNED_INT = 1
    NVML_FI_DEV_POWER_AVERAGE = 185
    NVML_FI_DEV_POWER_INSTANT = 186

    def __init__(self, clock: FakeClock, gpus: list[FakeGpu]):
        self.clock, self.gpus = clock, gpus
        self.calls: list[tuple] = []  # (function, handle) of every device reading

    # ---- system
    def nvmlInit(self):
        pass

    def nvmlShutdown(self):
        pass

    def nvmlSystemGetDriverVersion(self):
        return "550.54.15"

    def nvmlSystemGetCudaDriverVersion_v2(self):
        return 12040

    def nvmlDeviceGetCount(self):
        return len(self.gpus)

    # ---- handles: ("gpu", index) or ("mig", index, slot)
    def nvmlDeviceGetHandleByIndex(self, i):
        if not 0 <= i < len(self.gpus):
            raise NVMLError("Invalid Argument")
        return ("gpu", i)

    def nvmlDeviceGetHandleByUUID(self, uuid):
        for i, g in enumerate(self.gpus):
            if g.uuid == uuid:
                return ("gpu", i)
            if uuid in g.mig_uuids:
                return ("mig", i, g.mig_uuids.index(uuid))
        raise NVMLError("Not Found")

    def nvmlDeviceGetIndex(self, h):
        if h[0] == "mig":
            raise NVMLError("Not Supported")
        return h[1]

    def nvmlDeviceGetUUID(self, h):
        g = self.gpus[h[1]]
        return g.uuid if h[0] == "gpu" else g.mig_uuids[h[2]]

    def nvmlDeviceGetName(self, h):
        return self.gpus[h[1]].name

    def nvmlDeviceGetCudaComputeCapability(self, h):
        return (9, 0)

    def nvmlDeviceGetMigMode(self, h):
        on = bool(self.gpus[h[1]].mig_uuids)
        return (1 if on else 0, 1 if on else 0)

    def nvmlDeviceGetMaxMigDeviceCount(self, h):
        return 7

    def nvmlDeviceGetMigDeviceHandleByIndex(self, h, j):
        if j >= len(self.gpus[h[1]].mig_uuids):
            raise NVMLError("Not Found")
        return ("mig", h[1], j)

    def nvmlDeviceGetDeviceHandleFromMigDeviceHandle(self, h):
        return ("gpu", h[1])

    # ---- readings
    def _gpu(self, h, what):
        self.calls.append((what, h))
        return self.gpus[h[1]]

    def nvmlDeviceGetPowerUsage(self, h):  # mW, the last second's mean (A100/H100)
        if h[0] == "mig":
            raise NVMLError("Not Supported")
        g, t = self._gpu(h, "power"), self.clock()
        return int(_mean(g.power, t - 1.0, t) * 1000)

    def nvmlDeviceGetFieldValues(self, h, field_ids):
        """Per field: nvmlReturn 0 and the value in mW (unsigned int), or NOT_SUPPORTED. POWER_INSTANT
        is the profile's value now; POWER_AVERAGE its mean over the last second."""
        g, t = self._gpu(h, "power"), self.clock()
        out = []
        for field in field_ids:
            kind = {self.NVML_FI_DEV_POWER_INSTANT: "instant", self.NVML_FI_DEV_POWER_AVERAGE: "average"}.get(field)
            if h[0] == "mig" or kind not in g.power_fields:
                out.append(SimpleNamespace(fieldId=field, nvmlReturn=self.NVML_ERROR_NOT_SUPPORTED, valueType=1,
                                           value=SimpleNamespace(uiVal=0)))
                continue
            watts = _mean(g.power, t - 1.0, t) if kind == "average" else _mean(g.power, t, t + 1e-9)
            out.append(SimpleNamespace(fieldId=field, nvmlReturn=self.NVML_SUCCESS, valueType=1,
                                       value=SimpleNamespace(uiVal=int(watts * 1000))))
        return out

    def nvmlDeviceGetTotalEnergyConsumption(self, h):  # mJ since the driver loaded
        g = self._gpu(h, "energy")
        if h[0] == "mig" or not g.energy_counter:
            raise NVMLError("Not Supported")
        return int(_integral(g.power, self.clock()) * 1000)

    def nvmlDeviceGetUtilizationRates(self, h):
        g, t = self._gpu(h, "utilization"), self.clock()
        if h[0] == "mig" or g.mig_uuids:
            raise NVMLError("Not Supported")
        return SimpleNamespace(gpu=int(round(_mean(g.util, t - 1.0, t))), memory=0)

    def nvmlDeviceGetMemoryInfo(self, h):
        g = self._gpu(h, "memory")
        if h[0] == "mig":
            return SimpleNamespace(used=g.memory_used // 4, total=2**34 // 4)
        return SimpleNamespace(used=g.memory_used, total=2**34)

    def nvmlDeviceGetComputeRunningProcesses(self, h):
        g = self._gpu(h, "processes")
        if g.process_memory is None:
            return []
        return [SimpleNamespace(pid=os.getpid(), usedGpuMemory=g.process_memory // (4 if h[0] == "mig" else 1))]


def install(monkeypatch, nvml: FakeNvml) -> None:
    """Make `import pynvml` return the fake and forget the node fingerprint read before it (call
    `bench.env.fingerprint.cache_clear()` again after the test)."""
    import sys

    from bench import env

    monkeypatch.setitem(sys.modules, "pynvml", nvml)
    env.fingerprint.cache_clear()
