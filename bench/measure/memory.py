"""Memory: host peak RSS of the trial process and the framework allocator's device peak.

device_peak_bytes is the allocator's peak over the timed window (torch max_memory_allocated and
TF get_memory_info peak, both reset at start(); JAX peak_bytes_in_use, which cannot be reset but
covers only this fresh process). device_reserved_peak_bytes: torch's caching-allocator peak
(max_memory_reserved); None on the other backends.
"""
from __future__ import annotations

import resource

from bench import backends


def host_peak_bytes() -> int:
    """Peak resident set size of this process: the kernel's high-water mark of its own memory
    (VmHWM in /proc/self/status, KiB). Not getrusage's ru_maxrss where /proc is readable: Linux
    carries ru_maxrss across execve, so a trial process started as a fresh interpreter by a large
    parent (a driver, a Ray worker) would report the parent's size when that is larger."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024  # KiB on Linux


class MemoryTracker:
    """Device allocator peak over the window (GPU only) and host peak RSS at its end (read at
    stop(), so what the process allocates afterwards, e.g. evaluation, does not count)."""

    def __init__(self, backend: str, gpu: bool):
        self.backend, self.gpu = backend, gpu
        self.host_peak_bytes = None
        self.device = {"device_peak_bytes": None, "device_reserved_peak_bytes": None}
        self.reason = None if gpu else "no GPU on this node: allocator peak is tracked for GPUs only"

    def start(self) -> None:
        if self.gpu:
            try:
                backends.reset_device_peak(self.backend)
            except Exception as e:  # noqa: BLE001 - a missing counter is a null with a reason
                self.reason = f"allocator peak unavailable: {type(e).__name__}: {e}"[:300]

    def stop(self) -> None:
        self.host_peak_bytes = host_peak_bytes()
        if self.gpu and self.reason is None:
            try:
                backends.synchronize(self.backend)
                self.device = backends.device_memory(self.backend)
            except Exception as e:  # noqa: BLE001
                self.reason = f"allocator peak unavailable: {type(e).__name__}: {e}"[:300]

    def result(self) -> dict:
        host = self.host_peak_bytes if self.host_peak_bytes is not None else host_peak_bytes()
        out = {"host_peak_bytes": host, **self.device, "null_reasons": {}}
        for key, value in self.device.items():
            if value is None:
                out["null_reasons"][key] = self.reason or (
                    f"the {self.backend} allocator reports no reserved peak (torch only)")
        return out
