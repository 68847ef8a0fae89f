"""The ops server's connections: their limits, phases and deadlines, with no I/O.

A connection is always in one phase, and each phase has a deadline:

    reading   a request has begun (or the connection was just accepted) and its
              head is not complete: ``header_timeout`` from its start, however
              slowly its bytes trickle in (``header-timeout``);
    writing   an answer is being written: ``write_timeout`` from its start, for a
              client that does not read (``write-timeout``);
    idle      kept alive between requests: ``idle_timeout`` (``idle-timeout``).

At most ``max_connections`` are open. A new connection takes the place of the
oldest unfinished one (the reading connection whose request began first), else
of the oldest idle one (``evicted``); if every connection is writing, the new
one is refused (``too-many-connections``). So a crowd of slow clients delays a
health check by nothing: its connection is the newest.

Each phase keeps its connections in the order they entered it; as the deadline of
a phase is its start plus a constant, that order is also the order of the
deadlines, and the first of each phase is the next to expire.
"""
from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass
from typing import Generic, TypeVar

__all__ = ["Limits", "Slots", "READING", "WRITING", "IDLE"]

K = TypeVar("K", bound=Hashable)

READING, WRITING, IDLE = "reading", "writing", "idle"
_CAUSES = {READING: "header-timeout", WRITING: "write-timeout", IDLE: "idle-timeout"}


@dataclass(frozen=True)
class Limits:
    """What one ops server allows its clients (see docs/operations.md)."""

    header_timeout: float = 5.0     # seconds from a request's first byte to its last header
    max_header_bytes: int = 8192    # bytes of one request line and its header fields
    max_connections: int = 64       # open at once; the oldest unfinished gives way
    idle_timeout: float = 30.0      # seconds a kept-alive connection may wait for a request
    write_timeout: float = 5.0      # seconds a client has to read an answer

    def __post_init__(self) -> None:
        for name in ("header_timeout", "idle_timeout", "write_timeout"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be a positive number of seconds, "
                                 f"not {getattr(self, name)!r}")
        if self.max_header_bytes < 256 or self.max_connections < 1:
            raise ValueError("max_header_bytes must be at least 256 and max_connections "
                             f"at least 1 (got {self.max_header_bytes}, {self.max_connections})")

    def timeout(self, phase: str) -> float:
        return {READING: self.header_timeout, WRITING: self.write_timeout,
                IDLE: self.idle_timeout}[phase]


class Slots(Generic[K]):
    """The open connections (by key), each with its phase and the time it entered it."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self._phases: dict[str, dict[K, float]] = {READING: {}, WRITING: {}, IDLE: {}}
        self._phase_of: dict[K, str] = {}

    def __len__(self) -> int:
        return len(self._phase_of)

    def __contains__(self, key: object) -> bool:
        return key in self._phase_of

    def phase(self, key: K) -> str:
        return self._phase_of[key]

    def admit(self, key: K, now: float) -> tuple[bool, K | None]:
        """Open ``key`` (reading from ``now``) if there is room or room can be made.

        Returns ``(admitted, evicted)``: the connection that gave way, if one did;
        ``(False, None)`` when every open connection is writing an answer."""
        evicted = None
        if len(self._phase_of) >= self.limits.max_connections:
            evicted = self._oldest(READING) or self._oldest(IDLE)
            if evicted is None:
                return False, None
            self.remove(evicted)
        self.enter(key, READING, now)
        return True, evicted

    def enter(self, key: K, phase: str, now: float) -> None:
        """``key`` enters ``phase`` at ``now`` (its deadline starts again)."""
        self.remove(key)
        self._phases[phase][key] = now
        self._phase_of[key] = phase

    def remove(self, key: K) -> None:
        phase = self._phase_of.pop(key, None)
        if phase is not None:
            del self._phases[phase][key]

    def expired(self, now: float) -> list[tuple[K, str]]:
        """The connections past their phase's deadline, each with the cause to count;
        they are removed."""
        late: list[tuple[K, str]] = []
        for phase, members in self._phases.items():
            limit = now - self.limits.timeout(phase)
            for key, since in list(members.items()):
                if since > limit:
                    break
                late.append((key, _CAUSES[phase]))
        for key, _ in late:
            self.remove(key)
        return late

    def next_deadline(self) -> float | None:
        """When the next connection expires, or None if none is open."""
        firsts = [next(iter(members.values())) + self.limits.timeout(phase)
                  for phase, members in self._phases.items() if members]
        return min(firsts, default=None)

    def _oldest(self, phase: str) -> K | None:
        return next(iter(self._phases[phase]), None)
