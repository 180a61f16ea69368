"""Synthetic runs with known answers, for tests and the analysis benchmark.

`write_run` writes a run directory in the trial-file contract (schema_version 1) where each
regularizer's true step-time factor, memory factor and accuracy gain are chosen by the caller,
so the overhead analysis can be checked against the truth.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

DEFAULT_SETTINGS = {  # setting -> (step-time factor, host-memory factor, best-val-accuracy gain)
    "none": (1.0, 1.0, 0.0),
    "l2": (1.2, 1.0, 0.01),
    "dropout": (1.05, 1.02, 0.02),
    "batch_norm": (1.5, 1.3, 0.03),
}
DEFAULT_PRECISIONS = {"float32": 1.0, "mixed_bfloat16": 0.6}  # precision -> step-time factor


def _hash(*parts) -> str:
    return hashlib.sha256("|".join(map(str, parts)).encode()).hexdigest()[:10]


def trial_doc(*, workload: str, setting: str, precision: str, repeat: int, batch_size: int = 64,
              backend: str = "tensorflow", device_name: str = "Synthetic CPU", device_kind: str = "cpu",
              step_time_s: float = 0.01, host_peak_bytes: int = 500_000_000, best_val_accuracy: float = 0.9,
              epochs: int = 5, status: str = "ok", reason: str | None = None, time_to_target_s=None,
              device_peak_bytes=None, energy_j=None, id_salt: str = "") -> dict:
    """One trial file's content, following the contract."""
    cell = _hash(workload, setting, precision, batch_size, backend, epochs)
    trial_id = f"{workload}-{setting}-{precision}-b{batch_size}-{backend[:2]}-r{repeat}-{_hash(cell, repeat, id_salt)}"
    steps = 100
    samples_per_s = batch_size / step_time_s
    regs = [] if setting == "none" else [{"name": n, "params": {}} for n in setting.split("+")]
    doc = {
        "schema_version": 1, "trial_id": trial_id, "status": status, "reason": reason,
        "trial": {"workload": workload, "setting": setting, "regularizers": regs, "precision": precision,
                  "batch_size": batch_size, "backend": backend, "repeat": repeat, "seed": repeat, "epochs": epochs,
                  "target_val_accuracy": 0.85, "cell_id": cell},
        "node": {"hostname": "synthetic", "device_kind": device_kind, "device_name": device_name,
                 "executor": "process", "fingerprint_id": _hash(device_name), "accelerator_type": None,
                 "cpu_threads": 2},
        "started_at": "2025-01-01T00:00:00Z", "finished_at": "2025-01-01T00:01:00Z", "wall_s": 60.0,
    }
    if status != "ok":
        return doc
    train_s = step_time_s * steps * epochs
    doc["timing"] = {"data_s": 0.1, "build_s": 0.2, "first_step_s": 0.5, "train_s": train_s, "validation_s": 0.05,
                     "steady_state_steps": steps * (epochs - 1), "step_time_p50_s": step_time_s,
                     "step_time_p95_s": step_time_s * 1.1, "step_time_mean_s": step_time_s, "step_time_cv": 0.05,
                     "samples_per_s": samples_per_s, "jit_compile": True}
    null = {} if device_peak_bytes is not None else {"device_peak_bytes": "no GPU on this node",
                                                     "nvml_used_peak_bytes": "no GPU on this node"}
    doc["memory"] = {"host_peak_bytes": int(host_peak_bytes), "device_peak_bytes": device_peak_bytes,
                     "nvml_used_peak_bytes": None, "null_reasons": null}
    doc["energy"] = {"energy_j": energy_j, "mean_power_w": None, "gpu_util_mean": None,
                     "energy_per_sample_j": None if energy_j is None else energy_j / (samples_per_s * train_s),
                     "input_bound": None, "null_reasons": {} if energy_j else {"energy_j": "no NVML on this node"}}
    doc["compute"] = {"flops_per_sample": 1e6, "achieved_flops_per_s": 1e6 * samples_per_s,
                      "peak_flops_per_s": 1e11, "mfu": 1e6 * samples_per_s / 1e11}
    curve = []
    for e in range(1, epochs + 1):
        val = best_val_accuracy * (1 - 0.5 ** e) / (1 - 0.5 ** epochs)
        curve.append({"epoch": e, "wall_s": train_s * e / epochs, "loss": 1.0 / e, "accuracy": min(1.0, val + 0.03),
                      "val_loss": 1.1 / e, "val_accuracy": val, "xent_loss": 1.0 / e, "val_xent_loss": 1.1 / e})
    doc["convergence"] = {"epochs_run": epochs, "stopped_epoch": None, "best_val_accuracy": best_val_accuracy,
                          "final_val_accuracy": best_val_accuracy, "final_train_accuracy": best_val_accuracy + 0.03,
                          "generalization_gap": 0.03, "target_val_accuracy": 0.85,
                          "time_to_target_s": time_to_target_s, "epochs_to_target": None,
                          "loss_scale_skipped_steps": 0, "applicable": True, "curve": curve}
    return doc


