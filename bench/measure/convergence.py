"""Convergence summary from per-epoch history: curve, best/final accuracy, time-to-target."""
from __future__ import annotations


def curve_rows(history: dict, epoch_wall_s: list[float], epoch_validation_s: list[float]) -> list[dict]:
    """One row per epoch. wall_s: since training began, validation included; train_wall_s: without it."""
    rows, val_so_far = [], 0.0
    n = min(len(epoch_wall_s), len(history.get("loss", [])))
    for i in range(n):
        val_so_far += epoch_validation_s[i]
        row = {"epoch": i + 1, "wall_s": epoch_wall_s[i], "train_wall_s": epoch_wall_s[i] - val_so_far}
        for key in ("loss", "accuracy", "xent_loss", "val_loss", "val_accuracy", "val_xent_loss"):
            values = history.get(key)
            row[key] = float(values[i]) if values is not None and i < len(values) else None
        rows.append(row)
    return rows


def summarize(curve: list[dict], target: float | None, applicable: bool, stopped_epoch: int | None,
              final_train_accuracy: float | None, final_val_accuracy: float | None,
              skipped_steps: int | None) -> dict:
    val = [r["val_accuracy"] for r in curve if r.get("val_accuracy") is not None]
    hit = next((r for r in curve if target is not None and (r.get("val_accuracy") or 0.0) >= target), None)
    gap = (final_train_accuracy - final_val_accuracy
           if final_train_accuracy is not None and final_val_accuracy is not None else None)
    out = {
        "applicable": applicable,
        "epochs_run": len(curve),
        "stopped_epoch": stopped_epoch,
        "best_val_accuracy": max(val) if val else None,
        "final_val_accuracy": final_val_accuracy,
        "final_train_accuracy": final_train_accuracy,
        "generalization_gap": gap,
        "target_val_accuracy": target,
        "time_to_target_s": hit["wall_s"] if hit else None,
        "epochs_to_target": hit["epoch"] if hit else None,
        # AlgoPerf's rule for a miss: the whole training time, with target_reached false beside it
        "target_reached": (hit is not None) if target is not None else None,
        "time_to_target_or_budget_s": hit["wall_s"] if hit else (curve[-1]["wall_s"] if curve and target is not None else None),
        "loss_scale_skipped_steps": skipped_steps,
        "curve": curve,
        "null_reasons": {},
    }
    if not applicable:
        for k in ("best_val_accuracy", "final_val_accuracy", "final_train_accuracy", "target_val_accuracy",
                  "time_to_target_s", "epochs_to_target", "generalization_gap", "target_reached",
                  "time_to_target_or_budget_s"):
            out[k] = None
            out["null_reasons"][k] = "not applicable: synthetic data with random labels"
    elif hit is None:
        why = "no target set" if target is None else f"val accuracy never reached {target}"
        keys = ("time_to_target_s", "epochs_to_target")
        if target is None:
            keys += ("target_val_accuracy", "target_reached", "time_to_target_or_budget_s")
        for k in keys:
            out["null_reasons"][k] = why
    return out
