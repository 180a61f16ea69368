"""What differs between Keras backends: process set-up, devices, synchronization, allocator peaks.

`configure_process` must run before Keras (or any framework) is imported in the trial process.
Everything else imports the framework lazily, so `bench` imports without TensorFlow, JAX or torch
installed (a GPU machine may carry only JAX and torch).

Per backend:

| backend    | dispatch     | wait for the device            | allocator peak (bytes)                          |
|------------|--------------|--------------------------------|-------------------------------------------------|
| tensorflow | sync per step| `.numpy()` of a result         | `get_memory_info('GPU:0')['peak']` after reset; memory growth on |
| jax        | asynchronous | `block_until_ready()`          | `memory_stats()['peak_bytes_in_use']`; preallocation off; no reset (fresh process) |
| torch      | async on GPU | `torch.cuda.synchronize()`     | `max_memory_allocated` / `max_memory_reserved` after `reset_peak_memory_stats` |
"""
from __future__ import annotations

import os
import time

BACKENDS = ("tensorflow", "jax", "torch")


THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "TF_NUM_INTRAOP_THREADS",
               "TF_NUM_INTEROP_THREADS")


RECORDED_ENV = THREAD_VARS + ("CUDA_DEVICE_ORDER", "CUDA_VISIBLE_DEVICES", "XLA_FLAGS", "JAX_PLATFORMS",
                               "KERAS_BACKEND")


def recorded_environment() -> dict:
    """The trial process's thread and device environment as it ran (process.environment of the
    record; None: unset), and how many CPUs it may run on (sched_getaffinity)."""
    out = {var: os.environ.get(var) for var in RECORDED_ENV}
    out["cpu_affinity"] = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    return out


