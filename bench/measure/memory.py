"""Memory: host peak RSS of the trial process over the training window, and the framework
allocator's device peak.

host_peak_bytes is the process's peak resident set over the window: on Linux the kernel's
high-water mark (VmHWM) is reset to the current RSS at start() (/proc/self/clear_refs, "5") and read
at stop(), so neither the imports before training (a fresh interpreter) nor the evaluation after it
count; where that reset is not possible, the peak since the process began, with the window
noted in host_peak_window. A child forked from the zygote starts with the pages it shares with the
zygote not yet counted in its RSS until it touches them, so absolute host peaks differ by start
method: analysis never pairs trials of different start methods (process.start_method is a cell key).

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


def reset_host_peak() -> bool:
    """Reset this process's RSS high-water mark to its current RSS (Linux >= 4.0); False if not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


class MemoryTracker:
    """Device allocator peak over the window (GPU only) and host peak RSS at its end (read at
    stop(), so what the process allocates afterwards, e.g. evaluation, does not count)."""

    def __init__(self, backend: str, gpu: bool):
        self.backend, self.gpu = backend, gpu
        self.host_peak_bytes = None
        self.window = None
        self.device = {"device_peak_bytes": None, "device_reserved_peak_bytes": None}
        self.reason = None if gpu else "no GPU on this node: allocator peak is tracked for GPUs only"

    def start(self) -> None:
        self.window = "training window" if reset_host_peak() else "process lifetime up to the end of training"
        if self.gpu:
            try:
                backends.reset_device_peak(self.backend)
            except Exception as e:  # noqa: BLE001 - a missing counter is a null with a reason
                self.reason = f"allocator peak unavailable: {type(e).__name__}: {e}"[:300]

    def stop(self) -> None:
        self.host_peak_bytes = host_peak_bytes()  # since start() when the reset worked
        if self.gpu and self.reason is None:
            try:
                backends.synchronize(self.backend)
                self.device = backends.device_memory(self.backend)
            except Exception as e:  # noqa: BLE001
                self.reason = f"allocator peak unavailable: {type(e).__name__}: {e}"[:300]

    def result(self) -> dict:
        host = self.host_peak_bytes if self.host_peak_bytes is not None else host_peak_bytes()
        out = {"host_peak_bytes": host, "host_peak_window": self.window, **self.device,
               "null_reasons": {}}
        for key, value in self.device.items():
            if value is None:
                out["null_reasons"][key] = self.reason or (
                    f"the {self.backend} allocator reports no reserved peak (torch only)")
        return out
