"""What the model is fed: the training arrays as they are, or a PyDataset that transforms each
batch on the input side (augmentation `where: pipeline`, then mixup / cutmix).

Where the trial's slot has cores to spare (`cpu_threads` not 1), the PyDataset runs in Keras' own
enqueuer (2 threads, a queue of 10 batches) on every backend, so input-side augmentation overlaps
the training step alike on TensorFlow, JAX and torch. On a slot of one core nothing can overlap
the step: the enqueuer's two threads only take turns with it, and the hand-offs were a third of
what the digits MLP's input-side augmentation cost there (+35-46% with the enqueuer against
+21-29% fed by Keras' default, in the same processes: tests/benchmarks/pipeline_feeds.py, two
runs of three processes). There the PyDataset keeps Keras' default, `workers=1`: TensorFlow wraps
it in tf.data with prefetching, JAX and torch call it between steps, and the step time carries
the batch's cost once, as a user of that slot pays it.
What the feed costs the host is recorded next to the step time (`input_record`): the feed
(`input_feed`: uint8 images cast in the model, or an array dtype fed as is), the bytes of one
batch, and the input side's own time per batch, measured on the feed alone after training
(`input_side`), with `input_side_bound` when the step waits for it.
Imports Keras: use it only inside a trial process.
"""
from __future__ import annotations

import time

import keras
import numpy as np

from bench.workloads.common import mix_batch, pipeline_augment

PIPELINE_WORKERS = 2  # enqueuer threads, where the slot has more than one core
PIPELINE_QUEUE = 10


def pipeline_workers(cpu_threads: int | None) -> int:
    """PyDataset workers for a slot of `cpu_threads` cores (None: all the node's): Keras' default
    of 1 on a one-core slot, else the enqueuer's PIPELINE_WORKERS threads."""
    return 1 if cpu_threads == 1 else PIPELINE_WORKERS


class TransformedBatches(keras.utils.PyDataset):
    """Batches of (x, y) transformed as the recipe asks, in a shuffled order that changes every epoch. Each batch draws
    from its own generator seeded by (seed, epoch, batch index): the enqueuer's threads share no
    RNG state and the batches are the same whatever the thread timing."""

    def __init__(self, recipe, x: np.ndarray, y: np.ndarray, batch_size: int, kind: str, seed: int,
                 workers: int = PIPELINE_WORKERS):
        super().__init__(workers=workers, use_multiprocessing=False, max_queue_size=PIPELINE_QUEUE)
        self.recipe, self.x, self.y, self.batch_size, self.kind = recipe, x, y, batch_size, kind
        self.seed, self.epoch = seed, 0
        self.order = np.random.default_rng((seed, 0)).permutation(len(x))

    def __len__(self) -> int:
        return len(self.x) // self.batch_size

    def __getitem__(self, i: int):
        idx = self.order[i * self.batch_size:(i + 1) * self.batch_size]
        rng = np.random.default_rng((self.seed, self.epoch, i))
        xb, yb, r = self.x[idx], self.y[idx], self.recipe
        if r.augmentation == "pipeline":
            xb = pipeline_augment(xb, self.kind, r.augment_strength, rng)
        if r.mixes_batches:
            xb, yb = mix_batch(xb, yb, r.mixup_alpha, r.cutmix_alpha, rng)
        return xb, yb

    def on_epoch_end(self) -> None:
        self.epoch += 1
        self.order = np.random.default_rng((self.seed, self.epoch)).permutation(len(self.x))


def _input_side(recipe) -> bool:
    """Batches transformed on the input side (a TransformedBatches PyDataset)."""
    return recipe.augmentation == "pipeline" or recipe.mixes_batches


def fit_inputs(recipe, x: np.ndarray, y: np.ndarray, batch_size: int, kind: str, seed: int,
               cpu_threads: int | None = None) -> tuple[dict, str]:
    """Keyword arguments for model.fit's data, and a short description of the input pipeline."""
    if _input_side(recipe):
        workers = pipeline_workers(cpu_threads)
        single = ("wrapped in tf.data with prefetching" if keras.config.backend() == "tensorflow"
                  else "called between steps")
        how = (f"Keras enqueuer ({workers} threads, queue {PIPELINE_QUEUE})" if workers > 1 else
               f"Keras' default feed on a one-core slot, workers=1 ({single})")
        return dict(x=TransformedBatches(recipe, x, y, batch_size, kind, seed, workers)), \
            f"PyDataset transforming batches on the input side, {how}"
    return dict(x=x, y=y, batch_size=batch_size, shuffle=True), f"arrays ({keras.config.backend()} adapter), shuffled"


