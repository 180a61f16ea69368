"""Model FLOPs per sample (analytic) and MFU against the node's measured matmul peak.

Counts multiply-adds of Dense and Conv2D layers (2 FLOPs each); normalization, activations,
pooling and the optimizer are ignored. Training FLOPs per sample = 3 x forward (forward, and
backward for activations and weights).
"""
from __future__ import annotations

import math


def forward_flops_per_sample(model) -> float:
    import keras

    total = 0.0
    for layer in model._flatten_layers(include_self=False, recursive=True):
        if isinstance(layer, keras.layers.Dense):
            in_shape = layer.input.shape
            rows = math.prod(d for d in in_shape[1:-1]) if len(in_shape) > 2 else 1
            total += 2.0 * rows * in_shape[-1] * layer.units
        elif isinstance(layer, keras.layers.Conv2D):
            out = layer.output.shape  # (batch, h, w, c) channels_last
            kh, kw = layer.kernel_size
            cin = layer.input.shape[-1] // layer.groups
            total += 2.0 * out[1] * out[2] * out[3] * kh * kw * cin
    return total


def compute_section(model, samples_per_s: float | None, peak_flops_per_s: float | None,
                    peak_reason: str | None = None) -> dict:
    flops = 3.0 * forward_flops_per_sample(model)
    achieved = flops * samples_per_s if samples_per_s else None
    out = {"flops_per_sample": flops, "achieved_flops_per_s": achieved,
           "peak_flops_per_s": peak_flops_per_s,
           "mfu": achieved / peak_flops_per_s if achieved and peak_flops_per_s else None,
           "null_reasons": {}}
    if peak_flops_per_s is None:
        out["null_reasons"]["peak_flops_per_s"] = peak_reason or "not measured"
        out["null_reasons"]["mfu"] = out["null_reasons"]["peak_flops_per_s"]
    return out
