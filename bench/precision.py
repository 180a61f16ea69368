"""Precision policies, loss scaling and what a device can run.

float32: everything in float32. mixed_float16 / mixed_bfloat16: Keras mixed policies (compute in
16 bits, variables in float32). Under mixed_float16 Keras wraps the optimizer in a
LossScaleOptimizer at compile(); a step whose gradients overflow is skipped and counted.
"""
from __future__ import annotations

POLICIES = ("float32", "mixed_float16", "mixed_bfloat16")

COMPUTE_DTYPE = {"float32": "float32", "mixed_float16": "float16", "mixed_bfloat16": "bfloat16"}

# How much slower a mixed_float16 step is than a float32 step on a CPU without XLA (emulated
# float16), to its order of magnitude: the one figure the skip reason and the docs quote. Digits MLP,
# TensorFlow, one thread, step-time p50 of fresh-process trials: 95 vs 1.6 ms (~60x) on an idle
# 2-core VM; 569-642 vs 2.0-5.1 ms (112x, 315x) on the same VM under load.
FLOAT16_CPU_SLOWDOWN_X = 100


def skip_reason(precision: str, device_kind: str, backend: str, jit_compile: bool,
                gpu_compute_capability: tuple[int, int] | None = None,
                allow_slow: bool = False) -> str | None:
    """Why this device should not run this precision, or None.

    float16 on a CPU runs through slow emulation unless XLA fuses it (FLOAT16_CPU_SLOWDOWN_X
    slower than float32); such cells are marked skipped rather than spending an hour.
    bfloat16 needs compute capability 8.0 (Ampere) on NVIDIA GPUs.
    """
    if precision not in POLICIES:
        return f"unknown precision {precision!r}"
    if device_kind == "cpu" and precision == "mixed_float16" and not allow_slow:
        if backend == "torch" or not jit_compile:
            return (f"mixed_float16 on CPU without XLA ({backend}, jit_compile={jit_compile}) is "
                    f"emulated and ~{FLOAT16_CPU_SLOWDOWN_X}x slower than float32; set allow_slow_precision: true "
                    "to run it")
    if (device_kind == "gpu" and precision == "mixed_bfloat16" and gpu_compute_capability
            and gpu_compute_capability < (8, 0)):
        return (f"mixed_bfloat16 needs compute capability >= 8.0; this GPU has "
                f"{gpu_compute_capability[0]}.{gpu_compute_capability[1]}")
    return None


def set_policy(precision: str) -> None:
    """Set the global Keras dtype policy (one fresh process per trial, so it never leaks)."""
    import keras

    keras.config.set_dtype_policy(precision)
