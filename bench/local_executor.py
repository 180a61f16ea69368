"""The `process` executor: one subprocess per trial on this machine, no Ray.

Slots: one per visible GPU (CUDA_VISIBLE_DEVICES set per trial) for GPU suites, otherwise
cpu_count // cpus_per_trial CPU slots; isolation "node" runs one trial at a time. A worker that
dies without writing its record (killed, segfault) is retried up to max_retries times; a trial
that raised is recorded once (the record says why). A trial past its timeout is killed and
recorded as failed.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench import env
from bench.errors import UserError
from bench.runner import node_record, now_iso, precheck
from bench.trial import result_skeleton


def slots_for(suite) -> list[str | None]:
    """GPU indices as strings, or None per CPU slot."""
    gpus, _ = env.gpus()
    if suite.device != "cpu" and gpus:
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        ids = [v for v in visible.split(",") if v.strip()] if visible is not None else [str(g["index"]) for g in gpus]
        if ids:
            return ids[:1] if suite.isolation == "node" else ids
    if suite.device == "gpu":
        raise UserError(f"suite {suite.name} asks for device: gpu but this machine has no GPU visible to NVML; "
                        "use device: cpu or a machine with a GPU")
    if suite.isolation == "node":
        return [None]
    return [None] * max(1, (os.cpu_count() or 1) // suite.cpus_per_trial)


def failure_record(trial, reason: str, gpu: bool, executor: str = "process") -> dict:
    record = result_skeleton(trial, "failed", reason, node_record(trial.backend, executor, gpu, trial.cpu_threads))
    record.update(started_at=now_iso(), finished_at=now_iso())
    return record


class _Running:
    def __init__(self, trial, slot, attempt, workdir: Path):
        self.trial, self.slot, self.attempt = trial, slot, attempt
        self.trial_file = workdir / f"{trial.trial_id}.trial.json"
        self.out_file = workdir / f"{trial.trial_id}.out.{attempt}.json"
        self.log_file = workdir / f"{trial.trial_id}.log"
        self.trial_file.write_text(json.dumps(trial.to_dict()))
        envv = dict(os.environ)
        envv.pop("KERAS_BACKEND", None)
        args = [sys.executable, "-m", "bench.worker", str(self.trial_file), str(self.out_file)]
        if slot is None:
            envv["CUDA_VISIBLE_DEVICES"] = ""
            args.append("--cpu")
        else:
            envv["CUDA_VISIBLE_DEVICES"] = slot
            args.append("--gpu")
        self.log = open(self.log_file, "ab")
        self.proc = subprocess.Popen(args, env=envv, stdout=self.log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        self.deadline = time.monotonic() + trial.timeout_s

    def kill(self) -> None:
        try:
            os.killpg(self.proc.pid, 9)
        except ProcessLookupError:
            pass
        self.proc.wait()
        self.log.close()

    def tail(self) -> str:
        try:
            lines = self.log_file.read_text(errors="replace").strip().splitlines()
        except OSError:
            return ""
        return lines[-1][-200:] if lines else ""


def run_local(trials, store, suite, progress) -> None:
    slots = slots_for(suite)
    free = list(slots)
    pending = list(trials)
    running: list[_Running] = []
    attempts: dict[str, int] = {}
    with tempfile.TemporaryDirectory(prefix="regbench-work-") as tmp:
        workdir = Path(tmp)
        try:
            while pending or running:
                while pending and free:
                    trial = pending.pop(0)
                    slot = free[0]
                    skipped = precheck(trial, "process", gpu=slot is not None)
                    if skipped:
                        store.write_trial(skipped)
                        progress.finished(skipped, was_running=False)
                        continue
                    free.pop(0)
                    attempts[trial.trial_id] = attempts.get(trial.trial_id, 0) + 1
                    running.append(_Running(trial, slot, attempts[trial.trial_id], workdir))
                    progress.started()
                time.sleep(0.05)
                for r in list(running):
                    code = r.proc.poll()
                    timed_out = code is None and time.monotonic() > r.deadline
                    if code is None and not timed_out:
                        continue
                    if timed_out:
                        r.kill()
                    else:
                        r.log.close()
                    running.remove(r)
                    free.append(r.slot)
                    if r.out_file.exists():
                        record = json.loads(r.out_file.read_text())
                    elif timed_out:
                        record = failure_record(r.trial, f"timeout: killed after {r.trial.timeout_s:g} s",
                                                r.slot is not None)
                    elif attempts[r.trial.trial_id] <= suite.max_retries:
                        progress.note(f"worker for {r.trial.trial_id} exited with code {code} "
                                      f"without a result; retrying ({attempts[r.trial.trial_id]}/{suite.max_retries})")
                        pending.insert(0, r.trial)
                        progress.set_running(len(running))
                        continue
                    else:
                        record = failure_record(
                            r.trial, f"worker process exited with code {code} without a result after "
                                     f"{attempts[r.trial.trial_id]} attempts; last output: {r.tail()}",
                            r.slot is not None)
                    record.setdefault("attempts", attempts[r.trial.trial_id])
                    store.write_trial(record)
                    progress.finished(record)
        finally:
            for r in running:
                r.kill()
