"""A tcp listener's connection hygiene and accept back-off: ``Guard``.

The policy (who is shed, when) is ``posa.transport.hygiene``; this module is
the glue a ``TcpListener`` holds: it counts every refusal in the listener's
``rejections`` and logs it through a ``RefusalLog`` (one line per cause per
interval), asks the alarm thread to wake the listener at the next deadline, and
keeps the back-off of an accept that ran out of descriptors.

*Out of descriptors.* When ``accept`` fails with ``EMFILE``/``ENFILE`` (or
the kernel is out of buffers) the pending connection stays in the kernel's
queue and the listening socket stays readable: polling it again at once would
spin. The listener first sheds one connection the policy allows (one that never
completed a frame, else the longest idle one) and tries again; with none to
shed it stops watching the listening socket for a back-off that starts at
``BACKOFF_MIN`` and doubles up to ``BACKOFF_MAX``, counts
``"out-of-descriptors"``, and watches it again when the back-off ends (the
alarm wakes it). Connections already open are served all along.
"""
from __future__ import annotations

import errno
import logging
import math
from collections import Counter
from collections.abc import Callable, Hashable

from posa.transport.base import Options
from posa.transport.hygiene import Hygiene, Limits
from posa.transport.refusals import RefusalLog
from posa.transport.tcp.alarm import alarm

__all__ = ["Guard", "OUT_OF_DESCRIPTORS", "BACKOFF_MIN", "BACKOFF_MAX"]

log = logging.getLogger("posa.transport.tcp")

OUT_OF_DESCRIPTORS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
BACKOFF_MIN = 0.05        # s: first pause of accepting after running out of descriptors
BACKOFF_MAX = 1.0         # s: longest pause


class Guard:
    """Hygiene, refusal counting and accept back-off of the listener at ``address``;
    ``wake`` wakes that listener's poll (from any thread)."""

    def __init__(self, address: str, options: Options, rejections: Counter[str],
                 wake: Callable[[], None]) -> None:
        self.address = address
        self.limits = Limits.from_options(options)
        self.hygiene = Hygiene(self.limits)
        self.rejections = rejections
        self.refusals = RefusalLog(log)
        self.paused_until = math.inf        # accepting resumes then (inf: not paused)
        self._backoff = BACKOFF_MIN
        self._wake = wake
        self._alarm_at = math.inf

    @property
    def check_at(self) -> float:
        """When the listener should call ``due`` (read after every event: no min(),
        which parses keywords on every call)."""
        check_at, paused_until = self.hygiene.check_at, self.paused_until
        return check_at if check_at < paused_until else paused_until

    def arm(self, now: float) -> None:
        """Make sure the listener is woken at ``check_at``."""
        when = self.check_at
        if when < math.inf and not now < self._alarm_at <= when \
                and self._alarm_at > -math.inf:
            self._alarm_at = when
            alarm.at(when, self._wake)

    def close(self) -> None:
        """The listener closed: no more wake-ups; the refusals only counted so far
        are logged (no later refusal will)."""
        self._alarm_at = -math.inf
        alarm.cancel(self._wake)
        self.refusals.flush()

    def refuse(self, cause: str, message: str, *args: object) -> None:
        """Count one refusal of ``cause`` and log it (throttled)."""
        self.rejections[cause] += 1
        self.refusals.refused(cause, message, *args)

    def admit(self, source: Hashable, where: str,
              now: float) -> tuple[list[tuple[Hashable, str]], bool]:
        """A connection from ``where`` (host ``source``) arrived: the connections to
        shed for it, and whether it may be served (if not it is counted here)."""
        shed, cause = self.hygiene.make_room(source, now)
        if cause is not None:
            limit = (f"{self.limits.max_connections_per_source} from one address "
                     "(Options.max_connections_per_source)"
                     if cause == "too-many-from-source" else
                     f"{self.limits.max_connections} (Options.max_connections)")
            self.refuse(cause, "%s: refused a connection from %s: %s are open and "
                        "none may be shed (every one is busy)", self.address, where, limit)
        return shed, cause is None

    def accepted(self) -> None:
        self._backoff = BACKOFF_MIN

    def pause(self, cause: str, reason: str, now: float) -> None:
        """Stop accepting for the back-off: ``accept`` failed with ``reason`` and
        nothing could be shed (``cause``: ``"out-of-descriptors"`` or
        ``"accept-failed"``)."""
        self.paused_until = now + self._backoff
        hint = ("raise the descriptor limit (ulimit -n) or lower Options.max_connections"
                if cause == "out-of-descriptors" else "check the host's network state")
        self.refuse(cause, "%s: cannot accept connections: %s; pausing accepts for %g s "
                    "(open connections are served meanwhile); %s", self.address, reason,
                    self._backoff, hint)
        self._backoff = min(BACKOFF_MAX, self._backoff * 2)
        self.arm(now)

    def resume(self, now: float) -> bool:
        """True once, when the back-off is over: watch the listening socket again."""
        if now < self.paused_until:
            return False
        resumed = self.paused_until < math.inf
        self.paused_until = math.inf
        return resumed

    def detail(self, cause: str) -> str:
        """Why a connection was shed, naming the setting."""
        limits = self.limits
        return {
            "first-frame-timeout": f"no whole frame within {limits.first_frame_timeout} s "
                                   "of connecting (Options.first_frame_timeout)",
            "frame-timeout": f"a frame begun was not finished within "
                             f"{limits.frame_timeout} s (Options.frame_timeout)",
            "idle-timeout": f"no frame either way for {limits.idle_timeout} s "
                            "(Options.idle_timeout)",
            "evicted-unframed": "it never completed a frame and room was needed for a "
                                "new connection",
            "evicted-idle": "it was the longest idle and room was needed for a new "
                            "connection",
        }.get(cause, cause)
