"""Workload registry. Every workload is a module with the same handful of names:

    NAME, DESCRIPTION, KIND ("tabular" | "image"), DEFAULT_TARGET (val accuracy or None),
    CONVERGENCE (False where accuracy means nothing, e.g. random labels),
    load(seed, max_train_samples) -> Data
    build(recipe, data) -> keras.Model  (uncompiled; inputs known)

The runner never special-cases a workload. To add one, write the module and list it here.
"""
from __future__ import annotations

from bench.workloads import cifar10_resnet, digits_mlp, fashion_mnist_cnn, synthetic_cnn

WORKLOADS = {m.NAME: m for m in (digits_mlp, fashion_mnist_cnn, cifar10_resnet, synthetic_cnn)}
