"""Step times are taken after the step's work has finished, on every backend.

JAX (CPU and GPU) and torch (GPU) dispatch asynchronously: a timestamp taken when the Python
call returns measures dispatch, not work. The probe below trains a model whose step costs tens of
milliseconds, with StepTimer, and compares the sum of its per-step intervals against an
externally synchronized window: from StepTimer's first batch end to the moment fit() has returned
and the host has waited on the model's weights (block_until_ready / cuda.synchronize). If step
times were taken before the work finished, the queued work would land after the last timestamp
and the window would be far longer than the sum of the steps.

A negative control proves the check can fail where dispatch is asynchronous: a timer marked
`async_safe` (so Keras neither waits nor pythonifies logs before calling it) measures dispatch,
and the same comparison rejects it on JAX. The control needs the device side of a step to
dominate the host's (tens of milliseconds of device work against ~1-2 ms of Keras host work),
on any GPU: the GPU model does ~1.75 TFLOP a step in IEEE float32 (TF32 off, so a Hopper's ~67
float32 TFLOP/s is the fastest it can go), >= 26 ms on an H200.

The free-running figure (FreeRunTimer: no per-step wait, one sync per window) must cover the work
too: its window ends after the device has finished, and it is no slower than the synced steps.

Each probe runs in a fresh process (the Keras backend is fixed per process). Run one by hand:
`python tests/test_sync.py jax`. On a GPU machine the probe uses the GPU.
"""
from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

def _need(module: str) -> None:
    """Skip unless `module` is installed (without importing it into the test process)."""
    import importlib.util

    if importlib.util.find_spec(module) is None:
        pytest.skip(f"{module} is not installed (pip install -e '.[{module}]')")


ROOT = Path(__file__).resolve().parents[1]
STEPS = 24
# (input width, hidden width, hidden layers, batch). CPU: ~30-90 ms a step at batch 256. GPU: the
# device side must dominate even on the fastest GPU (see the module docstring).
CPU_SIZE, GPU_SIZE = (1536, 1536, 2, 256), (1024, 8192, 3, 2048)
FASTEST_FLOAT32_FLOP_S = 67e12  # H100/H200 SXM, IEEE float32 (no TF32): the probe runs with float32_matmul ieee
HOST_STEP_S = 0.002  # a generous Keras host cost per jitted step
DOMINATES = 10  # device time of a step >= this many host costs


def step_flops(size) -> float:
    """Training FLOPs of one probe step: the hidden Dense layers and the 10-way head, 3 x forward."""
    width_in, width, layers, batch = size
    return 3 * 2 * batch * (width_in * width + (layers - 1) * width * width + width * 10)


def probe(backend: str) -> dict:
    """Runs in a child process with KERAS_BACKEND unset; returns measured sums (seconds)."""
    from bench import backends

    gpu_env = os.environ.get("REGBENCH_SYNC_GPU", "auto")
    backends.configure_process(backend, cpu_threads=None if gpu_env != "0" else 2,
                               gpu=False if gpu_env == "0" else None)
    import keras
    import numpy as np

    from bench.measure.timing import StepTimer

    from bench.measure.timing import FreeRunTimer

    gpu = backends.gpu_visible(backend)
    backends.set_float32_matmul(backend, "ieee")  # TF32 would make the GPU step ~8x shorter
    width_in, width, layers, batch = GPU_SIZE if gpu else CPU_SIZE
    keras.utils.set_random_seed(0)
    inputs = keras.Input((width_in,))
    x = inputs
    for _ in range(layers):
        x = keras.layers.Dense(width, activation="relu")(x)
    model = keras.Model(inputs, keras.layers.Dense(10, activation="softmax")(x))
    model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
    rng = np.random.default_rng(0)
    xs = rng.standard_normal(((STEPS + 1) * batch, width_in)).astype("float32")
    ys = rng.integers(0, 10, len(xs)).astype("int32")

    class AsyncTimer(keras.callbacks.Callback):
        """The bug the real timer avoids: timestamps where the host has not waited for the step.

        async_safe lets Keras run batch-end hooks on a thread pool, so nothing in the main loop
        waits for the device; the timestamps come from batch begins, on the main thread."""

        async_safe = True

        def __init__(self):
            super().__init__()
            self.ends = []

        def on_train_batch_begin(self, batch, logs=None):
            self.ends.append(time.perf_counter())

    def window_after(first_end: float) -> float:
        backends.synchronize(backend, *[v.value for v in model.weights])
        if backend == "jax":  # the trainer's state lives outside the variables until synced
            backends.synchronize(backend, *[v.value for v in model.weights])
        return time.perf_counter() - first_end

    model.fit(xs[:batch * 2], ys[:batch * 2], batch_size=batch, epochs=1, verbose=0)  # compile
    out = {"backend": backend, "gpu": gpu, "jit": bool(model.jit_compile), "steps": STEPS}
    # Keras dispatches batch-end hooks on a thread pool when every callback is async-safe (JAX).
    out["timer_async"] = keras.callbacks.CallbackList([StepTimer()], model=model)._async_train

    timer = StepTimer(warmup_steps=0)
    model.fit(xs, ys, batch_size=batch, epochs=1, steps_per_epoch=STEPS, shuffle=False, verbose=0,
              callbacks=[timer])
    first_end = timer.train_begin + timer.first_step_s  # first batch end (intervals start there)
    out["timer_sum_s"] = float(timer.steady_step_times_s().sum())
    out["timer_window_s"] = window_after(first_end)
    out["timer_steps"] = len(timer.steady_step_times_s())
    out["timer_p50_s"] = float(np.median(timer.steady_step_times_s()))

    naive = AsyncTimer()
    model.fit(xs, ys, batch_size=batch, epochs=1, steps_per_epoch=STEPS, shuffle=False, verbose=0,
              callbacks=[naive])
    ends = naive.ends  # begin of step k+1 = end of step k as the main thread sees it
    out["naive_sum_s"] = ends[-1] - ends[1]
    out["naive_window_s"] = window_after(ends[1])

    free = FreeRunTimer(backend)
    out["free_async"] = keras.callbacks.CallbackList([free], model=model)._async_train
    model.fit(xs, ys, batch_size=batch, epochs=1, steps_per_epoch=STEPS, shuffle=False, verbose=0, callbacks=[free])
    result = free.result(batch)
    out["free_steps"], out["free_step_s"] = result["free_running_steps"], result["free_running_step_s"]
    out["free_window_s"] = free.end - free.start
    out["free_external_s"] = window_after(free.start)  # the host waited for everything after fit() returned
    out["timer_mean_s"] = float(np.mean(timer.steady_step_times_s()))
    return out


