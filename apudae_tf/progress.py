"""Progress of long work as lines (stderr not a terminal: a log file, CI, a batch job, a Python caller's
``echo``), with the interface of click's progress bar (``update(k)``, ``pos``, a context manager), so the
engine that runs attacks takes either."""

from __future__ import annotations

import sys
import threading
import time


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


class LogProgress:
    """A line at the start, then one every 10 % of the work or every ``every`` seconds, whichever comes first,
    and one at the end, each through ``echo`` (default: stderr)."""

    def __init__(self, length, label, every: float = 30.0, echo=None):
        self.length, self.label, self.every, self.pos = length, label, every, 0
        self.echo = echo or _stderr
        self.clock = time.monotonic
        self.start = self.last = self.clock()
        self.shown = 0
        self._stop = threading.Event()
        # a batch can take minutes with no update: a heartbeat says the work goes on
        self._beat = threading.Thread(target=self._heartbeat, daemon=True)

    def _heartbeat(self):
        while not self._stop.wait(self.every / 3):
            now = self.clock()
            if now - self.last >= self.every:
                self._line(now)

    def __enter__(self):
        self.echo(f"{self.label}: 0/{self.length}")
        self._beat.start()
        return self

    def update(self, k):
        self.pos += k
        now = self.clock()
        step = max(1, self.length // 10)
        if self.pos < self.length and (self.pos - self.shown >= step or now - self.last >= self.every):
            self._line(now)

    def _line(self, now):
        rate = self.pos / max(now - self.start, 1e-9)
        left = f", ~{(self.length - self.pos) / rate:.0f} s left" if rate > 0 else ""
        self.echo(f"{self.label}: {self.pos}/{self.length} ({100 * self.pos / max(self.length, 1):.0f}%, "
                  f"{now - self.start:.0f} s{left})")
        self.shown, self.last = self.pos, now

    def __exit__(self, *exc):
        self._stop.set()
        if exc[0] is None:
            self.echo(f"{self.label}: {self.pos}/{self.length} done in {self.clock() - self.start:.0f} s")
        return False


def lines(echo, every: float = 30.0):
    """A progress-bar factory ``(length, label) -> LogProgress`` that speaks through ``echo``."""
    return lambda length, label: LogProgress(length, label, every=every, echo=echo)
