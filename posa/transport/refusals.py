"""Logging refusals without flooding the log: one line per cause per interval.

Whoever refuses input from the network (a listener, the gatekeeper) counts every
refusal in its ``rejections`` and reports it through a ``RefusalLog``: the
first refusal of a cause is logged at once, the next ones of that cause within
``interval`` seconds are only counted, and the next line of that cause says how
many there were meanwhile. A flood of bad connections therefore costs a few
log lines, not one per connection.

Nothing an attacker sent goes into a line but ``sample(data)``: at most
``SAMPLE_BYTES`` bytes, escaped (``repr``), so a line cannot carry control
characters or a large payload; ``clip(text)`` does the same for texts that may
quote peer data.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Callable

__all__ = ["RefusalLog", "sample", "clip", "INTERVAL", "SAMPLE_BYTES"]

INTERVAL = 10.0        # s: at most one line per cause this often
SAMPLE_BYTES = 16      # bytes of peer data a line may quote
_MAX_CAUSES = 256      # causes remembered; beyond, new causes are only counted
_CLIP = 200            # characters of a refusal's text in a line


def sample(data: bytes | bytearray | memoryview) -> str:
    """At most ``SAMPLE_BYTES`` of ``data``, escaped, with the full length."""
    head = bytes(data[:SAMPLE_BYTES])
    more = "..." if len(data) > SAMPLE_BYTES else ""
    return f"{head!r}{more} ({len(data)} bytes)"


def clip(text: str, limit: int = _CLIP) -> str:
    """``text`` with non-printable characters escaped, cut to ``limit`` characters."""
    if not text.isprintable() or not text.isascii():
        text = text.encode("ascii", "backslashreplace").decode("ascii")
        text = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
    return text if len(text) <= limit else text[:limit] + "..."


class RefusalLog:
    """One ``logger`` line per cause per ``interval``, with a count of the rest.

    Thread-safe enough for counting (a race may log one extra line)."""

    def __init__(self, logger: logging.Logger, *, interval: float = INTERVAL,
                 level: int = logging.WARNING,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.logger = logger
        self.interval = interval
        self.level = level
        self._clock = clock
        self._causes: dict[str, list[float]] = {}   # cause -> [next line at, unlogged]

    def refused(self, cause: str, message: str, *args: object) -> bool:
        """Report one refusal of ``cause``; ``message % args`` is logged if this
        cause had no line within ``interval``. True if it was logged."""
        now = self._clock()
        state = self._causes.get(cause)
        if state is None:
            if len(self._causes) >= _MAX_CAUSES:
                return False
            state = self._causes[cause] = [0.0, 0.0]
        if now < state[0]:
            state[1] += 1
            return False
        unlogged = int(state[1])
        state[0], state[1] = now + self.interval, 0.0
        if unlogged:
            message += " (and %d more of this kind since the last such line)"
            args = (*args, unlogged)
        else:
            message += " (more of this kind within %g s are only counted)"
            args = (*args, self.interval)
        self.logger.log(self.level, message, *args)
        return True
