"""Progress lines in the log at a fixed interval, with or without a progress bar.

A long job run with ``--no-progress`` (or with its output sent to a file, where a tqdm bar is
one line rewritten in place) must still say that it is alive and how far it got. A
:class:`Heartbeat` logs one INFO line every ``interval`` seconds of wall time: items done of
the total, the rate, the estimated time left, and any counters the caller adds.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable


class Heartbeat:
    """Log ``done/total`` every ``interval`` seconds (never more often) on ``logger``."""

    def __init__(
        self,
        logger: logging.Logger,
        what: str,
        total: int,
        interval: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.log = logger
        self.what = what
        self.total = total
        self.interval = interval  # <= 0: never log
        self._clock = clock
        self._start = clock()
        self._last = self._start

    def update(self, done: int, **counters: int) -> bool:
        """Log a progress line if ``interval`` seconds passed since the last one; True if so."""
        now = self._clock()
        if self.interval <= 0 or now - self._last < self.interval:
            return False
        self._last = now
        elapsed = max(now - self._start, 1e-9)
        rate = done / elapsed
        left = (self.total - done) / rate if rate > 0 else float("inf")
        extra = "".join(f", {v:,} {k}" for k, v in counters.items())
        self.log.info(
            "%s: %d/%d done%s, %.2f/s, %s elapsed, about %s left",
            self.what, done, self.total, extra, rate, _hms(elapsed), _hms(left),
        )  # fmt: skip
        return True


def _hms(seconds: float) -> str:
    """``1h02m03s`` / ``4m05s`` / ``6s``; ``?`` for an unknown (infinite) duration."""
    if seconds != seconds or seconds == float("inf"):
        return "?"
    s = int(round(seconds))
    h, rest = divmod(s, 3600)
    m, sec = divmod(rest, 60)
    if h:
        return f"{h}h{m:02d}m{sec:02d}s"
    return f"{m}m{sec:02d}s" if m else f"{sec}s"
