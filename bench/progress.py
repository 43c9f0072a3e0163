"""A plain-text progress line with rate and ETA for long steps (e.g. thousands of Inception passes).

One line per call of `log`, no threads and no terminal control codes: the output goes to log files.
"""
from __future__ import annotations

import time
from typing import Callable

_SHORT_UNITS = {"images": "img"}  # the unit's name in the rate ("img/s"); others are used as given


def format_duration(seconds: float) -> str:
    """'N s' under a minute, 'M min S s' under an hour, else 'H h M min' (whole seconds, rounded)."""
    s = max(0, int(round(seconds)))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60} s"
    return f"{s // 3600} h {s % 3600 // 60} min"


class Progress:
    """Counts work units of a long step and prints done/total, rate and ETA at most every `every` seconds.

    The rate is the mean since construction (done / elapsed), the ETA the remaining units at that
    rate. `update` logs when `every` seconds have passed since the last logged line (or since the
    start), and always once when done reaches total; that last line gives the time taken instead of
    an ETA. `clock` is injectable (seconds, monotonic) so tests can drive time.
    """

    def __init__(self, total: int, label: str, log: Callable[[str], object] = print, every: float = 10.0,
                 clock: Callable[[], float] = time.monotonic, *, unit: str = "images"):
        if total < 0:
            raise ValueError(f"Progress total must be >= 0, got {total}")
        if every < 0:
            raise ValueError(f"Progress every must be >= 0 seconds, got {every}")
        self.total, self.label, self.log, self.every, self.clock, self.unit = int(total), label, log, every, clock, unit
        self.done = 0
        self.start = self._last = clock()
        self._finished = False  # the completion line has been logged

    def update(self, n: int = 1) -> None:
        """Adds n units; logs when `every` seconds passed since the last line, and always at completion."""
        self.done += n
        now = self.clock()
        if self.done >= self.total and not self._finished:
            self._finished = True
        elif now - self._last < self.every:
            return
        self._last = now
        self.log(self.line(now))

    def rate(self, now: float | None = None) -> float | None:
        """Units per second since the start; None while nothing is done or no time has passed."""
        elapsed = (self.clock() if now is None else now) - self.start
        return self.done / elapsed if self.done > 0 and elapsed > 0 else None

    def eta(self, now: float | None = None) -> float | None:
        """Seconds left at the mean rate; 0 when done, None while the rate is unknown."""
        if self.done >= self.total:
            return 0.0
        r = self.rate(now)
        return (self.total - self.done) / r if r else None

    def line(self, now: float | None = None) -> str:
        """e.g. '[dino] evaluate: 1200/2100 images (57%), 10.9 img/s, ETA 1 min 23 s'."""
        now = self.clock() if now is None else now
        # Floored, so the line never says 100% before the step is done; an empty step is complete.
        pct = 100 * self.done // self.total if self.total else 100
        r = self.rate(now)
        per = _SHORT_UNITS.get(self.unit, self.unit)
        speed = f"? {per}/s" if r is None else f"{r:.1f} {per}/s" if r >= 1 else f"{r:.2g} {per}/s"
        if self.done >= self.total:
            tail = f"done in {format_duration(now - self.start)}"
        else:
            left = self.eta(now)
            tail = "ETA ?" if left is None else f"ETA {format_duration(left)}"
        return f"{self.label}: {self.done}/{self.total} {self.unit} ({pct}%), {speed}, {tail}"
