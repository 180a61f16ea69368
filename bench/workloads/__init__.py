"""Workload registry. Every workload is a module with the same handful of names:

    NAME, DESCRIPTION, KIND ("tabular" | "image" | "tokens"), DEFAULT_TARGET (val accuracy or None),
    ACCURACY_MEANINGFUL (False where the labels are random: accuracy and convergence mean nothing),
    ARCH ("mlp" | "cnn" | "resnet" | "transformer": which regularizers apply, see
          bench/regularizers.py applies_to),
    load(seed, max_train_samples, **model) -> Data
    build(recipe, data) -> keras.Model  (uncompiled; inputs known)

and optionally DATASET (a bench.dataset_formats.DATASETS name: files staged per node before trials
run) and MODEL ({option: bench.params.Param}, the suite's `model:` options, passed to load() and
kept in Data.model) with check_model(options) -> (field, problem) | None.

The runner never special-cases a workload. To add one, write the module and list it here, or
name it in a suite from outside the package (`{path: my_model.py}`; bench/workloads/README.md,
"regbench.workload v1"): `for_trial` gives the trial process either kind.
"""
from __future__ import annotations

from bench.errors import UserError, did_you_mean
from bench.workloads import (cifar10_resnet, digits_mlp, fashion_mnist_cnn, resnet50, synthetic_cnn,
                             transformer_encoder)

WORKLOADS = {m.NAME: m for m in (digits_mlp, fashion_mnist_cnn, cifar10_resnet, synthetic_cnn,
                                 transformer_encoder, resnet50)}


def named(names=None) -> list:
    """The workload modules called `names` (every one when empty), in that order; UserError naming
    the first unknown name, with the nearest known one."""
    names = list(names or WORKLOADS)
    for name in names:
        if name not in WORKLOADS:
            raise UserError(f"WORKLOAD: unknown workload {name!r}{did_you_mean(name, WORKLOADS)}")
    return [WORKLOADS[name] for name in names]


def for_trial(trial):
    """The workload module a trial runs: a built-in, or the user's (bench/workloads/external.py),
    re-imported and checked against the hash it was planned with; the user's regularizers the trial
    uses are registered first (bench/usercode.py). UserCodeChanged when a source is not the planned one."""
    user = trial.user_code or {}
    if user.get("regularizers"):
        from bench import regularizers, usercode

        for name, ref in user["regularizers"].items():
            module, _ = usercode.activate(ref)
            regularizers.REGISTRY[name] = regularizers.from_module(module, usercode.source_name(ref))
    if user.get("workload"):
        from bench.workloads.external import for_ref

        return for_ref(user["workload"])
    return WORKLOADS[trial.workload]
