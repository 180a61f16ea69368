"""Step timing and training phases, as Keras callbacks: two figures of the same step.

StepTimer (synced, per step): every `on_train_batch_end` materializes the batch loss on the host
(a float), so the host waits for the step's work on every backend (JAX and torch dispatch
asynchronously). A step's time is the interval between two consecutive batch ends within one
epoch; the first batch of each epoch (iterator start) and every interval across a validation pass
are excluded. Steady state starts at the second epoch, or after `warmup_steps` steps when there is
only one epoch. This gives a per-step distribution (p50, p95, CV), but a step then costs the
host's work plus the device's instead of the larger of the two.

FreeRunTimer (free-running, per window): time stamps at batch begins only, and one sync at each
end of the window; Keras runs the batch ends off the main thread (async_safe), so the host
dispatches step k+1 while the device runs step k, as in training without a per-step callback.
One figure per window: its mean step time. On TensorFlow Keras reads every step's logs on the
main thread whatever the callbacks (its backend is not thread-safe), so there the two coincide.
Step-time overheads use StepTimer's median (bench/README.md "GPUs" says why); both are recorded.
"""
from __future__ import annotations

import math
import time

import numpy as np

import keras


def _as_float(value) -> float:
    """Materialize a (possibly device-side, possibly async) scalar on the host."""
    if isinstance(value, (int, float)):
        return float(value)
    return float(keras.ops.convert_to_numpy(value))


class StepTimer(keras.callbacks.Callback):
    # Never async: Keras runs async-safe batch callbacks on a thread pool (JAX backend), where
    # the host would not wait for the step before the timestamp.
    async_safe = False

    def __init__(self, warmup_steps: int = 10):
        super().__init__()
        self.warmup_steps = warmup_steps
        self.train_begin = None
        self.train_end = None
        self.first_step_s = None
        self.first_step_unix = None  # wall-clock time the first step began (process start-up studies)
        self.validation_s = 0.0
        self.steps = []  # (epoch, step-in-epoch, seconds)
        self.spans = []  # (start, end) perf_counter of each entry of self.steps (energy windows)
        self.steps_run = 0
        self.epoch_wall_s = []  # wall time since train begin at each epoch end (validation included)
        self.epoch_validation_s = []
        self.epoch_train_s = []  # per epoch: its wall time without validation
        self.nonfinite = None  # "loss became nan at epoch 2, step 5"
        self._epoch = 0
        self._last_end = None
        self._batch_begin = None
        self._test_begin = None
        self._val_this_epoch = 0.0

    # -- train -------------------------------------------------------------
    def on_train_begin(self, logs=None):
        self.train_begin = time.perf_counter()
        self.cpu_begin = time.process_time()  # CPU seconds of every thread of this process

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch
        self._last_end = None
        self._val_this_epoch = 0.0
        self._epoch_begin = time.perf_counter()

    def on_train_batch_begin(self, batch, logs=None):
        if self.first_step_s is None:
            self._batch_begin = time.perf_counter()
            self.first_step_unix = time.time()

    def on_train_batch_end(self, batch, logs=None):
        loss = _as_float((logs or {}).get("loss", 0.0))  # the host waits for this step here
        now = time.perf_counter()
        self.steps_run += 1
        if self.first_step_s is None:
            self.first_step_s = now - self._batch_begin
        elif self._last_end is not None:
            self.steps.append((self._epoch, batch, now - self._last_end))
            self.spans.append((self._last_end, now))
        self._last_end = now
        if not math.isfinite(loss):
            self.nonfinite = f"training loss became {loss} at epoch {self._epoch + 1}, step {batch + 1}"
            self.model.stop_training = True

    def on_epoch_end(self, epoch, logs=None):
        now = time.perf_counter()
        self.epoch_wall_s.append(now - self.train_begin)
        self.epoch_validation_s.append(self._val_this_epoch)
        self.epoch_train_s.append(now - self._epoch_begin - self._val_this_epoch)
        val = (logs or {}).get("val_xent_loss")
        if val is not None and not math.isfinite(val) and self.nonfinite is None:
            self.nonfinite = f"validation loss became {val} at epoch {epoch + 1}"
            self.model.stop_training = True

    def on_train_end(self, logs=None):
        self.train_end = time.perf_counter()
        self.cpu_end = time.process_time()

    # -- validation inside fit ---------------------------------------------
    def on_test_begin(self, logs=None):
        self._test_begin = time.perf_counter()

    def on_test_end(self, logs=None):
        dt = time.perf_counter() - self._test_begin
        self.validation_s += dt
        self._val_this_epoch += dt

    # -- result ------------------------------------------------------------
    def _steady_indices(self) -> list[int]:
        epochs = {e for e, _, _ in self.steps}
        if len(epochs) > 1:
            return [i for i, (e, _, _) in enumerate(self.steps) if e >= 1]
        return list(range(len(self.steps)))[self.warmup_steps:]

    def steady_step_times_s(self) -> np.ndarray:
        return np.asarray([self.steps[i][2] for i in self._steady_indices()], dtype=float)

    def steady_spans(self) -> list[tuple[float, float]]:
        """(start, end) perf_counter times of the steady-state steps, adjacent ones merged."""
        merged: list[list[float]] = []
        for i in self._steady_indices():
            start, end = self.spans[i]
            if merged and start - merged[-1][1] < 1e-9:
                merged[-1][1] = end
            else:
                merged.append([start, end])
        return [(a, b) for a, b in merged]

    def per_epoch_overhead_s(self) -> float | None:
        """Median, over epochs after the first, of an epoch's training time not spent between two
        of its batch ends: iterator start, the first batch, callbacks at epoch end (per-epoch cost)."""
        inside = {}
        for e, _, dt in self.steps:
            inside[e] = inside.get(e, 0.0) + dt
        extra = [self.epoch_train_s[e] - inside.get(e, 0.0) for e in range(1, len(self.epoch_train_s))]
        return float(np.median(extra)) if extra else None

    def result(self, batch_size: int) -> dict:
        """The timing section. Two throughputs, named apart:
        samples_per_s: steady-state step throughput (batch / step time over the steady window);
        end_to_end_samples_per_s: samples over training wall time after the first step, validation
        excluded (so per-epoch costs count: iterator start, input pipeline, callbacks)."""
        t = self.steady_step_times_s()
        train_s = (self.train_end - self.train_begin) - self.validation_s
        after_first_s = train_s - (self.first_step_s or 0.0)
        end_to_end = ((self.steps_run - 1) * batch_size / after_first_s
                      if self.steps_run > 1 and after_first_s > 0 else None)
        if len(t) == 0:
            stats = dict(steady_state_steps=0, steady_state_s=0.0, step_time_p50_s=None, step_time_p95_s=None,
                         step_time_mean_s=None, step_time_cv=None, samples_per_s=None)
        else:
            mean = float(t.mean())
            stats = dict(
                steady_state_steps=int(len(t)),
                steady_state_s=float(t.sum()),
                step_time_p50_s=float(np.percentile(t, 50)),
                step_time_p95_s=float(np.percentile(t, 95)),
                step_time_mean_s=mean,
                step_time_cv=float(t.std() / mean) if mean > 0 else None,
                samples_per_s=float(batch_size * len(t) / t.sum()),
            )
        fit_wall_s = self.train_end - self.train_begin
        fit_cpu_s = self.cpu_end - self.cpu_begin
        return dict(first_step_s=self.first_step_s, train_s=train_s, validation_s=self.validation_s,
                    steps_run=self.steps_run, **stats, end_to_end_samples_per_s=end_to_end,
                    per_epoch_overhead_s=self.per_epoch_overhead_s(),
                    fit_wall_s=fit_wall_s, fit_cpu_s=fit_cpu_s,
                    cpu_busy_threads=fit_cpu_s / fit_wall_s if fit_wall_s > 0 else None)


