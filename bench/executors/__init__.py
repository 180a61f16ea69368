"""Executors: place trials on resources and stream their records into the store as they land.

`execute` is the one entry point the CLI calls. The `process` executor runs trial processes on
this machine (local.py); the `ray` executor (the default) runs one Ray task per trial on every
node of the Ray cluster it joins or starts (ray/). Both start the same fresh trial process
(trial_process.py: a fork of a pre-imported zygote, or a plain interpreter), so their numbers are
comparable; both write each record the moment it lands and retry only trials whose process died.
"""
from __future__ import annotations

from bench.errors import UserError

EXECUTORS = ("ray", "process")


def execute(suite, batches, store, executor: str, progress, start_method: str | None = None) -> None:
    """Run each batch of units (bench/plan.py) to completion, one after the other."""
    if executor == "process":
        from bench import env
        from bench.executors.local import run_local

        fp = env.fingerprint()
        store.update_manifest(nodes={fp["fingerprint_id"]: fp})
        run_local(batches, store, suite, progress, start_method)
    elif executor == "ray":
        try:
            import ray  # noqa: F401
        except ImportError:
            raise UserError("the ray executor needs Ray (pip install 'ray[default]'); "
                            "without it use --executor process") from None
        from bench.executors.ray import run_ray

        run_ray(batches, store, suite, progress, start_method)
    else:
        raise ValueError(f"unknown executor {executor!r}")
