"""Model FLOPs per sample (analytic) and MFU against the node's measured matmul peak (`mfu`) and
against the board's datasheet dense peak (`mfu_datasheet`, bench/measure/datasheet.py).

Counts multiply-adds (2 FLOPs each) of Dense, Conv2D, EinsumDense and MultiHeadAttention layers:
for attention, the four projections plus the two attention products (scores Q.K^T and the
weighted sum over V: heads x query_len x key_len x head_dim each). Normalization, activations,
softmax, pooling, embedding lookups and the optimizer are ignored. Training FLOPs per sample =
3 x forward (forward, and backward for activations and weights).
"""
from __future__ import annotations

import fcntl
import json
import math
import os
import time

CALIBRATION_DIR_ENV = "REGBENCH_CALIBRATION_DIR"


def _dims(shape) -> int:
    """Product of the non-batch dimensions of a symbolic shape."""
    return math.prod(d for d in shape[1:])


def attention_macs(layer) -> float:
    """Multiply-adds per sample of one keras.layers.MultiHeadAttention call (its first call)."""
    inputs = layer.input if isinstance(layer.input, list) else [layer.input]
    query, value = inputs[0], inputs[1] if len(inputs) > 1 else inputs[0]
    key = inputs[2] if len(inputs) > 2 else value
    q_len, v_len = _dims(query.shape[:-1]), _dims(value.shape[:-1])
    h, kd = layer.num_heads, layer.key_dim
    vd = layer.value_dim or kd
    out = layer.output.shape[-1]
    projections = q_len * query.shape[-1] * h * kd + v_len * key.shape[-1] * h * kd + v_len * value.shape[-1] * h * vd
    products = h * q_len * v_len * (kd + vd)  # Q.K^T, then the weighted sum of V
    return float(projections + products + q_len * h * vd * out)


def einsum_dense_macs(layer) -> float:
    """Multiply-adds per sample of an EinsumDense: output elements x contracted kernel dimensions."""
    spec_in, rest = layer.equation.split(",")
    spec_kernel, spec_out = rest.split("->")
    size = dict(zip(spec_kernel, layer.kernel.shape))
    size.update({c: d for c, d in zip(spec_in, layer.input.shape) if d is not None})
    out_elements = math.prod(size[c] for c in spec_out if c in size and c != spec_in[0])
    contracted = math.prod(size[c] for c in spec_kernel if c not in spec_out)
    return float(out_elements * contracted)


def forward_flops_per_sample(model) -> float:
    import keras

    layers = list(model._flatten_layers(include_self=False, recursive=True))
    inside_attention = {id(sub) for layer in layers if isinstance(layer, keras.layers.MultiHeadAttention)
                        for sub in layer._flatten_layers(include_self=False, recursive=True)}
    total = 0.0
    for layer in layers:
        if id(layer) in inside_attention:
            continue  # counted with its MultiHeadAttention
        if isinstance(layer, keras.layers.MultiHeadAttention):
            total += 2.0 * attention_macs(layer)
        elif isinstance(layer, keras.layers.EinsumDense):
            total += 2.0 * einsum_dense_macs(layer)
        elif isinstance(layer, keras.layers.Dense):
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
                    peak_note: str | None = None, datasheet: tuple[float | None, str] | None = None) -> dict:
    """FLOPs per sample, achieved FLOP/s at `samples_per_s`, the peak and MFU; peak_note says
    where the peak came from (or why it is missing). `datasheet`: (the board's datasheet dense
    peak or None, its source or why none; bench.measure.datasheet) for mfu_datasheet, the MFU that
    published figures mean (mfu divides by the measured matmul peak, which is lower)."""
    flops = 3.0 * forward_flops_per_sample(model)
    achieved = flops * samples_per_s if samples_per_s else None
    sheet, sheet_note = datasheet or (None, "no datasheet peak given")
    out = {"flops_per_sample": flops, "achieved_flops_per_s": achieved,
           "peak_flops_per_s": peak_flops_per_s, "peak_flops_source": peak_note,
           "mfu": achieved / peak_flops_per_s if achieved and peak_flops_per_s else None,
           "peak_flops_per_s_datasheet": sheet, "peak_flops_datasheet_source": sheet_note,
           "mfu_datasheet": achieved / sheet if achieved and sheet else None,
           "null_reasons": {}}
    if peak_flops_per_s is None:
        out["null_reasons"]["peak_flops_per_s"] = peak_note or "not measured"
        out["null_reasons"]["mfu"] = out["null_reasons"]["peak_flops_per_s"]
    if sheet is None:
        out["null_reasons"]["peak_flops_per_s_datasheet"] = out["null_reasons"]["mfu_datasheet"] = sheet_note
    elif achieved is None:
        out["null_reasons"]["mfu_datasheet"] = "no achieved FLOP/s (no steady-state steps)"
    if achieved is None and peak_flops_per_s is not None:
        out["null_reasons"]["mfu"] = "no achieved FLOP/s (no steady-state steps)"
    return out


def node_peak_flops_per_s(backend: str, dtype: str, gpu: bool, device_key: str,
                          float32_matmul: str | None = None) -> tuple[float | None, str]:
    """This device's measured matmul peak at `dtype` (FLOP/s) and a note saying where it came from.
    float32_matmul: the policy in force (set_float32_matmul), part of the cache key of float32 peaks.

    Measured once per run and node for each (backend, dtype, device): the executors point
    $REGBENCH_CALIBRATION_DIR at a per-run folder on each node, the first trial that needs a
    figure measures it under a file lock (after its own timed window) and later trials read it.
    Without the variable every trial measures its own. Returns (None, reason) when it fails.
    """
    from bench import backends

    folder = os.environ.get(CALIBRATION_DIR_ENV)

    def measure() -> float:
        return backends.matmul_peak_flops_per_s(backend, dtype, gpu)

    try:
        if not folder:
            return measure(), "measured in this trial"
        os.makedirs(folder, exist_ok=True)
        key = f"{backend}-{dtype}{'-' + float32_matmul if float32_matmul else ''}-{device_key}"
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in key)[:150]
        path = os.path.join(folder, f"{safe}.json")
        with open(path + ".lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if os.path.exists(path):
                with open(path) as f:
                    cached = json.load(f)
                return cached["peak_flops_per_s"], f"measured once per run on this node (pid {cached['pid']})"
            peak = measure()
            with open(path + ".tmp", "w") as f:
                json.dump({"peak_flops_per_s": peak, "pid": os.getpid(), "unix": time.time()}, f)
            os.replace(path + ".tmp", path)
            return peak, "measured once per run on this node (this trial)"
    except Exception as e:  # noqa: BLE001 - a failed calibration is a null with a reason
        return None, f"calibration failed: {type(e).__name__}: {e}"[:300]