def write_run(out_dir, *, workloads=("digits_mlp",), settings=None, precisions=None, repeats: int = 5,
              noise: float = 0.01, seed: int = 0, device_name="Synthetic CPU", backend: str = "tensorflow",
              batch_sizes=(64,), base_step_time_s: float = 0.01, epochs: int = 5, extra_docs=(),
              manifest: bool = True) -> Path:
    """Write a run directory; return its path.

    device_name may be a list: one run spanning several devices (as a heterogeneous Ray cluster).
    Step time = base x setting factor x precision factor x (1 + noise * N(0,1)), each trial drawn
    independently, so the true step-time overhead of a setting is exactly its factor.
    """
    settings = DEFAULT_SETTINGS if settings is None else settings
    precisions = DEFAULT_PRECISIONS if precisions is None else precisions
    rng = np.random.default_rng(seed)
    run_dir = Path(out_dir)
    (run_dir / "trials").mkdir(parents=True, exist_ok=True)
    ids = []
    devices = [device_name] if isinstance(device_name, str) else list(device_name)
    cells = [(d, w, b) for d in devices for w in workloads for b in batch_sizes]
    for device, workload, batch in cells:
        for precision, p_factor in precisions.items():
            for setting, (t_factor, m_factor, acc_gain) in settings.items():
                for r in range(repeats):
                    jitter = 1 + noise * rng.standard_normal(3)
                    doc = trial_doc(workload=workload, setting=setting, precision=precision, repeat=r,
                                    batch_size=batch, backend=backend, device_name=device,
                                    step_time_s=base_step_time_s * t_factor * p_factor * jitter[0],
                                    host_peak_bytes=5e8 * m_factor * jitter[1],
                                    best_val_accuracy=min(1.0, 0.9 + acc_gain + noise * rng.standard_normal()),
                                    time_to_target_s=3.0 * t_factor * jitter[2],
                                    epochs=epochs, id_salt=device if len(devices) > 1 else "")
                    ids.append(_write(run_dir, doc))
    for doc in extra_docs:
        ids.append(_write(run_dir, doc))
    if manifest:
        (run_dir / "manifest.json").write_text(json.dumps({
            "schema_version": 1, "run_id": run_dir.name, "suite": {"name": "synthetic"},
            "nodes": {_hash(d): {"hostname": "synthetic", "device_kind": "cpu", "device_name": d} for d in devices},
            "git_commit": None, "started_at": "2025-01-01T00:00:00Z", "finished_at": "2025-01-01T01:00:00Z",
            "status": "complete", "trial_ids": ids}))
    return run_dir


def _write(run_dir: Path, doc: dict) -> str:
    path = run_dir / "trials" / f"{doc['trial_id']}.json"
    with open(path, "w") as f:
        json.dump(doc, f, indent=1)
    return doc["trial_id"]


__all__ = ["trial_doc", "write_run", "DEFAULT_SETTINGS", "DEFAULT_PRECISIONS"]
