"""The `ray` executor: one Ray task per trial, on every GPU and CPU of a cluster or of this machine.

How a trial runs: each trial is one Ray task. The task runs in a reusable Ray worker and starts
ONE fresh trial process through bench/executors/trial_process.py, the same path as the `process`
executor (a fork of a per-worker zygote, or a plain interpreter), so both executors measure the
same thing. We do not use `max_calls=1` + run_trial in the Ray worker itself: a new Ray worker
costs ~0.6 s of CPU on an idle 2-core machine and 2-3 s on a loaded one, all inside the trial's
resource slot, and a trial process without Ray's background threads times more cleanly.

Modules, by job:
  connect.py    join a cluster or start a private local instance; the reaper of a SIGKILLed driver
  resources.py  what one trial asks Ray for; fail fast when no node can hold it
  task.py       the Ray task (one attempt of one trial) and the attempt log actor
  driver.py     submit, stream results into the store, retries, timeouts, lost nodes
"""
from bench.executors.ray.driver import run_ray

__all__ = ["run_ray"]