@functools.lru_cache(maxsize=None)
def run_probe(backend: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "KERAS_BACKEND"}
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), backend], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = proc.stdout.strip().splitlines()[-1]
    if os.environ.get("REGBENCH_SYNC_LOG"):  # bench/gpu_check.sh keeps the figures
        with open(os.environ["REGBENCH_SYNC_LOG"], "a") as f:
            f.write(line + "\n")
    return json.loads(line)


@pytest.mark.parametrize("backend", ["jax", "torch"])
def test_step_times_cover_the_work(backend):
    _need(backend)
    r = run_probe(backend)
    assert r["timer_async"] is False  # the host runs StepTimer's batch end itself, after the step
    assert r["timer_steps"] == STEPS - 1
    # The steps account for (nearly) all of the synchronized window: nothing was left queued.
    # What remains is fit()'s teardown and one weight sync: small next to 23 steps of real work.
    assert r["timer_sum_s"] >= 0.85 * r["timer_window_s"], r
    assert r["timer_p50_s"] > (0.0005 if r["gpu"] else 0.002), r  # a real step, not a dispatch


@pytest.mark.parametrize("backend", ["jax", "torch"])
def test_free_running_window_covers_the_work(backend):
    _need(backend)
    r = run_probe(backend)
    assert r["free_async"] is True  # Keras runs the batch ends off the main thread: no per-step wait
    assert r["free_steps"] == STEPS - 2
    # One sync at the window's end: the window holds all the work (only fit()'s return and a sync follow).
    assert r["free_window_s"] >= 0.85 * r["free_external_s"], r
    # A real step, not a dispatch (on JAX dispatch alone is under half a step: the negative control).
    assert r["free_step_s"] >= 0.5 * r["timer_p50_s"], r


def test_the_gpu_probe_is_device_bound_on_any_gpu():
    """The negative control can only fail the naive timer where the device side of a step dominates."""
    assert step_flops(GPU_SIZE) / FASTEST_FLOAT32_FLOP_S >= DOMINATES * HOST_STEP_S
    width_in, width, layers, batch = GPU_SIZE
    host_bytes = (STEPS + 1) * batch * width_in * 4
    assert host_bytes < 512 * 2**20  # the probe's training data stays modest on the host


def test_negative_control_async_timer_is_caught_on_jax():
    """Without a wait, JAX timestamps measure dispatch; the comparison above must reject that."""
    _need("jax")
    r = run_probe("jax")
    assert r["naive_sum_s"] < 0.5 * r["naive_window_s"], (
        "JAX dispatch was synchronous here, so the sync test could not fail; check jax's async dispatch", r)



if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    print(json.dumps(probe(sys.argv[1])))
