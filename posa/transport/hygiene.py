"""Connection hygiene: which connection of a listener to shed, and when (no I/O).

A listener that faces a network must not let connections that do nothing hold its
descriptors. ``Hygiene`` keeps, for each connection a listener serves, when it
was opened, when it was last active, whether it ever completed a frame and when
its current frame began; the listener tells it what happened (``open``,
``read``, ``sent``, ``forget``) with the time, and asks it what to do:

``make_room(source, now)``  before a connection from ``source`` is served: the
    connections to shed so that it fits under ``max_connections`` and
    ``max_connections_per_source``, or the cause to refuse it. A victim is the
    oldest connection that never completed a frame (a stalled or half-open one)
    and, only when there is none, the connection idle the longest (not inside a
    frame, silent for at least ``EVICTABLE_IDLE``); a connection inside a frame
    is never evicted. Among one source's connections first when that source is
    over its cap, so a crowd of stalled connections from one address (even the
    address a good client shares) cannot lock that client out.
``shed_one(now)``           the descriptors ran out: the one connection to shed.
``expired(now)``            the connections past a deadline: no whole frame
    ``first_frame_timeout`` after opening; a frame begun and not finished within
    ``frame_timeout`` (slowloris); no frame either way for ``idle_timeout``.

``check_at`` is the time of the next deadline (rounded up to ``tick``, so that a
flood of connections does not make a sweep per connection); the listener arranges
to be woken then. Times are seconds of any monotonic clock; every method takes
``now``, so tests drive it with made-up times.

Causes (the keys a listener counts in ``rejections``): ``"first-frame-timeout"``,
``"frame-timeout"``, ``"idle-timeout"``, ``"evicted-unframed"``,
``"evicted-idle"``, ``"too-many-connections"``, ``"too-many-from-source"``.
"""
from __future__ import annotations

import math
from collections.abc import Hashable, Iterable
from dataclasses import dataclass

from posa.transport.base import Options

__all__ = ["Limits", "Tracked", "Hygiene", "EVICTABLE_IDLE"]

EVICTABLE_IDLE = 1.0      # s: a connection silent this long may be evicted for a new one
_INF = math.inf


@dataclass(frozen=True)
class Limits:
    """The settings of ``Hygiene`` (``None``: no such deadline)."""

    first_frame_timeout: float | None = 10.0
    frame_timeout: float | None = 60.0
    idle_timeout: float | None = 300.0
    max_connections: int = 1024
    max_connections_per_source: int = 512

    @classmethod
    def from_options(cls, options: Options) -> Limits:
        return cls(options.first_frame_timeout, options.frame_timeout, options.idle_timeout,
                   options.max_connections, options.max_connections_per_source)

    @property
    def tick(self) -> float:
        """How late a deadline may be enforced: an eighth of the shortest one,
        between 50 ms and 1 s."""
        shortest = min((t for t in (self.first_frame_timeout, self.frame_timeout,
                                    self.idle_timeout) if t is not None), default=8.0)
        return min(1.0, max(0.05, shortest / 8))


class Tracked:
    """What ``Hygiene`` knows of one connection."""

    __slots__ = ("key", "source", "opened", "active", "started", "framed")

    def __init__(self, key: Hashable, source: Hashable, now: float) -> None:
        self.key = key
        self.source = source
        self.opened = now
        self.active = now                   # last frame bytes either way
        self.started: float | None = None   # when the incomplete frame began
        self.framed = False                 # completed a frame once

    def deadline(self, limits: Limits) -> tuple[float, str]:
        """The earliest deadline of this connection, and its cause."""
        when, cause = _INF, ""
        if not self.framed and limits.first_frame_timeout is not None:
            when, cause = self.opened + limits.first_frame_timeout, "first-frame-timeout"
        if self.started is not None:
            if limits.frame_timeout is not None and \
                    self.started + limits.frame_timeout < when:
                when, cause = self.started + limits.frame_timeout, "frame-timeout"
        elif limits.idle_timeout is not None and self.active + limits.idle_timeout < when:
            when, cause = self.active + limits.idle_timeout, "idle-timeout"
        return when, cause


