"""One trial process, the same for both executors: its environment, how it starts (a fork of a
pre-imported zygote, or a plain fresh interpreter), its timeout, its kill, its record. A trial
process is the fresh process that runs one unit of work (bench/units: a trial or a paired session).

    launcher = Launcher(workdir, executor="process")
    proc = launcher.launch(trial, gpu_tokens=None)       # a CPU trial
    ...proc.poll() / proc.wait(timeout_s) / proc.kill()...
    outcome = collect(proc, "process")                   # record, or why there is none

Start methods (`REGBENCH_TRIAL_START` or `regbench run --trial-start`):
- "zygote" (default): a child forked from a zygote of the trial's backend (zygote.py). It starts
  in milliseconds instead of the ~5 s of `import tensorflow, keras`, with a framework that has
  run nothing. If the zygote cannot start or cannot be trusted, the trial runs in a fresh
  interpreter instead and its record says why (`process.start_note`).
- "interpreter": `python -m bench.executors.child`, a new interpreter per trial.
Either way the record's `process.start_method` says which one ran.
"""
from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import signal
import subprocess
import sys
import time

from bench import backends, env
from bench.trial import now_iso

START_METHODS = ("zygote", "interpreter")
START_ENV = "REGBENCH_TRIAL_START"
LOG_TAIL_BYTES = 64 * 1024  # of each attempt's output, kept in the run's logs/
OOM_SIGNS = ("MemoryError", "std::bad_alloc", "out of memory", "Cannot allocate memory", "RESOURCE_EXHAUSTED",
             "failed to map segment")  # in the last lines of a trial process that died without a record
PKG_ROOT = str(pathlib.Path(__file__).resolve().parents[2])  # the checkout/site holding `bench`


def default_start_method() -> str:
    method = os.environ.get(START_ENV, "zygote").strip() or "zygote"
    if method not in START_METHODS:
        raise ValueError(f"{START_ENV}={method!r}: expected one of {', '.join(START_METHODS)}")
    return method


def trial_environment(backend: str, cpu_threads: int | None, gpu_tokens: list[str] | None,
                      base: dict | None = None) -> dict:
    """The environment of a trial process (identical under both executors and start methods).

    gpu_tokens: the GPUs the trial may use (CUDA_VISIBLE_DEVICES tokens: indices in PCI bus
    order, or UUIDs); None for a CPU trial. Indices are turned into UUIDs when NVML knows them,
    so CUDA, the framework and NVML name the same device whatever their numbering.
    """
    out = dict(os.environ if base is None else base)
    gpu = gpu_tokens is not None
    for var, value in backends.process_environment(backend, cpu_threads, gpu=gpu).items():
        if value is None:
            out.pop(var, None)
        else:
            out[var] = value
    if gpu:
        gpus = env.fingerprint()["gpus"]
        resolved = [env.resolve_gpu(t, gpus) for t in gpu_tokens]
        out["CUDA_VISIBLE_DEVICES"] = ",".join(
            (r["mig_uuid"] or r["uuid"]) if r else t for r, t in zip(resolved, gpu_tokens))
    out["PYTHONPATH"] = os.pathsep.join(p for p in (PKG_ROOT, out.get("PYTHONPATH")) if p)
    return out


def failure_record(unit, reason: str, gpu: bool, executor: str) -> dict:
    """A `failed` record written by the executor (the trial process left none: timeout, crash)."""
    from bench.runner import node_record

    record = unit.skeleton("failed", reason, node_record(executor, gpu, unit.cpu_threads))
    record.update(started_at=now_iso(), finished_at=now_iso())
    return record


