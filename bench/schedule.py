"""Executors: place trials on resources, stream results into the store as they land.

`execute` is the one entry point the CLI calls. The `process` executor runs one subprocess per
trial on this machine (bench.local_executor); the `ray` executor runs one Ray task per trial.
"""
from __future__ import annotations

EXECUTORS = ("ray", "process")


def execute(suite, trials, store, executor: str, progress) -> None:
    if executor == "process":
        from bench import env
        from bench.local_executor import run_local

        fp = env.fingerprint()
        store.update_manifest(nodes={fp["fingerprint_id"]: fp})
        run_local(trials, store, suite, progress)
    elif executor == "ray":
        from bench.ray_executor import run_ray

        run_ray(trials, store, suite, progress)
    else:
        raise ValueError(f"unknown executor {executor!r}")