class Hygiene:
    """The connections of one listener and the policy that sheds them."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self.check_at = _INF          # when ``expired`` may have something to say
        self._all: dict[Hashable, Tracked] = {}
        self._unframed: dict[Hashable, Tracked] = {}           # in opening order
        self._sources: dict[Hashable, dict[Hashable, Tracked]] = {}
        self._tick = limits.tick

    def __len__(self) -> int:
        return len(self._all)

    def count(self, source: Hashable) -> int:
        """Connections open from ``source``."""
        return len(self._sources.get(source, ()))

    def make_room(self, source: Hashable,
                  now: float) -> tuple[list[tuple[Hashable, str]], str | None]:
        """Before serving a new connection from ``source``: the ``(key, cause)``
        of the connections to shed first, and ``None`` if it may then be served,
        else the cause to refuse it with (nothing may be evicted)."""
        shed: list[tuple[Hashable, str]] = []
        mine = self._sources.get(source)
        if mine is not None and len(mine) >= self.limits.max_connections_per_source:
            victim = self._victim(mine.values(), mine.values(), now)
            if victim is None:
                return shed, "too-many-from-source"
            shed.append(victim)
            self.forget(victim[0])
        if len(self._all) >= self.limits.max_connections:
            victim = self._victim(self._unframed.values(), self._all.values(), now)
            if victim is None:
                return shed, "too-many-connections"
            shed.append(victim)
            self.forget(victim[0])
        return shed, None

    def shed_one(self, now: float) -> tuple[Hashable, str] | None:
        """The connection to shed for a descriptor (``None``: none may be)."""
        victim = self._victim(self._unframed.values(), self._all.values(), now)
        if victim is not None:
            self.forget(victim[0])
        return victim

    def open(self, key: Hashable, source: Hashable, now: float) -> Tracked:
        """Track a new connection; ``check_at`` may move earlier."""
        tracked = Tracked(key, source, now)
        self._all[key] = tracked
        self._unframed[key] = tracked
        self._sources.setdefault(source, {})[key] = tracked
        self._earlier(tracked.deadline(self.limits)[0])
        return tracked

    def read(self, tracked: Tracked, now: float, completed: bool, partial: bool) -> bool:
        """Bytes came in: ``completed`` frames, and ``partial`` if a frame is left
        incomplete. True if ``check_at`` moved earlier (wake the listener then)."""
        tracked.active = now
        if completed and not tracked.framed:
            tracked.framed = True
            self._unframed.pop(tracked.key, None)
        if not partial:
            tracked.started = None
            return False
        if completed or tracked.started is None:
            tracked.started = now
            timeout = self.limits.frame_timeout
            if timeout is not None and now + timeout < self.check_at:
                self.check_at = now + timeout
                return True
        return False

    @staticmethod
    def sent(tracked: Tracked, now: float) -> None:
        """A frame went out on the connection."""
        tracked.active = now

    def forget(self, key: Hashable) -> None:
        """The connection is gone (closed, dropped or shed). Idempotent."""
        tracked = self._all.pop(key, None)
        if tracked is None:
            return
        self._unframed.pop(key, None)
        mine = self._sources[tracked.source]
        del mine[key]
        if not mine:
            del self._sources[tracked.source]

    def expired(self, now: float) -> list[tuple[Hashable, str]]:
        """The ``(key, cause)`` of every connection past a deadline, forgotten
        here; ``check_at`` becomes the next deadline (at least a tick away)."""
        due: list[tuple[Hashable, str]] = []
        soonest = _INF
        limits = self.limits
        for tracked in self._all.values():
            when, cause = tracked.deadline(limits)
            if when <= now:
                due.append((tracked.key, cause))
            elif when < soonest:
                soonest = when
        for key, _ in due:
            self.forget(key)
        self.check_at = _INF if soonest == _INF else max(soonest, now + self._tick)
        return due

    def _earlier(self, when: float) -> None:
        if when < self.check_at:
            self.check_at = when

    @staticmethod
    def _victim(unframed: Iterable[Tracked], everyone: Iterable[Tracked],
                now: float) -> tuple[Hashable, str] | None:
        for tracked in unframed:      # opening order: the first is the oldest
            if not tracked.framed:
                return tracked.key, "evicted-unframed"
        idlest: Tracked | None = None
        for tracked in everyone:
            if tracked.framed and tracked.started is None and \
                    now - tracked.active >= EVICTABLE_IDLE and \
                    (idlest is None or tracked.active < idlest.active):
                idlest = tracked
        return None if idlest is None else (idlest.key, "evicted-idle")
