"""SIGINT and SIGTERM stop a run the same way: as an exception the driver unwinds through.

SIGTERM is what a cluster's scheduler, `ray stop` or `kill` sends. Left at its default it ends
the driver on the spot: no `finally` runs, so the manifest stays "running", trial processes and
scratch files are left behind and no resume hint is printed. Inside `stop_on_signals()` it raises
`Terminated` (a KeyboardInterrupt, so every handler of Ctrl-C handles it too) once; a second
SIGTERM while the driver cleans up is noted, not raised again. Either signal also sets a flag
that loops waiting inside foreign C code (Ray's) poll with `raise_if_stopped()`, so a stop that
lands while such code swallows the exception still ends the run. Code that installs C-level
handlers behind Python's back (ray.init) is followed by `reassert()`.
"""
from __future__ import annotations

import contextlib
import signal
import threading


class Terminated(KeyboardInterrupt):
    """SIGTERM: stop the run like Ctrl-C (exit 143 instead of 130)."""


_STOPPED: list = []  # the exception class of each stop signal seen, in order
_OURS: set = set()  # the signals whose handler stop_on_signals() installed
_SEEN = threading.Event()


def terminated(stop: BaseException) -> bool:
    """Whether the interrupt `stop` came from SIGTERM (also when code it passed through, such as
    Ray's waits, turned our Terminated into a plain KeyboardInterrupt)."""
    return isinstance(stop, Terminated) or Terminated in _STOPPED


def exit_code(stop: BaseException) -> int:
    """The shell's code for a process stopped by the signal: 128 + its number."""
    return 128 + (signal.SIGTERM if terminated(stop) else signal.SIGINT)


def raise_if_stopped() -> None:
    """Raise the stop a signal asked for (for loops that wait in C code that may swallow it)."""
    if _SEEN.is_set():
        raise _STOPPED[0]


def reassert() -> None:
    """Put our handlers back where other code replaced them: ray.init() sets a SIGTERM handler
    that calls sys.exit(15) in the driver, and its core worker one in C that prints "SIGTERM
    received"; either skips the run's cleanup."""
    if threading.current_thread() is not threading.main_thread():
        return
    for signum, ours in ((signal.SIGINT, _on_sigint), (signal.SIGTERM, _on_sigterm)):
        if signum in _OURS:
            signal.signal(signum, ours)


def _on_sigint(signum, frame):
    _STOPPED.append(KeyboardInterrupt)
    _SEEN.set()
    raise KeyboardInterrupt


def _on_sigterm(signum, frame):
    first = Terminated not in _STOPPED
    _STOPPED.append(Terminated)
    _SEEN.set()
    if first:
        raise Terminated


@contextlib.contextmanager
def stop_on_signals():
    """Within: SIGINT raises KeyboardInterrupt (every time), SIGTERM raises Terminated (once).
    Only in the main thread; a signal that was ignored (a background job's SIGINT) stays ignored."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    handlers = {signal.SIGINT: (_on_sigint, signal.default_int_handler), signal.SIGTERM: (_on_sigterm, signal.SIG_DFL)}
    before = {}
    for signum, (ours, default) in handlers.items():
        if signal.getsignal(signum) is default:
            before[signum] = signal.signal(signum, ours)
    if before:  # not already inside an outer stop_on_signals()
        _STOPPED.clear()
        _SEEN.clear()
        _OURS.update(before)
    try:
        yield
    finally:
        for signum, old in before.items():
            signal.signal(signum, old)
            _OURS.discard(signum)
