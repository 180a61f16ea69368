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
Imports Keras: use it only inside a trial process.
"""
from __future__ import annotations

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
    """model.fit's data for the many short fits of a paired session (bench/paired.py).

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
