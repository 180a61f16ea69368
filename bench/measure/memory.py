"""Memory: host peak RSS of the trial process and the framework allocator's device peak."""
from __future__ import annotations

import resource

from bench import backends


def host_peak_bytes() -> int:
    """Peak resident set size of this process (Linux reports KiB)."""
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


class MemoryTracker:
    """Device allocator peak over the window (GPU only) and host peak RSS at its end."""

    def __init__(self, backend: str, gpu: bool):
        self.backend, self.gpu = backend, gpu
        self.device_peak = None
        self.reason = None if gpu else "no GPU on this node: allocator peak is tracked for GPUs only"

    def start(self) -> None:
        if self.gpu:
            try:
                backends.reset_device_peak(self.backend)
            except Exception as e:  # noqa: BLE001 - a missing counter is a null with a reason
                self.reason = f"allocator peak unavailable: {e}"

    def stop(self) -> None:
        if self.gpu and self.reason is None:
            try:
                self.device_peak = backends.device_peak_bytes(self.backend)
            except Exception as e:  # noqa: BLE001
                self.reason = f"allocator peak unavailable: {e}"

    def result(self) -> dict:
        out = {"host_peak_bytes": host_peak_bytes(), "device_peak_bytes": self.device_peak, "null_reasons": {}}
        if self.device_peak is None:
            out["null_reasons"]["device_peak_bytes"] = self.reason
        return out
