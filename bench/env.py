"""Hardware and software fingerprint of a node (`regbench env`).

Cheap: reads /proc, NVML and package metadata; imports no framework. `fingerprint_id` hashes what
makes numbers comparable (device and CPU model, driver, CUDA, package versions), not the hostname,
so two identical machines share it.
"""
from __future__ import annotations

import functools
import hashlib
import json
import os
import platform
import socket
from importlib import metadata

PACKAGES = ("regbench", "tensorflow", "keras", "jax", "jaxlib", "torch", "ray", "numpy", "nvidia-ml-py")


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def memory_bytes() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError):
        return None


def gpus() -> tuple[list[dict], str | None]:
    """GPUs seen by NVML (all of them, regardless of CUDA_VISIBLE_DEVICES), or ([], reason)."""
    try:
        import pynvml

        pynvml.nvmlInit()
    except Exception as e:  # noqa: BLE001 - no NVML is normal on CPU nodes
        return [], f"NVML unavailable ({type(e).__name__})"
    out = []
    try:
        driver = pynvml.nvmlSystemGetDriverVersion()
        cuda = pynvml.nvmlSystemGetCudaDriverVersion_v2()
        for i in range(pynvml.nvmlDeviceGetCount()):
            h = pynvml.nvmlDeviceGetHandleByIndex(i)
            try:
                cc = list(pynvml.nvmlDeviceGetCudaComputeCapability(h))
            except Exception:  # noqa: BLE001
                cc = None
            out.append({"index": i, "name": pynvml.nvmlDeviceGetName(h),
                        "uuid": pynvml.nvmlDeviceGetUUID(h),
                        "memory_bytes": int(pynvml.nvmlDeviceGetMemoryInfo(h).total),
                        "compute_capability": cc, "driver": driver,
                        "cuda_driver": f"{cuda // 1000}.{cuda % 1000 // 10}"})
    finally:
        pynvml.nvmlShutdown()
    return out, None if out else "NVML reports no GPU"


def versions() -> dict:
    out = {"python": platform.python_version()}
    for p in PACKAGES:
        try:
            out[p] = metadata.version(p)
        except metadata.PackageNotFoundError:
            out[p] = None
    return out


def accelerator_type(gpu_name: str | None) -> str | None:
    """A short hardware class from a device name: 'NVIDIA H100 80GB HBM3' -> 'H100'."""
    if not gpu_name:
        return None
    for token in gpu_name.replace("-", " ").split():
        t = token.upper()
        if t[:1] in "ABHLTV" and any(c.isdigit() for c in t) and t not in ("NVIDIA",):
            return t
    return gpu_name.split()[-1]


@functools.lru_cache(maxsize=1)
def fingerprint() -> dict:
    """This node's fingerprint; computed once per process (treat the result as read-only)."""
    gpu_list, gpu_reason = gpus()
    fp = {
        "hostname": socket.gethostname(),
        "os": f"{platform.system()} {platform.release()}",
        "machine": platform.machine(),
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpu_bf16": bool({"avx512_bf16", "amx_bf16"} & cpu_flags()),
        "memory_bytes": memory_bytes(),
        "gpus": gpu_list,
        "gpu_reason": gpu_reason,
        "versions": versions(),
    }
    identity = {k: fp[k] for k in ("cpu", "cpu_count", "machine", "versions")}
    identity["gpus"] = [(g["name"], g["driver"], g["cuda_driver"]) for g in gpu_list]
    fp["fingerprint_id"] = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:12]
    return fp
