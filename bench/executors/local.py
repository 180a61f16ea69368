"""The `process` executor: trial processes on this machine, no Ray.

Slots: one per visible GPU for GPU suites (the process sees only its GPU), otherwise
cpu_count // cpus_per_trial CPU slots; isolation "node" runs one trial at a time, and so do
paired sessions on a CPU (a neighbour on another core shifts step-time ratios). A `devices:
[gpu, cpu]` suite gets both: one slot per GPU, each with `gpu_host_cpus` cores its trial pins
(its host threads), and CPU slots on the cores left. A unit pinned to a kind takes a slot of it. Work comes in
batches (isolated trials, then sessions; see bench/plan.py): a batch finishes before the next
starts. A trial process that dies without writing its record (killed, segfault) is retried up to
max_retries times; a trial that raised is recorded once (the record says why). A trial past its
timeout is killed and recorded as failed.
"""
from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

from bench import env, scratch, signals
from bench.errors import UserError
from bench.executors import write_once
from bench.executors.trial_process import Launcher, collect, failure_record, read_log_tail
from bench.trial import Trial
from bench.units import runners, unit_type


def slots_for(suite, kind: str = Trial.kind) -> list[list[str] | None]:
    """One entry per slot for a batch of units of `kind` (bench/units): the GPU tokens it owns, or
    None for a CPU slot."""
    gpus, _ = env.gpus()
    whole_cpu_node = unit_type(kind).whole_cpu_node(suite)
    if suite.device == "mixed":
        return _mixed_slots(suite, gpus, whole_cpu_node)
    if suite.device != "cpu" and gpus:
        tokens = env.visible_gpu_tokens()
        ids = tokens if tokens is not None else [str(g["index"]) for g in gpus]
        if ids:
            return [[i] for i in (ids[:1] if suite.isolation == "node" else ids)]
    if suite.device == "gpu":
        raise UserError(f"suite {suite.name} asks for device: gpu but this machine has no GPU visible to NVML; "
                        "use device: cpu or a machine with a GPU")
    if whole_cpu_node:
        return [None]
    return [None] * max(1, (os.cpu_count() or 1) // suite.cpus_per_trial)


def _mixed_slots(suite, gpus, whole_cpu_node: bool) -> list[list[str] | None]:
    """GPU slots (one per visible GPU) and CPU slots on the cores their host threads leave (one when a
    unit on a CPU takes its whole node)."""
    tokens = env.visible_gpu_tokens()
    ids = tokens if tokens is not None else [str(g["index"]) for g in gpus]
    if not ids or not gpus:
        raise UserError(f"suite {suite.name} lists devices: {list(suite.devices)} but this machine has no GPU "
                        "visible to NVML; drop gpu from devices or use a machine with a GPU")
    cores = len(os.sched_getaffinity(0))
    left = cores - len(ids) * suite.gpu_host_cpus
    cpu_slots = 1 if whole_cpu_node else left // suite.cpus_per_trial
    if cpu_slots < 1:
        raise UserError(f"suite {suite.name}: {len(ids)} GPU(s) x gpu_host_cpus {suite.gpu_host_cpus} leave "
                        f"{max(left, 0)} of {cores} cores, fewer than cpus_per_trial {suite.cpus_per_trial} for a "
                        "CPU trial; lower gpu_host_cpus or cpus_per_trial")
    return [[i] for i in ids] + [None] * cpu_slots


def _fits(unit, slot) -> bool:
    """A unit pinned to a device kind runs only in a slot of that kind."""
    return unit.device is None or (unit.device == "gpu") == (slot is not None)


def run_local(batches, store, suite, progress, start_method: str | None = None) -> None:
    """Stage the suite's data on this machine, then run every batch of units (trials or sessions)
    to completion, one batch after the other."""
    from bench import data

    names = data.builtin_workloads(suite.trials)  # a user's files were checked at plan time
    staged = data.prepare(names) if names else {}
    if staged:
        progress.note("data: " + ", ".join(f"{name} {info['state']}" for name, info in staged.items()))
    with signals.stop_on_signals(), scratch.held(store.path.name) as run_tmp:
        workdir = Path(tempfile.mkdtemp(prefix="work-", dir=run_tmp))
        launcher = Launcher(workdir, "process", start_method, extra_env={
            "REGBENCH_CALIBRATION_DIR": str(workdir / "calibration"),
            "REGBENCH_CORE_LOCK_DIR": str(workdir / "cores"),
            "TMPDIR": str(scratch.tmp_dir(run_tmp))})
        try:
            for batch in batches:
                if batch:
                    _run_batch(batch, launcher, store, suite, progress)
        finally:
            launcher.close()


def _run_batch(units, launcher, store, suite, progress) -> None:
    slots = slots_for(suite, units[0].kind)
    free = list(range(len(slots)))
    pending = list(units)
    running: list = []  # (TrialProcess, slot index)
    attempts: dict[str, int] = {}
    try:
        while pending or running:
            while True:
                pick = next(((i, j) for i, unit in enumerate(pending) for j, slot in enumerate(free)
                             if _fits(unit, slots[slot])), None)
                if pick is None:
                    break
                unit, slot = pending.pop(pick[0]), free[pick[1]]
                skipped = runners.precheck(unit, "process", gpu=slots[slot] is not None)
                if skipped:
                    write_once(store, unit.kind, skipped, progress)
                    progress.finished(skipped, was_running=False)
                    continue
                free.remove(slot)
                attempts[unit.unit_id] = attempts.get(unit.unit_id, 0) + 1
                running.append((launcher.launch(unit, slots[slot], attempts[unit.unit_id]), slot))
                progress.started()
            time.sleep(0.05)
            progress.set_running(len(running))  # also keeps the heartbeat going in plain logs
            for entry in list(running):
                proc, slot = entry
                code = proc.poll()
                if code is None and time.monotonic() > proc.deadline:
                    proc.timed_out = True
                    proc.kill()
                elif code is None:
                    continue
                running.remove(entry)
                free.append(slot)
                unit, n = proc.unit, attempts[proc.unit.unit_id]
                outcome = collect(proc, "process")
                store.write_log(unit.unit_id, read_log_tail(proc.log_path),
                                f"attempt {n}: pid {proc.pid}, {proc.start_method}")
                proc.log_path.unlink(missing_ok=True)
                record = outcome.record
                if record is None and n <= suite.max_retries:
                    progress.note(f"{outcome.died} ({unit.unit_id}); retrying ({n}/{suite.max_retries})")
                    pending.insert(0, unit)
                    continue
                if record is None:
                    record = failure_record(unit, f"{outcome.died} (after {n} attempts)", proc.gpu, "process")
                record.setdefault("attempts", n)
                write_once(store, unit.kind, record, progress)
                progress.finished(record)
    finally:
        for proc, _ in running:
            proc.kill()
