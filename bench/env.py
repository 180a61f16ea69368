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


def _mig_uuids(pynvml, handle) -> list[str]:
    """UUIDs of the MIG instances of a GPU (empty when MIG is off or not supported)."""
    try:
        current, _pending = pynvml.nvmlDeviceGetMigMode(handle)
        if current != pynvml.NVML_DEVICE_MIG_ENABLE:
            return []
        out = []
        for j in range(pynvml.nvmlDeviceGetMaxMigDeviceCount(handle)):
            try:
                out.append(pynvml.nvmlDeviceGetUUID(pynvml.nvmlDeviceGetMigDeviceHandleByIndex(handle, j)))
            except pynvml.NVMLError:
                continue  # an empty MIG slot
        return out
    except Exception:  # noqa: BLE001 - pre-Ampere boards and old drivers have no MIG calls
        return []


def gpus() -> tuple[list[dict], str | None]:
    """GPUs seen by NVML, in NVML (PCI bus) order, regardless of CUDA_VISIBLE_DEVICES; or ([], reason)."""
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
                        "cuda_driver": f"{cuda // 1000}.{cuda % 1000 // 10}",
                        "mig_uuids": _mig_uuids(pynvml, h)})
    finally:
        pynvml.nvmlShutdown()
    return out, None if out else "NVML reports no GPU"


def visible_gpu_tokens(value: str | None = None) -> list[str] | None:
    """CUDA_VISIBLE_DEVICES (or `value`) as a list of tokens: None when unset (every GPU is
    visible), [] when empty (no GPU). A token is a CUDA index, a GPU UUID or a MIG UUID."""
    if value is None:
        value = os.environ.get("CUDA_VISIBLE_DEVICES")
    if value is None:
        return None
    return [t.strip() for t in value.split(",") if t.strip()]


def resolve_gpu(token: str, gpu_list: list[dict]) -> dict | None:
    """The NVML record of a CUDA_VISIBLE_DEVICES token, or None when no GPU matches.

    An index is read in PCI bus order (every trial process sets CUDA_DEVICE_ORDER=PCI_BUS_ID,
    which is NVML's order); `GPU-...` matches a GPU's UUID; `MIG-...` matches a MIG instance and
    returns its parent GPU with `mig_uuid` set (energy and utilization are then the parent's,
    shared with the other instances)."""
    token = token.strip()
    if token.isdigit():
        match = next((g for g in gpu_list if g["index"] == int(token)), None)
        return dict(match, mig_uuid=None) if match else None
    for g in gpu_list:
        if g.get("uuid") == token:
            return dict(g, mig_uuid=None)
        if token in (g.get("mig_uuids") or []) or (token.startswith("MIG-GPU-") and token[4:].split("/")[0] == g.get("uuid")):
            return dict(g, mig_uuid=token)
    return None


def trial_gpu(gpu_list: list[dict] | None = None) -> dict | None:
    """The NVML record of the GPU this process uses (the first visible one), or None."""
    tokens = visible_gpu_tokens()
    gpu_list = fingerprint()["gpus"] if gpu_list is None else gpu_list
    if tokens == []:
        return None
    if tokens is None:
        return dict(gpu_list[0], mig_uuid=None) if gpu_list else None
    return resolve_gpu(tokens[0], gpu_list)


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