def process_environment(backend: str, cpu_threads: int | None, gpu: bool | None = None) -> dict:
    """Environment variables of a trial process, set before the framework initialises a device.

    Returns {name: value}; a value of None means "remove it" (e.g. Ray's OMP_NUM_THREADS=1 on a
    GPU trial without a thread cap). cpu_threads: threads the trial may use (None: framework
    default, every core it may run on). gpu=False hides GPUs (CUDA_VISIBLE_DEVICES="", and
    JAX_PLATFORMS=cpu so JAX starts no CUDA plugin). CUDA numbers GPUs fastest-first unless told
    otherwise, NVML by PCI bus: CUDA_DEVICE_ORDER=PCI_BUS_ID makes the two agree.
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r} (known: {', '.join(BACKENDS)})")
    out: dict = {
        "KERAS_BACKEND": backend,
        "TF_CPP_MIN_LOG_LEVEL": os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2"),
        "TF_FORCE_GPU_ALLOW_GROWTH": "true",  # TF allocator peak means something
        "XLA_PYTHON_CLIENT_PREALLOCATE": "false",  # JAX peak_bytes_in_use means something
        "PYTORCH_NVML_BASED_CUDA_CHECK": "1",  # torch.cuda.is_available() without initialising CUDA
        "CUDA_DEVICE_ORDER": "PCI_BUS_ID",
    }
    if gpu is False:
        out["CUDA_VISIBLE_DEVICES"] = ""
        if backend == "jax":
            out["JAX_PLATFORMS"] = "cpu"
    for var in THREAD_VARS:
        out[var] = str(cpu_threads) if cpu_threads else None
    return out


def configure_process(backend: str, cpu_threads: int | None, gpu: bool | None = None) -> None:
    """Set up this (fresh) trial process: environment, then in-process thread counts.

    Call before the framework runs its first op. The executors start the trial process with the
    same environment (`process_environment`), so this is idempotent there; called on its own it
    makes a plain Python process a trial process (selfcheck, tests).
    """
    for var, value in process_environment(backend, cpu_threads, gpu).items():
        if value is None:
            os.environ.pop(var, None)
        else:
            os.environ[var] = value
    if not cpu_threads:
        return
    try:  # NumPy's BLAS and OpenMP pools may be loaded already (a zygote child)
        from threadpoolctl import threadpool_limits

        threadpool_limits(cpu_threads)
    except ImportError:
        pass
    if backend == "tensorflow":
        import tensorflow as tf

        tf.config.threading.set_intra_op_parallelism_threads(cpu_threads)
        tf.config.threading.set_inter_op_parallelism_threads(cpu_threads)
    elif backend == "torch":
        import torch

        torch.set_num_threads(cpu_threads)
        try:
            torch.set_num_interop_threads(cpu_threads)
        except RuntimeError:  # already set (torch allows it once, before any parallel work)
            pass
    # JAX/XLA on CPU sizes its thread pool from the CPUs this process may run on
    # (sched_getaffinity): the executors pin a CPU trial to `cpu_threads` cores before JAX starts.


FLOAT32_MATMUL = ("ieee", "tf32")  # the float32 matmul/conv policy of a suite; bench/README.md "GPUs"


def set_float32_matmul(backend: str, policy: str) -> dict:
    """Apply one float32 matmul/convolution policy on any backend; returns the framework's own
    settings read back after applying it (recorded per trial; reading them back also proves torch's
    flags agree).

    "ieee": float32 products in float32 (no TensorFloat-32), the same on all three backends.
    "tf32": TensorFloat-32 for float32 matmuls and convolutions on Ampere and newer GPUs.
    Left alone, TensorFlow and JAX use TF32 for float32 matmuls on such GPUs and torch does for
    convolutions only, so float32 would not be the same float32 across backends.
    """
    if policy not in FLOAT32_MATMUL:
        raise ValueError(f"unknown float32 matmul policy {policy!r} (known: {', '.join(FLOAT32_MATMUL)})")
    tf32 = policy == "tf32"
    if backend == "tensorflow":
        import tensorflow as tf

        tf.config.experimental.enable_tensor_float_32_execution(tf32)
        return {"tensor_float_32_execution": bool(tf.config.experimental.tensor_float_32_execution_enabled())}
    if backend == "jax":
        import jax

        jax.config.update("jax_default_matmul_precision", "tensorfloat32" if tf32 else "float32")
        return {"jax_default_matmul_precision": jax.config.jax_default_matmul_precision}
    import torch

    # The two calls that keep torch's old and new (>= 2.9, fp32_precision) TF32 flags in step: setting
    # only the new per-operator flags leaves the old ones disagreeing, and torch then raises "mix of the
    # legacy and new APIs" wherever they are read.
    torch.set_float32_matmul_precision("high" if tf32 else "highest")  # cuBLAS matmuls
    torch.backends.cudnn.allow_tf32 = tf32  # cuDNN convolutions and RNNs
    return {"float32_matmul_precision": torch.get_float32_matmul_precision(),
            "cuda.matmul.allow_tf32": bool(torch.backends.cuda.matmul.allow_tf32),
            "cudnn.allow_tf32": bool(torch.backends.cudnn.allow_tf32)}


def gpu_visible(backend: str) -> bool:
    if backend == "tensorflow":
        import tensorflow as tf

        return bool(tf.config.list_physical_devices("GPU"))
    if backend == "torch":
        import torch

        return torch.cuda.is_available()
    import jax

    try:
        return jax.default_backend() == "gpu"
    except RuntimeError:  # JAX_PLATFORMS names a platform that failed to start
        return False


def model_device(backend: str, model) -> str:
    """Where the framework actually placed the model (its first variable), as the framework names
    it: TensorFlow '/job:localhost/replica:0/task:0/device:GPU:0', JAX 'gpu:0 (NVIDIA H100 80GB
    HBM3)', torch 'cuda:0'. A GPU trial whose framework fell back to the CPU (a broken CUDA
    plugin: JAX warns and runs on the CPU, Keras on torch picks 'cpu') shows here."""
    value = model.weights[0].value
    if backend == "jax":
        device = sorted(value.devices(), key=lambda d: d.id)[0]
        return f"{device.platform}:{device.id} ({device.device_kind})"
    return str(value.device)


def framework_config(backend: str) -> dict:
    """The device configuration as the framework itself reports it in this process (recorded per
    trial as process.framework_config): JAX's `jax_platforms` (frozen at import) and the platform of
    `jax.devices()`; the device Keras's torch backend picked when it loaded, and
    `torch.cuda.is_available()`; the GPUs TensorFlow lists. Errors are recorded, not raised."""
    try:
        if backend == "jax":
            import jax

            out = {"jax_platforms": jax.config.jax_platforms}
            try:
                out["devices_platform"] = jax.devices()[0].platform
            except RuntimeError as e:  # JAX_PLATFORMS names a platform that failed to start
                out["devices_platform"] = None
                out["error"] = str(e)[:200]
            return out
        if backend == "torch":
            import torch
            from keras.src.backend.torch import core

            return {"keras_default_device": str(core.DEFAULT_DEVICE), "cuda_available": bool(torch.cuda.is_available())}
        import tensorflow as tf

        return {"gpus": [d.name for d in tf.config.list_physical_devices("GPU")]}
    except Exception as e:  # noqa: BLE001 - a record field, never a crash
        return {"error": f"{type(e).__name__}: {e}"[:200]}


def is_gpu_device(backend: str, device: str) -> bool:
    """Is `device` (as model_device names it) a GPU?"""
    if backend == "tensorflow":
        return ":GPU:" in device.upper()
    if backend == "jax":
        return device.split(":")[0].lower() in ("gpu", "cuda", "rocm")
    return device.startswith("cuda")


class WrongDevice(RuntimeError):
    """The framework placed the model elsewhere than the trial asked (a GPU trial on the CPU)."""


def check_device(backend: str, device: str, gpu: bool) -> None:
    """Raises WrongDevice when `device` (model_device) is not the kind the trial asked for: a GPU
    trial must not record CPU step times beside an idle GPU's NVML readings."""
    if is_gpu_device(backend, device) != gpu:
        want, got = ("GPU", "the CPU") if gpu else ("CPU", "a GPU")
        seen = ", ".join(f"{k}={v!r}" for k, v in framework_config(backend).items())
        raise WrongDevice(f"a {want} trial ran on {got}: {backend} placed the model on {device} "
                          f"(the framework reports {seen}; "
                          f"CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES')!r}; "
                          + ("is the framework's CUDA build or plugin installed and the driver loaded?)" if gpu
                             else "the trial process should see no GPU)"))