@dataclasses.dataclass
class TrialProcess:
    """A running trial process, which runs one unit of work (bench/units: a trial or a paired
    session). `poll()` / `wait()` give its exit code (None while running)."""

    unit: object
    pid: int
    start_method: str
    out_path: pathlib.Path
    log_path: pathlib.Path
    deadline: float  # time.monotonic() after which the trial is killed
    gpu: bool
    _popen: subprocess.Popen | None = None
    _zygote: object | None = None
    timed_out: bool = False

    def poll(self) -> int | None:
        if self._popen is not None:
            return self._popen.poll()
        self._zygote.pump(0.0)
        return self._zygote.exit_code(self.pid)

    def wait(self, timeout_s: float) -> int | None:
        """Exit code, or None if still running after timeout_s."""
        end = time.monotonic() + timeout_s
        while True:
            code = self.poll()
            if code is not None or time.monotonic() >= end:
                return code
            if self._popen is not None:
                try:
                    return self._popen.wait(timeout=max(0.0, end - time.monotonic()))
                except subprocess.TimeoutExpired:
                    return None
            self._zygote.pump(min(0.5, max(0.0, end - time.monotonic())))

    def kill(self) -> None:
        """SIGKILL the trial's whole process group and wait for it."""
        try:
            os.killpg(self.pid, signal.SIGKILL)
        except ProcessLookupError:  # a zygote child killed before its os.setsid(): no group yet
            try:
                os.kill(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if self._popen is not None:
            self._popen.wait()
        else:
            end = time.monotonic() + 10
            while self._zygote.exit_code(self.pid) is None and time.monotonic() < end and self._zygote.alive():
                self._zygote.pump(0.2)

    def log_tail(self, lines: int = 3) -> str:
        try:
            text = self.log_path.read_text(errors="replace").strip().splitlines()
        except OSError:
            return ""
        return " | ".join(line[-200:] for line in text[-lines:])


class Launcher:
    """Starts trial processes for one executor process: one zygote per backend, made on first use.

    workdir: a private folder for requests, records and logs of the attempts."""

    def __init__(self, workdir: pathlib.Path, executor: str, start_method: str | None = None,
                 extra_env: dict | None = None):
        self.workdir = pathlib.Path(workdir)
        self.executor = executor
        self.start_method = start_method or default_start_method()
        self.extra_env = dict(extra_env or {})
        self._zygotes: dict = {}  # (backend, "cpu" | "gpu") -> Zygote
        self._unavailable: dict[tuple, str] = {}  # (backend, kind) -> why its zygote is not used
        self._lost: dict[tuple, str] = {}  # (backend, kind) -> the last lost zygote, noted once

    def _zygote(self, backend: str, gpu_tokens: list[str] | None):
        """The zygote for this backend and device kind, started on first use (None: not used, see
        `_unavailable`). A GPU unit's zygote imports the framework with the GPU environment: JAX
        freezes JAX_PLATFORMS at import and Keras's torch backend its default device, so a child of
        a CPU zygote could never use a GPU. A zygote found dead is replaced once per launch."""
        from bench.executors.zygote import Zygote, ZygoteUnavailable

        key = (backend, "cpu" if gpu_tokens is None else "gpu")
        z = self._zygotes.get(key)
        if z is not None and z.alive():
            return z
        if z is not None:  # killed or crashed: its children died with it; start another
            self._zygotes.pop(key)
            self._lost[key] = f"zygote pid {z.pid} was lost (exit code {z.proc.poll()}); a new one was started"
            z.close()
        if key in self._unavailable:
            return None
        base = trial_environment(backend, None, gpu_tokens)
        base.update(self.extra_env)
        try:
            z = Zygote(backend, base, str(self.workdir), str(self.workdir / f"zygote-{backend}-{key[1]}.log"))
        except ZygoteUnavailable as e:
            self._unavailable[key] = str(e)
            return None
        self._zygotes[key] = z
        return z

    def zygotes(self) -> list[tuple[tuple[str, str], int]]:
        """[((backend, device kind), pid)] of the live zygotes."""
        return [(key, z.pid) for key, z in self._zygotes.items() if z.alive()]

    def launch(self, unit, gpu_tokens: list[str] | None, attempt: int = 1) -> TrialProcess:
        """Start one attempt of `unit` (bench/units; on a GPU when gpu_tokens is a list)."""
        from bench.executors.zygote import ZygoteUnavailable

        stem = f"{unit.unit_id}.{attempt}"
        request_path = self.workdir / f"{stem}.request.json"
        out_path = self.workdir / f"{stem}.record.json"
        log_path = self.workdir / f"{unit.unit_id}.log"
        gpu = gpu_tokens is not None
        child_env = trial_environment(unit.backend, unit.cpu_threads, gpu_tokens)
        child_env.update(self.extra_env)
        key = (unit.backend, "gpu" if gpu else "cpu")
        request = {"kind": unit.kind, "unit": unit.to_dict(), "executor": self.executor, "gpu": gpu,
                   "pin_cores": unit.cpu_threads if not gpu or unit.device == "gpu" else None,
                   "core_lock_dir": self.extra_env.get("REGBENCH_CORE_LOCK_DIR"),
                   "launched_unix": time.time(), "start_note": None, "parent_pid": None,
                   "zygote_device_kind": None}
        argv = [str(request_path), str(out_path)]
        deadline = time.monotonic() + unit.timeout_s  # the trial's own time: a zygote's start is not counted
        for _ in range(2 if self.start_method == "zygote" else 0):  # a zygote lost between launches: once more
            zygote = self._zygote(unit.backend, gpu_tokens)
            if zygote is None:
                request["start_note"] = self._unavailable.get(key)
                break
            request.update(parent_pid=zygote.pid, zygote_device_kind=key[1], start_note=self._lost.pop(key, None))
            request_path.write_text(json.dumps(request))
            try:
                pid = zygote.fork(argv, child_env, str(self.workdir), str(log_path))
                return TrialProcess(unit, pid, "zygote", out_path, log_path, deadline, gpu, _zygote=zygote)
            except ZygoteUnavailable as e:
                request["start_note"] = str(e)
                zygote.kill()  # the next turn starts a fresh one
        request["zygote_device_kind"] = None
        request["parent_pid"] = os.getpid()
        request_path.write_text(json.dumps(request))
        with open(log_path, "ab") as log:
            popen = subprocess.Popen([sys.executable, "-m", "bench.executors.child", *argv], env=child_env,
                                     stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     cwd=str(self.workdir), start_new_session=True)
        return TrialProcess(unit, popen.pid, "interpreter", out_path, log_path, deadline, gpu, _popen=popen)

    def close(self) -> None:
        for z in self._zygotes.values():
            z.close()
        self._zygotes.clear()


def read_log_tail(path: pathlib.Path, limit: int = LOG_TAIL_BYTES) -> str:
    """The last `limit` bytes of a trial process's output ('' when there is none)."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - limit))
            return f.read().decode(errors="replace")
    except OSError:
        return ""


@dataclasses.dataclass
class Outcome:
    """What a finished attempt left: a record, or `died` with why (retry it)."""

    record: dict | None
    died: str | None = None


def collect(proc: TrialProcess, executor: str) -> Outcome:
    """The attempt's record; a failure record for a timeout; `died` when the process left none."""
    if proc.out_path.exists():
        return Outcome(json.loads(proc.out_path.read_text()))
    if proc.timed_out:
        return Outcome(failure_record(proc.unit, f"timeout: killed after {proc.unit.timeout_s:g} s",
                                      proc.gpu, executor))
    code, tail = proc.poll(), proc.log_tail()
    oom = "OOM: " if any(s in tail for s in OOM_SIGNS) else ""
    return Outcome(None, died=f"{oom}trial process exited with code {code} without a result; last output: {tail}")


def wait_and_collect(proc: TrialProcess, executor: str) -> Outcome:
    """Block until the attempt ends, or kill it at its deadline; then collect it (the Ray task's way)."""
    if proc.wait(max(0.0, proc.deadline - time.monotonic())) is None:
        proc.timed_out = True
        proc.kill()
    return collect(proc, executor)
