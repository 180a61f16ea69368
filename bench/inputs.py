"""What the model is fed: the training arrays as they are, or a PyDataset that transforms each
batch on the input side (augmentation `where: pipeline`, then mixup / cutmix).

The PyDataset runs in Keras' own enqueuer (2 threads, a queue of 10 batches) on every backend,
so input-side augmentation overlaps the training step alike on TensorFlow, JAX and torch. (With
Keras' default `workers=1`, TensorFlow would wrap it in tf.data with prefetching while JAX and
torch would call it synchronously between steps: three different experiments.)
Imports Keras: use it only inside a trial process.
"""
from __future__ import annotations

import keras
import numpy as np

from bench.workloads.common import mix_batch, pipeline_augment

PIPELINE_WORKERS = 2
PIPELINE_QUEUE = 10


class TransformedBatches(keras.utils.PyDataset):
    """Batches of (x, y) transformed as the recipe asks, in a shuffled order that changes every epoch. Each batch draws
    from its own generator seeded by (seed, epoch, batch index): the enqueuer's threads share no
    RNG state and the batches are the same whatever the thread timing."""

    def __init__(self, recipe, x: np.ndarray, y: np.ndarray, batch_size: int, kind: str, seed: int):
        super().__init__(workers=PIPELINE_WORKERS, use_multiprocessing=False, max_queue_size=PIPELINE_QUEUE)
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


def fit_inputs(recipe, x: np.ndarray, y: np.ndarray, batch_size: int, kind: str, seed: int) -> tuple[dict, str]:
    """Keyword arguments for model.fit's data, and a short description of the input pipeline."""
    if recipe.augmentation == "pipeline" or recipe.mixes_batches:
        desc = f"PyDataset transforming batches on the input side, Keras enqueuer ({PIPELINE_WORKERS} threads, queue {PIPELINE_QUEUE})"
        return dict(x=TransformedBatches(recipe, x, y, batch_size, kind, seed)), desc
    return dict(x=x, y=y, batch_size=batch_size, shuffle=True), f"arrays ({keras.config.backend()} adapter), shuffled"


def block_inputs(recipe, x: np.ndarray, y: np.ndarray, batch_size: int, kind: str, seed: int) -> dict:
    """model.fit's data for the many short fits of a paired session (bench/paired.py).

    The PyDataset of input-side recipes is the trial's own. Plain arrays on TensorFlow become a
    tf.data pipeline with autotuning off (shuffled with a full buffer, reshuffled every fit,
    two batches prefetched), built once and reused by every block: with the adapter's autotuned
    pipeline, each fit of a process pinned to one core spent 0.04-0.35 s starting and stopping
    tf.data's tuning threads (more than the block's steps), against 0.01-0.02 s this way, with
    the same median step time (tests/benchmarks/block_inputs.py). Other backends keep the arrays.
    """
    if recipe.augmentation == "pipeline" or recipe.mixes_batches or keras.config.backend() != "tensorflow":
        return fit_inputs(recipe, x, y, batch_size, kind, seed)[0]
    import tensorflow as tf

    options = tf.data.Options()
    options.autotune.enabled = False
    ds = (tf.data.Dataset.from_tensor_slices((x, y)).shuffle(len(x), seed=seed, reshuffle_each_iteration=True)
          .batch(batch_size).prefetch(2).with_options(options))
    return dict(x=ds)
