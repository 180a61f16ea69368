"""Progress on stderr: a live bar on a terminal, plain lines otherwise.

Live:  [########....................] 12/40 ok 10 running 2 failed 1 skipped 1 | 3m05s eta 7m10s
Plain: one line per finished trial with the counts and the ETA, plus a status line every
       `heartbeat_s` seconds while nothing finishes (long trials in CI logs).

The ETA weighs units by the work they are: with `expect()` (each unit's expected seconds,
bench/cost.py; bench/plan.py gives them), the seconds expected of the units left, each kind's
(trials, sessions) scaled by how long that kind's units took here against their expectation (the
wall time between two finishes goes to the kind that finished; a kind none of which has run yet
takes the scale of all that ran). Without it, the rate of units that really ran (skipped ones
land instantly and would make it optimistic) times the units left. Executors report how many
units are running with `started()` / `set_running()`.
"""
from __future__ import annotations

import sys
import time


def _hms(seconds: float) -> str:
    s = int(round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


class Progress:
    def __init__(self, total: int, stream=None, live: bool | None = None, heartbeat_s: float = 60.0):
        self.total = total
        self.stream = stream or sys.stderr
        if live is None:
            try:
                live = self.stream.isatty()
            except (AttributeError, ValueError):
                live = False
        self.live = live
        self.counts = {"ok": 0, "failed": 0, "diverged": 0, "skipped": 0}
        self.running = 0
        self.t0 = time.monotonic()
        self.heartbeat_s = heartbeat_s
        self._last_line = self.t0
        self._last_draw = 0.0
        self._ran = 0  # finished trials that were not skipped before running
        self._expected: dict[str, tuple[str, float]] = {}  # unit_id -> (kind, expected seconds): expect()
        self._finished_ids: set[str] = set()
        self._took: dict[str, list[float]] = {}  # kind -> [wall seconds, expected seconds] of its units that ran
        self._last_finish = self.t0

    @property
    def done(self) -> int:
        return sum(self.counts.values())

    # -- events from executors ---------------------------------------------------
    def add(self, n: int) -> None:
        """More units to run than planned (adaptive repeats)."""
        self.total += n
        self._refresh(force=True)

    def expect(self, kind: str, expected_s: dict[str, float]) -> None:
        """The expected seconds of units of `kind` (unit_id -> seconds); later calls refine them."""
        self._expected.update({uid: (kind, float(v)) for uid, v in expected_s.items()})

    def started(self, n: int = 1) -> None:
        self.running += n
        self._refresh()

    def set_running(self, n: int) -> None:
        """How many trials are running right now (executors that learn it asynchronously)."""
        changed = n != self.running
        self.running = n
        self._refresh(force=changed)

    def finished(self, record: dict, was_running: bool = True) -> None:
        status = record.get("status", "failed")
        self.counts[status] = self.counts.get(status, 0) + 1
        if was_running:
            self.running = max(0, self.running - 1)
        unit_id = record.get("trial_id") or record.get("session_id")
        now = time.monotonic()
        if status != "skipped" or was_running:
            self._ran += 1
            if unit_id in self._expected:
                kind, expected = self._expected[unit_id]
                took = self._took.setdefault(kind, [0.0, 0.0])
                took[0] += now - self._last_finish
                took[1] += expected
                self._last_finish = now
        self._finished_ids.add(unit_id)
        if self.live:
            self._draw()
        else:
            extra = f" ({record.get('reason')})" if status != "ok" and record.get("reason") else ""
            self._print(f"[{self.done}/{self.total}] {status} {unit_id}{extra[:160]}"
                        f"{self._tail_text()}")

    def note(self, text: str) -> None:
        if self.live:
            self.stream.write("\r\033[K")
        self._print(text)
        if self.live:
            self._draw()

    # -- derived -------------------------------------------------------------------
    def eta_s(self) -> float | None:
        """Seconds left (see the module docstring); None before the first unit that ran lands."""
        left = self.total - self.done
        if left <= 0:
            return 0.0
        if not self._ran:
            return None
        elapsed = time.monotonic() - self.t0
        if not self._took or not any(e for _, e in self._took.values()):
            return elapsed / self._ran * left
        overall = sum(w for w, _ in self._took.values()) / sum(e for _, e in self._took.values())
        scale = {kind: w / e if e else overall for kind, (w, e) in self._took.items()}
        pending = [v for uid, v in self._expected.items() if uid not in self._finished_ids]
        eta = sum(s * scale.get(kind, overall) for kind, s in pending)
        unknown = max(0, left - len(pending))  # units nobody gave an expectation: the plain rate
        return eta + unknown * elapsed / self._ran

    def _tail_text(self) -> str:
        eta = self.eta_s()
        parts = []
        if self.running:
            parts.append(f"running {self.running}")
        if eta is not None and self.done < self.total:
            parts.append(f"eta {_hms(eta)}")
        return f" [{', '.join(parts)}]" if parts else ""

    # -- output --------------------------------------------------------------------
    def _print(self, text: str) -> None:
        print(text, file=self.stream, flush=True)
        self._last_line = time.monotonic()

    def _refresh(self, force: bool = False) -> None:
        """Redraw the live bar (at most 4 times a second) or print a heartbeat line when quiet."""
        now = time.monotonic()
        if self.live:
            if force or now - self._last_draw > 0.25:
                self._draw()
        elif self.heartbeat_s and now - self._last_line > self.heartbeat_s:
            c = self.counts
            self._print(f"[{self.done}/{self.total}] {_hms(now - self.t0)} elapsed: ok {c['ok']}, running "
                        f"{self.running}, failed {c['failed'] + c['diverged']}, skipped {c['skipped']}"
                        f"{self._tail_text()}")

    def _draw(self) -> None:
        self._last_draw = time.monotonic()
        width = 28
        filled = int(width * self.done / max(1, self.total))
        eta = self.eta_s()
        c = self.counts
        line = (f"\r\033[K[{'#' * filled}{'.' * (width - filled)}] {self.done}/{self.total} "
                f"ok {c['ok']} running {self.running} failed {c['failed'] + c['diverged']} "
                f"skipped {c['skipped']} | {_hms(time.monotonic() - self.t0)}"
                + (f" eta {_hms(eta)}" if eta is not None and self.done < self.total else ""))
        self.stream.write(line)
        self.stream.flush()

    def close(self) -> None:
        if self.live:
            self.stream.write("\n")
            self.stream.flush()
