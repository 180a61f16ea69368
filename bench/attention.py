"""The attention path a built model trains with: which branch of Keras's MultiHeadAttention runs,
and the backend's kernel behind it (`timing.attention_path`, `timing.attention_kernel`).

Keras 3 (keras/src/layers/attention/multi_head_attention.py, `_compute_attention`) calls the fused
`ops.dot_product_attention` only when the layer's dropout is 0, no attention scores are returned
and the projected query is 4-D (one attention axis). Otherwise it runs the explicit path: einsum
Q.K^T, softmax, dropout on the probabilities, einsum with V, which materialises the
batch x heads x S x S scores in memory. So attention dropout also changes the kernel:

- "fused" on JAX: `jax.nn.dot_product_attention(implementation="cudnn")` (cuDNN flash attention)
  where Keras's own check `_can_use_flash_attention` passes (a GPU of compute capability >= 8.0,
  float16/bfloat16, a supported head size), else `implementation="xla"`.
- "fused" on torch: `scaled_dot_product_attention`, forced to the flash kernel where torch's
  `can_use_flash_attention` passes ("sdpa_flash"), else torch's own choice ("sdpa").
- "fused" on TensorFlow: Keras's TensorFlow dot_product_attention is the same einsum and softmax
  ("einsum"); TensorFlow has no fused attention kernel in Keras.
- "explicit", every backend: "einsum".

The kernel is what Keras's checks say for the layer's shapes and compute dtype; the cuDNN call
itself may still fall back to XLA at trace time (Keras logs it), which is not seen here.
Keras's `return_attention_scores=True` also forces the explicit path; no workload uses it.
"""
from __future__ import annotations

EXPLICIT_KERNEL = "einsum"


def layer_path(layer) -> str:
    """"fused" or "explicit": the branch Keras's _compute_attention takes for this layer."""
    projected_rank = len(_query(layer).shape) + 1  # the query projection adds the heads axis: (B, T, N, H)
    return "explicit" if layer._dropout > 0.0 or projected_rank != 4 else "fused"


def _query(layer):
    """The query input of the layer's first call."""
    return layer.input[0] if isinstance(layer.input, (list, tuple)) else layer.input


def _fused_kernel(layer, backend: str) -> str:
    """The backend kernel behind ops.dot_product_attention for this layer (module docstring)."""
    if backend == "tensorflow":
        return EXPLICIT_KERNEL
    query = _query(layer)
    seq_len, heads, head_dim = query.shape[1], layer.num_heads, layer.key_dim
    dtype = layer.compute_dtype
    flash = layer._flash_attention
    if backend == "jax":
        if flash is False:
            return "xla"
        import jax
        import jax.numpy as jnp
        from keras.src.backend.jax.nn import _can_use_flash_attention

        if jax.devices()[0].platform == "tpu":
            return "splash"
        q = jnp.zeros((1, seq_len, heads, head_dim), dtype=dtype)  # Keras's (B, T, N, H) layout
        return "cudnn" if _can_use_flash_attention(q, q, q, None) else "xla"
    if backend == "torch":
        if flash is False:
            return "sdpa"
        import torch
        from keras.src.backend.torch.core import get_device
        from keras.src.backend.torch.nn import _can_use_flash_attention

        q = torch.zeros((1, heads, seq_len, head_dim), dtype=getattr(torch, dtype), device=get_device())
        return "sdpa_flash" if _can_use_flash_attention(q, q, q, None, False) else "sdpa"
    raise ValueError(f"unknown backend {backend!r}")


def attention_record(model, backend: str) -> dict:
    """attention_path ("fused" | "explicit" | "mixed" when layers differ | None without attention),
    attention_kernel (see the module docstring; None when unknown) and null_reasons."""
    import keras

    layers = [layer for layer in model._flatten_layers(include_self=False, recursive=True)
              if isinstance(layer, keras.layers.MultiHeadAttention)]
    if not layers:
        why = "the model has no MultiHeadAttention layer"
        return {"attention_path": None, "attention_kernel": None,
                "null_reasons": {"attention_path": why, "attention_kernel": why}}
    paths, kernels, reasons = set(), set(), {}
    for layer in layers:
        path = layer_path(layer)
        paths.add(path)
        if path == "explicit":
            kernels.add(EXPLICIT_KERNEL)
            continue
        try:
            kernels.add(_fused_kernel(layer, backend))
        except Exception as e:  # noqa: BLE001 - Keras's private checks may move: a null with the reason
            reasons["attention_kernel"] = f"Keras's flash-attention check failed: {type(e).__name__}: {e}"[:300]
    kernel = None if reasons else "+".join(sorted(kernels))
    return {"attention_path": paths.pop() if len(paths) == 1 else "mixed", "attention_kernel": kernel,
            "null_reasons": reasons}