def synchronize(backend: str, *values) -> None:
    """Block the host until the device has finished the work behind `values` (and, on torch GPU,
    everything queued before). TF runs each Keras step synchronously; JAX and torch-on-GPU do not."""
    if backend == "jax":
        import jax

        jax.block_until_ready(values)
    elif backend == "torch":
        import torch

        if torch.cuda.is_available():
            torch.cuda.synchronize()
    else:
        import numpy as np

        for v in values:
            np.asarray(v)  # .numpy() waits for the tensor


def reset_device_peak(backend: str) -> None:
    if backend == "tensorflow":
        import tensorflow as tf

        tf.config.experimental.reset_memory_stats("GPU:0")
    elif backend == "torch":
        import torch

        torch.cuda.reset_peak_memory_stats()
    # JAX cannot reset its peak counter: the trial process is fresh, so the peak is the trial's.


def device_memory(backend: str) -> dict:
    """Framework allocator figures on the first visible GPU, in bytes.

    device_peak_bytes: peak bytes in live tensors/buffers (torch max_memory_allocated, JAX
    peak_bytes_in_use, TF get_memory_info peak). device_reserved_peak_bytes: peak held by the
    caching allocator (torch max_memory_reserved; JAX/TF do not report it: None).
    """
    if backend == "tensorflow":
        import tensorflow as tf

        return {"device_peak_bytes": int(tf.config.experimental.get_memory_info("GPU:0")["peak"]),
                "device_reserved_peak_bytes": None}
    if backend == "torch":
        import torch

        return {"device_peak_bytes": int(torch.cuda.max_memory_allocated()),
                "device_reserved_peak_bytes": int(torch.cuda.max_memory_reserved())}
    import jax

    stats = jax.local_devices()[0].memory_stats() or {}
    if "peak_bytes_in_use" not in stats:
        raise RuntimeError(f"JAX device {jax.local_devices()[0]} reports no peak_bytes_in_use")
    return {"device_peak_bytes": int(stats["peak_bytes_in_use"]), "device_reserved_peak_bytes": None}