PREFETCH_BATCHES = 2


def _tf_dataset(x: np.ndarray, y: np.ndarray, batch_size: int, seed: int | None):
    """Arrays as a tf.data pipeline built once: the row indices shuffled and reshuffled every epoch
    (seed None: in order), batched, each batch gathered from the arrays (as Keras' adapter does: a
    shuffle buffer holds indices, not a second copy of the data), two batches prefetched,
    autotuning off."""
    import tensorflow as tf

    options = tf.data.Options()
    options.autotune.enabled = False
    x_t, y_t = tf.convert_to_tensor(x), tf.convert_to_tensor(y)
    ds = tf.data.Dataset.range(len(x))
    if seed is not None:
        ds = ds.shuffle(len(x), seed=seed, reshuffle_each_iteration=True)
    ds = ds.batch(batch_size).map(lambda i: (tf.gather(x_t, i), tf.gather(y_t, i)))
    return ds.prefetch(PREFETCH_BATCHES).with_options(options)


def _tf_arrays(recipe) -> bool:
    """Plain arrays on TensorFlow: fed through `_tf_dataset`."""
    return not _input_side(recipe) and keras.config.backend() == "tensorflow"


TF_PIPELINE = f"tf.data built once per trial (indices reshuffled every epoch, prefetch {PREFETCH_BATCHES}, autotune off)"


def trial_inputs(recipe, x: np.ndarray, y: np.ndarray, x_val: np.ndarray, y_val: np.ndarray, batch_size: int,
                 kind: str, seed: int, cpu_threads: int | None = None) -> tuple[dict, dict, str]:
    """An isolated trial's data: (fit keywords for training, for `validation_data` and
    `evaluate`, a description of the input pipeline).

    On TensorFlow, plain arrays become tf.data pipelines built once (`_tf_dataset`), as a tuned
    training script feeds `fit`. Keras' array adapter builds an autotuned pipeline and starts it
    again every epoch and every validation pass: on a slot pinned to one core that cost ~0.1 s per
    epoch, more than the epoch's steps of the digits MLP, and half of a 10-epoch `fit`'s wall time
    (tests/benchmarks/trial_inputs.py: 1.61-1.72 s against 0.82 s, median step time within 2.5%).
    Input-side recipes keep their PyDataset; JAX and torch keep the arrays."""
    if not _tf_arrays(recipe):
        train, desc = fit_inputs(recipe, x, y, batch_size, kind, seed, cpu_threads)
        return train, dict(x=x_val, y=y_val, batch_size=batch_size), desc
    return (dict(x=_tf_dataset(x, y, batch_size, seed)), dict(x=_tf_dataset(x_val, y_val, batch_size, None)),
            TF_PIPELINE)


def validation_data(val_inputs: dict):
    """`fit`'s validation_data for trial_inputs' validation keywords."""
    return (val_inputs["x"], val_inputs["y"]) if "y" in val_inputs else val_inputs["x"]


def block_inputs(recipe, x: np.ndarray, y: np.ndarray, batch_size: int, kind: str, seed: int,
                 cpu_threads: int | None = None) -> dict:
    """model.fit's data for the many short fits of a paired session (bench/units/session_run.py).

    The PyDataset of input-side recipes is the trial's own. Plain arrays on TensorFlow become the
    trial's tf.data pipeline (`_tf_dataset`), built once per block size and reused by every block:
    with the adapter's autotuned pipeline, each fit of a process pinned to one core spent
    0.04-0.35 s starting and stopping tf.data's tuning threads (more than the block's steps),
    against 0.01-0.02 s this way, with the same median step time (tests/benchmarks/block_inputs.py).
    Other backends keep the arrays.
    """
    if not _tf_arrays(recipe):
        return fit_inputs(recipe, x, y, batch_size, kind, seed, cpu_threads)[0]
    return dict(x=_tf_dataset(x, y, batch_size, seed))


# ---------------------------------------------------------------------------- what the feed costs the host

INPUT_TIMING_BATCHES = 8  # batches timed on the feed alone (fewer when an epoch has fewer)
INPUT_SIDE_MARGIN = 0.9
"""Measured alone, the input side runs faster than inside `fit`, where it shares the cores with the
framework's host thread: within 10% of what it must beat counts as not beating it."""


def input_feed(x: np.ndarray) -> str:
    """How the training images or arrays reach the device: "uint8-cast-on-device" (uint8 images,
    cast and scaled by the model's first layer: bench.workloads.common.image_input), else
    "<dtype>-host" (fed as they are: "float32-host", "int32-host")."""
    return "uint8-cast-on-device" if x.dtype == np.uint8 else f"{x.dtype.name}-host"


