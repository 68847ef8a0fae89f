"""Logging refusals without flooding the log: one line per cause per interval.

Whoever refuses input from the network (a listener, the gatekeeper) counts every
refusal in its ``rejections`` and reports it through a ``RefusalLog``: the
first refusal of a cause is logged at once, the next ones of that cause within
``interval`` seconds are only counted, and the next line of that cause says how
many there were meanwhile. A flood of bad connections therefore costs a few
log lines, not one per connection. A count still held back when its interval
ends is logged at the next refusal of any cause (or by ``flush``), and that
line starts the cause's next interval; a cause quiet for a whole interval is
forgotten: at most ``_MAX_CAUSES`` are remembered at once, and the refusals of
causes beyond are counted in a line of their own.

Nothing an attacker sent goes into a line but ``sample(data)``: at most
``SAMPLE_BYTES`` bytes, escaped (``repr``), so a line cannot carry control
characters or a large payload; ``clip(text)`` does the same for texts that may
quote peer data.
"""
from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Iterable

__all__ = ["RefusalLog", "sample", "clip", "INTERVAL", "SAMPLE_BYTES"]

INTERVAL = 10.0        # s: at most one line per cause this often
SAMPLE_BYTES = 16      # bytes of peer data a line may quote
_MAX_CAUSES = 256      # causes remembered within their interval; beyond, only counted
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


class _Held:
    """A cause within its interval: when its next line may come, and the refusals
    only counted since its last line (with the last one's message)."""

    __slots__ = ("until", "count", "message", "args")

    def __init__(self, until: float) -> None:
        self.until, self.count = until, 0
        self.message: str = ""
        self.args: tuple[object, ...] = ()


class RefusalLog:
    """One ``logger`` line per cause per ``interval``, with a count of the rest.

    Thread-safe (lines are logged outside its lock)."""

    def __init__(self, logger: logging.Logger, *, interval: float = INTERVAL,
                 level: int = logging.WARNING,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.logger = logger
        self.interval = interval
        self.level = level
        self._clock = clock
        self._lock = threading.Lock()
        self._causes: dict[str, _Held] = {}     # the causes within their interval
        self._due = math.inf    # no cause's interval ends before (a lower bound)
        self._beyond = 0        # refusals of causes not remembered (_MAX_CAUSES)

    def refused(self, cause: str, message: str, *args: object) -> bool:
        """Report one refusal of ``cause``; ``message % args`` is logged if this
        cause had no line within ``interval``. True if it was logged."""
        now = self._clock()
        beyond, logged = 0, False
        with self._lock:
            ended: dict[str, _Held] = {}
            if now >= self._due:                # some cause's interval ended
                ended = self._ended_locked(now)
                beyond, self._beyond = self._beyond, 0
            state = ended.pop(cause, None)      # this cause's, with a count held back
            held = None if state is not None else self._causes.get(cause)
            if state is not None:               # its line says the count
                logged = True
            elif held is not None:              # within its interval: counted
                held.count += 1
                held.message, held.args = message, args
            elif len(self._causes) < _MAX_CAUSES:
                self._causes[cause] = _Held(now + self.interval)
                self._due = min(self._due, now + self.interval)
                logged = True
            else:
                self._beyond += 1
        self._report(ended.values(), beyond)
        if not logged:
            return False
        if state is not None:
            message += " (and %d more of this kind since the last such line)"
            args = (*args, state.count)
        else:
            message += " (more of this kind within %g s are only counted)"
            args = (*args, self.interval)
        self.logger.log(self.level, message, *args)
        return True

    def flush(self) -> None:
        """Log every count held back now, its interval ended or not (at close:
        no later refusal would), and forget every cause."""
        with self._lock:
            held, self._causes, self._due = self._causes, {}, math.inf
            beyond, self._beyond = self._beyond, 0
        self._report([h for h in held.values() if h.count], beyond)

    def _ended_locked(self, now: float) -> dict[str, _Held]:
        """The causes whose interval ended with a count held back, each in a new
        interval (its count's line is one); the others, quiet, are forgotten."""
        ended = {c: h for c, h in self._causes.items() if h.until <= now}
        for cause, held in ended.items():
            if held.count:
                self._causes[cause] = _Held(now + self.interval)
            else:
                del self._causes[cause]
        self._due = min((h.until for h in self._causes.values()), default=math.inf)
        return {c: h for c, h in ended.items() if h.count}

    def _report(self, held: Iterable[_Held], beyond: int) -> None:
        """The lines of counts held back: each with its last refusal's message."""
        for h in held:
            self.logger.log(self.level, h.message + " (the last of %d of this kind only "
                            "counted since the last such line)", *h.args, h.count)
        if beyond:
            self.logger.log(self.level, "%d refusals of other causes were only counted "
                            "(more than %d causes within %g s)", beyond, _MAX_CAUSES,
                            self.interval)
