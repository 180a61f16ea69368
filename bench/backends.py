"""What differs between Keras backends: process set-up, devices, synchronization, allocator peaks.

`configure_process` must run before Keras (or any framework) is imported in the trial process.
Everything else imports the framework lazily.
"""
from __future__ import annotations

import os

BACKENDS = ("tensorflow", "jax", "torch")


def configure_process(backend: str, cpu_threads: int | None, gpu: bool | None = None) -> None:
    """Environment for a fresh trial process: backend, allocator behaviour, thread counts.

    cpu_threads: the CPU threads this trial may use (None: leave the framework default).
    gpu=False hides GPUs (CUDA_VISIBLE_DEVICES="") so a CPU trial never touches one.
    """
    os.environ["KERAS_BACKEND"] = backend
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ["TF_FORCE_GPU_ALLOW_GROWTH"] = "true"  # TF allocator peak means something
    os.environ["XLA_PYTHON_CLIENT_PREALLOCATE"] = "false"  # JAX peak_bytes_in_use means something
    if gpu is False:
        os.environ["CUDA_VISIBLE_DEVICES"] = ""
    if cpu_threads:
        n = str(cpu_threads)
        for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                    "TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS"):
            os.environ[var] = n
        if backend == "jax":
            flags = os.environ.get("XLA_FLAGS", "")
            os.environ["XLA_FLAGS"] = (flags + " --xla_cpu_multi_thread_eigen=false "
                                       f"intra_op_parallelism_threads={n}").strip()
        if backend == "tensorflow":
            import tensorflow as tf

            tf.config.threading.set_intra_op_parallelism_threads(cpu_threads)
            tf.config.threading.set_inter_op_parallelism_threads(cpu_threads)
        if backend == "torch":
            import torch

            torch.set_num_threads(cpu_threads)
            torch.set_num_interop_threads(max(1, cpu_threads))


def gpu_visible(backend: str) -> bool:
    if backend == "tensorflow":
        import tensorflow as tf

        return bool(tf.config.list_physical_devices("GPU"))
    if backend == "torch":
        import torch

        return torch.cuda.is_available()
    import jax

    return jax.default_backend() == "gpu"


def reset_device_peak(backend: str) -> None:
    if backend == "tensorflow":
        import tensorflow as tf

        tf.config.experimental.reset_memory_stats("GPU:0")
    elif backend == "torch":
        import torch

        torch.cuda.reset_peak_memory_stats()
    # JAX cannot reset its peak counter: the trial process is fresh, so the peak is the trial's.


def device_peak_bytes(backend: str) -> int:
    """Framework allocator peak on the first visible GPU, in bytes."""
    if backend == "tensorflow":
        import tensorflow as tf

        return int(tf.config.experimental.get_memory_info("GPU:0")["peak"])
    if backend == "torch":
        import torch

        return int(torch.cuda.max_memory_allocated())
    import jax

    return int(jax.local_devices()[0].memory_stats()["peak_bytes_in_use"])


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


def matmul_peak_flops_per_s(backend: str, dtype: str, gpu: bool, min_time_s: float = 0.25) -> float:
    """Measured matmul throughput of this device at `dtype` (FLOP/s), the peak that MFU divides by."""
    import time

    import numpy as np

    n = 4096 if gpu else 1024
    flops = 2.0 * n ** 3
    a_host = np.random.default_rng(0).standard_normal((n, n)).astype("float32")

    if backend == "tensorflow":
        import tensorflow as tf

        a = tf.cast(tf.constant(a_host), dtype)
        f = tf.function(lambda x: tf.matmul(x, x))
        run = lambda: f(a).numpy().flat[0]  # noqa: E731  (.numpy() waits for the result)
    elif backend == "jax":
        import jax
        import jax.numpy as jnp

        a = jnp.asarray(a_host, dtype=dtype)
        f = jax.jit(lambda x: x @ x)
        run = lambda: f(a).block_until_ready()  # noqa: E731
    else:
        import torch

        dev = "cuda" if gpu else "cpu"
        a = torch.from_numpy(a_host).to(dev).to(getattr(torch, dtype))

        def run():
            out = a @ a
            if gpu:
                torch.cuda.synchronize()
            return out

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
