"""The zygote: a process that has imported the framework and regbench, never runs an op, and
forks one fresh trial process per request.

Importing TensorFlow and Keras costs ~5 s per process on a 2-core VM; a child forked from a
zygote starts in milliseconds with a clean framework state: the zygote never sets a dtype policy,
never builds a model, never creates the TensorFlow eager context, never initialises a JAX
backend or CUDA (torch is told to answer `cuda.is_available()` through NVML, which does not
initialise CUDA). `serve` checks that this holds after the imports and refuses to serve when it
does not; the client then falls back to a plain interpreter and says so in the trial record.

Protocol (JSON lines): the client writes requests {"id", "argv", "env", "cwd", "log"} to the
zygote's stdin; the zygote answers {"event": "ready"|"started"|"exited", ...} on stdout.
A forked child calls os.setsid() (its own process group, so a timeout kills everything it
started), dies with the zygote (PR_SET_PDEATHSIG), takes the request's environment, working
directory and log file, then runs `bench.executors.child.main`. The zygote dies with its client.

    python -m bench.executors.zygote BACKEND
"""
from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time
import warnings


def untouched_reason(backend: str) -> str | None:
    """None when the framework has not initialised a device or a runtime, else why not."""
    import keras

    if keras.config.dtype_policy().name != "float32":
        return f"dtype policy is {keras.config.dtype_policy().name} after import"
    if backend == "tensorflow":
        from tensorflow.python.eager import context

        if context.context()._initialized:
            return "the TensorFlow eager context was initialised during import"
    elif backend == "jax":
        from jax._src import xla_bridge

        if xla_bridge.backends_are_initialized():
            return "a JAX backend was initialised during import"
    elif backend == "torch":
        import torch

        if torch.cuda.is_initialized():
            return "CUDA was initialised by torch during import"
    return None


def _emit(event: dict) -> None:
    os.write(1, (json.dumps(event) + "\n").encode())