def jit_setting(requested: str, backend: str, device_kind: str) -> bool:
    """The jit_compile value Keras resolves before looking at the model's layers."""
    if requested == "on":
        return True
    if requested == "off":
        return False
    if backend == "torch":
        return False
    if backend == "tensorflow":
        return device_kind == "gpu"  # Keras disables XLA on CPU-only TF
    return True


def compile_arg(requested: str):
    return {"on": True, "off": False}.get(requested, "auto")


def jit_record(model, requested: str) -> dict:
    """The effective jit setting of a compiled model and why: Keras turns jit off silently when a
    layer has supports_jit=False (RandomTranslation, RandomZoom, RandomCrop...), on every backend;
    on JAX that means the train step runs op by op."""
    blockers = sorted({type(layer).__name__ for layer in model._flatten_layers()
                       if not getattr(layer, "supports_jit", True)})
    return {"jit_compile": bool(model.jit_compile), "jit_compile_requested": requested,
            "jit_disabled_by": blockers}


def host_sync_record(backend: str, model) -> dict:
    """Whether the training step itself makes the host wait for the device every step (a known
    cause, apart from StepTimer's own per-step sync), and why.

    torch + loss scaling (mixed_float16): Keras's LossScaleOptimizer applies gradients through
    ops.cond on "all gradients finite" (and on its growth counter), and on torch ops.cond is a
    Python `if` on a device tensor (keras/src/backend/torch/core.py `cond`): the host waits for
    the step's gradients, so the free-running figure cannot overlap host and device. On JAX
    (lax.cond) and TensorFlow (tf.cond) the branch stays in the compiled step."""
    import keras

    if backend == "torch" and isinstance(getattr(model, "optimizer", None), keras.optimizers.LossScaleOptimizer):
        return {"host_sync_per_step": True,
                "host_sync_reason": ("LossScaleOptimizer's ops.cond is a Python `if` on a device tensor on torch: "
                                     "the host waits for each step's gradient finiteness check")}
    return {"host_sync_per_step": False, "host_sync_reason": None}


def matmul_peak_flops_per_s(backend: str, dtype: str, gpu: bool, min_time_s: float = 0.25) -> float:
    """Measured matmul throughput of this device at `dtype` (FLOP/s), the peak that MFU divides by.

    n x n x n products (n = 8192 on a GPU, 1024 on a CPU); on a GPU several are queued per
    synchronization so launch and sync latency do not count. The best of several timed batches.
    """
    import numpy as np

    n, per_sync = (8192, 8) if gpu else (1024, 1)
    flops = 2.0 * n ** 3 * per_sync
    a_host = np.random.default_rng(0).standard_normal((n, n)).astype("float32") / np.sqrt(n)

    if backend == "tensorflow":
        import tensorflow as tf

        a = tf.cast(tf.constant(a_host), dtype)
        f = tf.function(lambda x: tf.matmul(x, x))

        def run():
            outs = [f(a) for _ in range(per_sync)]
            return outs[-1][0, 0].numpy()  # a scalar read waits for the products, copies 2 bytes
    elif backend == "jax":
        import jax
        import jax.numpy as jnp

        a = jnp.asarray(a_host, dtype=dtype)
        f = jax.jit(lambda x: x @ x)

        def run():
            outs = [f(a) for _ in range(per_sync)]
            return jax.block_until_ready(outs)
    else:
        import torch

        dev = "cuda" if gpu else "cpu"
        a = torch.from_numpy(a_host).to(dev).to(getattr(torch, dtype))

        def run():
            outs = [a @ a for _ in range(per_sync)]
            if gpu:
                torch.cuda.synchronize()
            return outs

    run()  # compile / warm up
    best, spent, reps = float("inf"), 0.0, 0
    while spent < min_time_s or reps < 3:
        t = time.perf_counter()
        run()
        dt = time.perf_counter() - t
        best, spent, reps = min(best, dt), spent + dt, reps + 1
        if reps >= 50:
            break
    return flops / best