def sync_model(backend: str, model) -> None:
    """Wait until the device has finished every step dispatched so far for `model`."""
    from bench import backends

    if backend == "jax":  # between steps the trainer's state lives in model._jax_state, not the variables
        state = getattr(model, "_jax_state", None)  # a Keras TrackedDict of lists: not a JAX pytree, so flatten it
        arrays = [a for group in state.values() if group for a in group] if state else [v.value for v in model.variables]
        backends.synchronize(backend, *arrays)
    elif backend == "torch":
        backends.synchronize(backend)
    else:
        backends.synchronize(backend, model.weights[0].value)


class FreeRunTimer(keras.callbacks.Callback):
    """The free-running window of one fit() epoch of n batches: from the begin of its second batch
    to the begin of its last, each after a sync, so it holds steps 2..n-1 and nothing else (the
    first batch waits for the iterator; after the last come the epoch's end-of-epoch costs, which
    the end-to-end throughput counts)."""

    async_safe = True  # Keras may run batch ends on a thread pool: the main thread never waits per step

    def __init__(self, backend: str):
        super().__init__()
        self.backend = backend
        self.batches = 0
        self.start = self.end = None
        self.steps = 0

    def on_train_batch_begin(self, batch, logs=None):
        self.batches += 1
        last = (self.params or {}).get("steps")
        if self.batches == 2 or (last and self.batches == last and self.batches > 2):
            sync_model(self.backend, self.model)  # the one wait at each end of the window
            now = time.perf_counter()
            if self.batches == 2:
                self.start = now
            else:
                self.end, self.steps = now, self.batches - 2

    def on_epoch_end(self, epoch, logs=None):
        if self.end is None and self.start is not None:  # the epoch's length was not known in advance
            sync_model(self.backend, self.model)
            self.end, self.steps = time.perf_counter(), self.batches - 1

    def result(self, batch_size: int) -> dict:
        """free_running_step_s: window seconds / steps in it; free_running_samples_per_s; the sync."""
        steps = self.steps
        if steps < 1 or self.start is None or self.end is None:
            return _no_free_running(self.backend, steps, f"a free-running window needs 3 batches or more "
                                                         f"({self.batches} ran)")
        step_s = (self.end - self.start) / steps
        return {"free_running_step_s": step_s, "free_running_samples_per_s": batch_size / step_s,
                "free_running_steps": steps, "free_running_syncs": _syncs(self.backend), "null_reasons": {}}


def _syncs(backend: str) -> str:
    """How often the free-running window waits for the device: TensorFlow's Keras reads every step."""
    return "step" if backend == "tensorflow" else "window"


def _no_free_running(backend: str, steps: int, reason: str) -> dict:
    return {"free_running_step_s": None, "free_running_samples_per_s": None, "free_running_steps": steps,
            "free_running_syncs": _syncs(backend),
            "null_reasons": {"free_running_step_s": reason, "free_running_samples_per_s": reason}}


def free_running(model, inputs: dict, backend: str, batch_size: int, steps: int | None = None) -> dict:
    """Train one more epoch of `inputs` (model.fit's data keywords) with only a FreeRunTimer and
    return its result. Run after every other training measurement: it trains the model further."""
    timer = FreeRunTimer(backend)
    try:
        model.fit(**inputs, epochs=1, steps_per_epoch=steps, callbacks=[timer], verbose=0)
    except Exception as e:  # noqa: BLE001 - the trial's other figures stand; this one is null with the reason
        return _no_free_running(backend, 0, f"the free-running epoch failed: {type(e).__name__}: {e}"
                                            .replace("\n", " ")[:300])
    return timer.result(batch_size)
