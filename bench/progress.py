"""Progress on stderr: a live line on a terminal, plain lines otherwise."""
from __future__ import annotations

import sys
import time


class Progress:
    def __init__(self, total: int, stream=None, live: bool | None = None):
        self.total = total
        self.stream = stream or sys.stderr
        self.live = self.stream.isatty() if live is None else live
        self.counts = {"ok": 0, "failed": 0, "diverged": 0, "skipped": 0}
        self.running = 0
        self.t0 = time.monotonic()
        self.done_s = []

    @property
    def done(self) -> int:
        return sum(self.counts.values())

    def started(self, n: int = 1) -> None:
        self.running += n
        if self.live:
            self._draw()

    def finished(self, record: dict, was_running: bool = True) -> None:
        self.counts[record.get("status", "failed")] = self.counts.get(record.get("status", "failed"), 0) + 1
        if was_running:
            self.running = max(0, self.running - 1)
        if self.live:
            self._draw()
        else:
            extra = f" ({record.get('reason')})" if record.get("status") != "ok" and record.get("reason") else ""
            print(f"[{self.done}/{self.total}] {record.get('status')} {record.get('trial_id')}{extra[:160]}",
                  file=self.stream, flush=True)

    def note(self, text: str) -> None:
        if self.live:
            self.stream.write("\r\033[K")
        print(text, file=self.stream, flush=True)

    def eta_s(self) -> float | None:
        if not self.done:
            return None
        elapsed = time.monotonic() - self.t0
        return elapsed / self.done * (self.total - self.done)

    def _draw(self) -> None:
        width = 28
        filled = int(width * self.done / max(1, self.total))
        eta = self.eta_s()
        c = self.counts
        line = (f"\r\033[K[{'#' * filled}{'.' * (width - filled)}] {self.done}/{self.total} "
                f"ok {c['ok']} running {self.running} failed {c['failed'] + c['diverged']} "
                f"skipped {c['skipped']}" + (f" eta {eta:.0f}s" if eta is not None else ""))
        self.stream.write(line)
        self.stream.flush()

    def close(self) -> None:
        if self.live:
            self.stream.write("\n")
            self.stream.flush()