def _median_s(make_batch, count: int) -> float:
    times = []
    for i in range(count):
        t = time.perf_counter()
        make_batch(i)
        times.append(time.perf_counter() - t)
    return float(np.median(times))


def _tf_dataset_batch_s(ds, count: int) -> float:
    """Median seconds per batch of a tf.data pipeline iterated alone: past its start and its
    prefetch buffer (batches ready before they were asked for) each next() waits for one batch's
    work. A pipeline of too few batches for that: past its start, or its only batch."""
    times, it = [], iter(ds)
    while len(times) < 1 + PREFETCH_BATCHES + count:
        t = time.perf_counter()
        if next(it, None) is None:
            break
        times.append(time.perf_counter() - t)
    return float(np.median(times[1 + PREFETCH_BATCHES:] or times[1:] or times))


def input_side(inputs: dict, batch_size: int, backend: str, batches: int = INPUT_TIMING_BATCHES) -> dict:
    """The input side of `fit(**inputs)` alone, in this thread: the median seconds to produce one
    batch on the host (gather, and for input-side recipes augmentation and mixing; the copy to the
    device is not in it), how many threads produce
    batches at once (`input_workers`), and whether they run while the step does
    (`input_overlaps_step`: tf.data's prefetching, or the enqueuer's threads) or between steps
    (JAX and torch take arrays and a one-worker PyDataset in the training loop's thread).
    Call after training: timing a tf.data pipeline starts another of its epochs."""
    x = inputs["x"]
    if isinstance(x, TransformedBatches):  # __getitem__ keeps no state: the batches fit gets
        overlaps = x.workers > 1 or backend == "tensorflow"
        return {"input_time_per_batch_s": _median_s(x.__getitem__, min(batches, len(x))),
                "input_workers": x.workers, "input_overlaps_step": overlaps}
    if isinstance(x, np.ndarray):  # Keras' array adapter on JAX and torch: a shuffled gather per batch
        y = inputs["y"]
        order = np.random.default_rng(0).permutation(len(x))
        count = max(1, min(batches, len(x) // batch_size))

        def gather(i):
            idx = order[i * batch_size:(i + 1) * batch_size]
            return x[idx], y[idx]

        return {"input_time_per_batch_s": _median_s(gather, count), "input_workers": 1,
                "input_overlaps_step": False}
    return {"input_time_per_batch_s": _tf_dataset_batch_s(x, batches), "input_workers": 1,
            "input_overlaps_step": True}


def input_side_bound(time_per_batch_s: float | None, workers: int, overlaps: bool,
                     step_s: float | None) -> bool | None:
    """Whether the step waits for the input side (its overhead is then host cost, not device cost).
    Between steps, the input's time is part of the step: bound when it takes (nearly) as long as
    the rest of the step. Overlapping the step, `workers` threads share the batches: bound when
    each batch takes them (nearly) as long as the step. None when either time is unknown."""
    if time_per_batch_s is None or step_s is None:
        return None
    if overlaps:
        return time_per_batch_s / workers >= INPUT_SIDE_MARGIN * step_s
    return time_per_batch_s >= INPUT_SIDE_MARGIN * (step_s - time_per_batch_s)


def input_record(inputs: dict, x: np.ndarray, y: np.ndarray, batch_size: int, backend: str,
                 step_s: float | None) -> tuple[dict, dict]:
    """The timing section's input fields for a trial fed `inputs` (training arrays x, y) whose
    synced median step took `step_s`, and their null reasons. A feed that fails to be timed leaves
    the trial's other figures standing: its time is null with the reason."""
    fields = {"input_feed": input_feed(x), "input_batch_bytes": int(batch_size * (x[0].nbytes + y[0].nbytes))}
    try:
        side = input_side(inputs, batch_size, backend)
    except Exception as e:  # noqa: BLE001 - a figure missing, not a failed trial
        why = f"timing the feed alone failed: {type(e).__name__}: {e}".replace("\n", " ")[:300]
        fields.update(input_time_per_batch_s=None, input_side_bound=None)
        return fields, {"input_time_per_batch_s": why, "input_side_bound": why}
    bound = input_side_bound(side["input_time_per_batch_s"], side["input_workers"], side["input_overlaps_step"],
                             step_s)
    fields.update(side, input_side_bound=bound)
    return fields, ({} if bound is not None else {"input_side_bound": "no steady-state step time to compare with"})
