"""One flat view of a trial record: the columns of trials.parquet and of analysis' trials table.

A trial file is nested (trial, node, timing, memory, ...); tables want one row per trial. The
columns are the contract's fields (bench/schema/README.md "Trial file fields"), unprefixed, in this order; both
`RunStore.export_parquet` and `analysis.load` use `flatten_trial`, so the two tables agree.
"""
from __future__ import annotations

import json

from bench.workloads.rewrite import describe

SECTIONS = (
    ("trial", ("workload", "setting", "precision", "batch_size", "backend", "repeat", "seed", "epochs", "cell_id",
               "learning_rate", "steps_per_epoch", "max_train_samples", "target_val_accuracy", "float32_matmul")),
    ("node", ("hostname", "device_kind", "device_name", "executor", "fingerprint_id", "accelerator_type",
              "cpu_threads", "gpu_uuid")),
    ("timing", ("data_s", "build_s", "first_step_s", "train_s", "validation_s", "steady_state_steps",
                "steady_state_s", "step_time_p50_s", "step_time_p95_s", "step_time_mean_s", "step_time_cv",
                "samples_per_s", "end_to_end_samples_per_s", "per_epoch_overhead_s", "jit_compile",
                "free_running_step_s", "free_running_samples_per_s", "attention_path", "attention_kernel",
                "host_sync_per_step", "input_feed", "input_batch_bytes", "input_time_per_batch_s", "input_workers",
                "input_overlaps_step", "input_side_bound")),
    ("memory", ("host_peak_bytes", "device_peak_bytes", "nvml_used_peak_bytes")),
    ("energy", ("energy_j", "mean_power_w", "gpu_util_mean", "energy_per_sample_j", "input_bound",
                "steady_energy_j", "steady_gpu_util_mean", "energy_source", "energy_shared")),
    ("compute", ("flops_per_sample", "achieved_flops_per_s", "peak_flops_per_s", "mfu", "mfu_datasheet")),
    ("convergence", ("epochs_run", "stopped_epoch", "best_val_accuracy", "final_val_accuracy",
                     "final_train_accuracy", "generalization_gap", "time_to_target_s", "epochs_to_target",
                     "target_reached", "time_to_target_or_budget_s", "loss_scale_skipped_steps", "applicable")),
    ("process", ("start_method",)),
)
TOP_FIELDS = ("schema_version", "trial_id", "status", "reason", "started_at", "finished_at", "wall_s")
COLUMNS = (TOP_FIELDS + ("regularizers", "null_reasons", "regularizer_placements")
           + tuple(f for _, fields in SECTIONS for f in fields))
CURVE_FIELDS = ("epoch", "wall_s", "train_wall_s", "loss", "accuracy", "val_loss", "val_accuracy", "xent_loss",
                "val_xent_loss")
STATUSES = ("ok", "failed", "diverged", "skipped")


def _label(regularizers) -> str:
    if not regularizers:
        return "none"
    return "+".join(str(r.get("name")) if isinstance(r, dict) else str(r) for r in regularizers)


def flatten_trial(doc: dict) -> dict:
    """The record as one row of COLUMNS (absent fields are None)."""
    row = {f: doc.get(f) for f in TOP_FIELDS}
    trial = doc.get("trial") or {}
    regs = trial.get("regularizers") or []
    row["regularizers"] = json.dumps(regs, sort_keys=True)
    reasons = []
    for section, fields in SECTIONS:
        sec = doc.get(section)
        sec = sec if isinstance(sec, dict) else {}
        for f in fields:
            row[f] = sec.get(f)
        nr = sec.get("null_reasons")
        if isinstance(nr, dict):
            reasons += [f"{k}: {v}" for k, v in nr.items()]
    row["null_reasons"] = "; ".join(reasons) or None
    model = doc.get("model") if isinstance(doc.get("model"), dict) else {}
    row["regularizer_placements"] = describe(model.get("regularizer_placements"))
    if row["setting"] is None:
        row["setting"] = _label(regs)
    if row["target_val_accuracy"] is None:
        row["target_val_accuracy"] = (doc.get("convergence") or {}).get("target_val_accuracy")
    return row


def curve_rows(doc: dict) -> list[dict]:
    """One row per epoch of the record's curve: CURVE_FIELDS plus the trial id."""
    curve = (doc.get("convergence") or {}).get("curve") or []
    return [{"trial_id": doc.get("trial_id"), **{f: p.get(f) for f in CURVE_FIELDS}} for p in curve if isinstance(p, dict)]