def _fork(request: dict) -> int:
    with warnings.catch_warnings():  # Python 3.12+: fork with other threads alive; see untouched_reason
        warnings.simplefilter("ignore", DeprecationWarning)
        pid = os.fork()
    if pid:
        return pid
    code = 70
    try:
        os.setsid()
        log = os.open(request["log"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.dup2(log, 1)
        os.dup2(log, 2)
        os.close(log)
        os.close(null)
        os.environ.clear()
        os.environ.update(request["env"])
        os.chdir(request["cwd"])
        from bench.executors import child

        code = child.main(request["argv"], start_method="zygote")
    except BaseException:  # noqa: BLE001 - report anything, then exit without the zygote's teardown
        import traceback

        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def serve(backend: str) -> int:
    from bench.executors import child

    child.die_with_parent()
    t = time.perf_counter()
    try:
        child.preload(backend)
        reason = untouched_reason(backend)
    except Exception as e:  # noqa: BLE001 - reported to the client, which falls back
        reason = f"preload failed: {type(e).__name__}: {e}"[:300]
    _emit({"event": "ready", "pid": os.getpid(), "preload_s": round(time.perf_counter() - t, 3),
           "untrusted": reason, "native_threads": len(os.listdir("/proc/self/task"))})
    if reason:
        return 3
    children: set[int] = set()
    buf = b""
    try:
        while True:
            ready, _, _ = select.select([0], [], [], 0.02)
            if ready:
                chunk = os.read(0, 65536)
                if not chunk:
                    break  # the client closed our stdin: it is done, or gone
                buf += chunk
                while b"\n" in buf:
                    line, buf = buf.split(b"\n", 1)
                    request = json.loads(line)
                    pid = _fork(request)
                    children.add(pid)
                    _emit({"event": "started", "id": request["id"], "pid": pid})
            while children:
                pid, status = os.waitpid(-1, os.WNOHANG)
                if pid == 0:
                    break
                children.discard(pid)
                _emit({"event": "exited", "pid": pid, "code": os.waitstatus_to_exitcode(status)})
    finally:
        for pid in children:
            try:
                os.killpg(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    return 0


LOST_EXIT_CODE = -9  # a child of a zygote that was killed: it died of PR_SET_PDEATHSIG's SIGKILL


def _pid_exists(pid: int) -> bool:
    """Is `pid` running? A zombie is not (a container's PID 1 may never reap an orphan)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except (OSError, IndexError):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True


class ZygoteUnavailable(Exception):
    """The zygote could not start or cannot be trusted; the message says why."""


class Zygote:
    """Client side: start a zygote for one backend and fork trial processes from it."""

    def __init__(self, backend: str, env: dict, cwd: str, log_path: str, ready_timeout_s: float = 300.0):
        self.backend = backend
        self._log = open(log_path, "ab")
        self.proc = subprocess.Popen([sys.executable, "-m", "bench.executors.zygote", backend],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log,
                                     env=env, cwd=cwd, start_new_session=True)
        self._buf = b""
        self._closed = False  # its stdout reached EOF: the zygote is gone
        self._exits: dict[int, int] = {}
        self._started: dict[int, int] = {}
        self._next_id = 0
        ready = self._wait_for(lambda e: e["event"] == "ready", ready_timeout_s)
        if ready is None:
            self.close()
            raise ZygoteUnavailable(f"the {backend} zygote did not start within {ready_timeout_s:g} s "
                                    f"(exit code {self.proc.poll()}; see {log_path})")
        if ready.get("untrusted"):
            self.close()
            raise ZygoteUnavailable(f"the {backend} zygote cannot be trusted: {ready['untrusted']}")
        self.pid = ready["pid"]
        self.preload_s = ready["preload_s"]

    # -- events ---------------------------------------------------------------------------
    def _read_events(self, timeout: float) -> list[dict]:
        if self._closed:
            raise ZygoteUnavailable(f"the {self.backend} zygote exited (code {self.proc.wait()})")
        fd = self.proc.stdout.fileno()
        ready, _, _ = select.select([fd], [], [], max(0.0, timeout))
        if not ready:
            return []
        chunk = os.read(fd, 65536)
        if not chunk:
            self._closed = True
            raise ZygoteUnavailable(f"the {self.backend} zygote exited (code {self.proc.wait()})")
        self._buf += chunk
        events = []
        while b"\n" in self._buf:
            line, self._buf = self._buf.split(b"\n", 1)
            event = json.loads(line)
            if event["event"] == "exited":
                self._exits[event["pid"]] = event["code"]
            elif event["event"] == "started":
                self._started[event["id"]] = event["pid"]
            events.append(event)
        return events

    def _wait_for(self, match, timeout_s: float) -> dict | None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                for event in self._read_events(deadline - time.monotonic()):
                    if match(event):
                        return event
            except ZygoteUnavailable:
                return None
        return None

    def pump(self, timeout_s: float = 0.0) -> None:
        """Read whatever events arrived (waiting up to timeout_s for the first). A zygote that is
        gone (killed, crashed) is not an error here: its children died with it (PR_SET_PDEATHSIG),
        and `exit_code` says so."""
        if self._closed:
            time.sleep(min(timeout_s, 0.05))
            return
        try:
            self._read_events(timeout_s)
        except ZygoteUnavailable:
            pass

    # -- requests ---------------------------------------------------------------------------
    def fork(self, argv: list[str], env: dict, cwd: str, log_path: str) -> int:
        """Fork one trial process; returns its pid."""
        self._next_id += 1
        rid = self._next_id
        request = {"id": rid, "argv": argv, "env": env, "cwd": cwd, "log": log_path}
        try:
            self.proc.stdin.write((json.dumps(request) + "\n").encode())
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError) as e:
            raise ZygoteUnavailable(f"the {self.backend} zygote is gone ({e})") from None
        while rid not in self._started:
            self._read_events(30.0)
        return self._started.pop(rid)

    def exit_code(self, pid: int) -> int | None:
        """The child's exit code; LOST_EXIT_CODE once the zygote is gone and the child with it
        (reparented, so no exit code reaches us); None while it runs."""
        if pid in self._exits:
            return self._exits[pid]
        if self._closed and not _pid_exists(pid):
            return LOST_EXIT_CODE
        return None

    def alive(self) -> bool:
        return not self._closed and self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL the zygote (its children die with it)."""
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self._closed = True

    def close(self) -> None:
        try:
            if self.proc.stdin:
                self.proc.stdin.close()
        except OSError:
            pass
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._log.close()


if __name__ == "__main__":
    sys.exit(serve(sys.argv[1]))
