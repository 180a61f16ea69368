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


def execute(suite, batches, store, executor: str, progress, start_method: str | None = None,
            address: str | None = None) -> None:
    """Run each batch of units (bench/plan.py) to completion, one after the other. `address`:
    the Ray cluster to join (ray executor only; none starts a private instance)."""
    if address and executor != "ray":
        raise UserError(f"--address: joins a Ray cluster, which only --executor ray does (not {executor})")
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

        run_ray(batches, store, suite, progress, start_method, address)
    else:
        raise ValueError(f"unknown executor {executor!r}")


def write_once(store, kind: str, record: dict, progress) -> None:
    """Write a unit's record. One already there (written by another driver) is kept and this
    result dropped, with a line saying so."""
    if store.write_record(kind, record) is False:
        progress.note(f"{record.get(store.ID_KEYS[kind])}: a record was already written (by another driver?); "
                      "this result is dropped")
