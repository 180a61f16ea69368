"""Dataset staging: each workload's files present and verified on this node before any trial runs.

`prepare(workload_names)` is what an executor calls once per node before the first trial (and
`regbench data fetch`): under an fcntl lock per dataset and root (so eight trial processes or eight
nodes on one NFS share fetch once), it verifies what is there and fetches what is missing or
corrupted, or raises UserError with one line naming this node and the dataset. A trial's load()
only reads (bench/dataset_formats.py `load_fashion_mnist`, `load_cifar10`): it never downloads.

The parts: bench/workloads (which dataset a workload reads), bench/dataset_formats.py
(Fashion-MNIST's gzipped IDX files and CIFAR-10's binary records: parsers, checks, fetchers,
loaders), bench/staging.py (data roots, the lock, fetching, verification).
"""
from __future__ import annotations

from bench import workloads
from bench.dataset_formats import DATASETS
from bench.staging import Dataset, locate, roots, stage, status  # noqa: F401 - locate, roots, status: `regbench data`


def for_workloads(names=None) -> list[Dataset]:
    """The datasets the named workloads read (all of them when `names` is empty), in a fixed order."""
    wanted = {getattr(w, "DATASET", None) for w in workloads.named(names)}
    return [ds for name, ds in DATASETS.items() if name in wanted]


def prepare(workload_names=None, fetch: bool = True) -> dict:
    """Make every dataset the named workloads read present and verified on this node.

    Call once per node before any trial runs (concurrent callers on one machine or one shared
    REGBENCH_DATA_DIR are serialized by a file lock; only one fetches). Returns
    {dataset: {"state": "verified" | "fetched", "path", "bytes", "files_fetched", "seconds"}};
    workloads without files (digits_mlp, synthetic_cnn, ...) contribute nothing. fetch=False only
    verifies. Raises UserError, one line naming this host and the dataset, when the data cannot
    be had (no network, no mirror, a read-only root without the files, a corrupted download).
    """
    return {ds.name: stage(ds, fetch) for ds in for_workloads(workload_names)}


def builtin_workloads(trials) -> list[str]:
    """The built-in workloads `trials` run, sorted (a user's workload is staged by `prepare_node`)."""
    return sorted({t.workload for t in trials if not (t.user_code or {}).get("workload")})


def prepare_node(workload_names, user_files: dict | None = None) -> dict:
    """`prepare` on one node of a cluster, plus the user's code and data files the driver sent
    (bench/usercode.py bundle: {sha256: {name: bytes}}), written and checked by hash."""
    from bench import usercode

    staged = prepare(workload_names) if workload_names else {}
    for key, state in usercode.stage(user_files or {}).items():
        staged[f"user code {key}"] = {"state": state}
    return staged
