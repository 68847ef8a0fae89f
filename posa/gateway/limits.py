"""The gateway's edge: connection caps and header deadlines in front of aiohttp.

aiohttp bounds a request's head (line and field sizes, header count) and its
body (``client_max_size``: 413), and closes idle keep-alive connections; it
has no deadline for a head that trickles in, and no cap on connections.  The
``ConnectionGuard`` adds both, as docs/security.md's connection hygiene does for
posa's own listeners: it wraps each connection's protocol and

- refuses a connection over ``max_connections`` (all sources) or
  ``max_connections_per_source`` (one IP address) with ``503`` and closes it;
- closes a connection whose request head has not arrived ``header_timeout``
  seconds after it opened or after its first byte following a response
  (slowloris), and one idle ``idle_timeout`` seconds between requests.

A request that reached a handler (a long poll, an event stream, a WebSocket)
is never cut by these deadlines; its body must arrive within ``body_timeout``
(``read_body``: 408).  Each refusal is counted by cause in ``refused``.
"""
from __future__ import annotations

import asyncio
import json
from collections import Counter
from dataclasses import dataclass
from typing import Any

from posa.gateway.problems import BadInput, problem

__all__ = ["EdgeLimits", "ConnectionGuard", "BodyTimeout"]


@dataclass(frozen=True)
class EdgeLimits:
    """The gateway's limits (``posa gateway`` flags of the same names)."""

    max_body: int = 1 << 20                 # bytes; larger: 413
    header_timeout: float = 10.0            # seconds for a request head
    body_timeout: float = 30.0              # seconds for a request body; then 408
    idle_timeout: float = 60.0              # seconds between requests on a connection
    max_connections: int = 1024
    max_connections_per_source: int = 256
    sse_buffer: int = 1000                  # events a slow event stream may fall behind
    max_wait: float = 60.0                  # the longest long poll or request timeout

    def __post_init__(self) -> None:
        for name, value in vars(self).items():
            counted = name in _COUNTS
            if counted and (type(value) is not int or value < 1):
                raise ValueError(f"EdgeLimits.{name} must be a whole number >= 1, "
                                 f"not {value!r}")
            if not counted and (type(value) not in (int, float)
                                or not 0 < value <= _LONGEST):
                raise ValueError(f"EdgeLimits.{name} must be a number of seconds > 0 "
                                 f"(at most {_LONGEST:.0e}), not {value!r}")


_COUNTS = frozenset({"max_body", "max_connections", "max_connections_per_source",
                     "sse_buffer"})
_LONGEST = 1e9


class BodyTimeout(BadInput):
    """The request body did not arrive in time (HTTP 408)."""


_REFUSAL = json.dumps(problem(503, "too-many-connections", "Service Unavailable",
                              "the gateway has too many connections; try again later")
                      ).encode()
_RESPONSE = (b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/problem+json\r\n"
             b"Connection: close\r\nContent-Length: " + str(len(_REFUSAL)).encode()
             + b"\r\n\r\n" + _REFUSAL)


class ConnectionGuard:
    """Counts connections and arms their deadlines; ``factory`` wraps aiohttp's."""

    def __init__(self, limits: EdgeLimits) -> None:
        self.limits = limits
        self.connections: dict[asyncio.BaseTransport, _Guarded] = {}
        self.per_source: Counter[str] = Counter()
        self.refused: Counter[str] = Counter()

    def factory(self, make: Any) -> Any:
        """A protocol factory for ``loop.create_server`` around aiohttp's ``make``."""
        return lambda: _Guarded(self, make())

    def started(self, transport: asyncio.BaseTransport | None) -> None:
        """A request reached a handler: no deadline while it runs."""
        guarded = self.connections.get(transport) if transport is not None else None
        if guarded is not None:
            guarded.in_request += 1
            guarded.disarm()

    def finished(self, transport: asyncio.BaseTransport | None) -> None:
        """Its response was handed to aiohttp: the idle deadline runs again."""
        guarded = self.connections.get(transport) if transport is not None else None
        if guarded is not None:
            guarded.in_request -= 1
            if guarded.in_request == 0:
                guarded.arm(self.limits.idle_timeout, "idle-timeout")


class _Guarded(asyncio.Protocol):
    """One connection: aiohttp's protocol inside, deadlines and caps outside."""

    def __init__(self, guard: ConnectionGuard, inner: Any) -> None:
        self.guard, self.inner = guard, inner
        self.transport: asyncio.Transport | None = None
        self.source = ""
        self.in_request = 0
        self._timer: asyncio.TimerHandle | None = None
        self._cause = ""
        self._admitted = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        peer = transport.get_extra_info("peername")
        self.source = str(peer[0]) if isinstance(peer, tuple) else "local"
        guard, limits = self.guard, self.guard.limits
        cause = ("too-many-connections" if len(guard.connections) >= limits.max_connections
                 else "too-many-from-source"
                 if guard.per_source[self.source] >= limits.max_connections_per_source
                 else "")
        if cause:
            guard.refused[cause] += 1
            transport.write(_RESPONSE)
            transport.close()
            return
        self._admitted = True
        guard.connections[transport] = self
        guard.per_source[self.source] += 1
        self.arm(limits.header_timeout, "header-timeout")
        self.inner.connection_made(transport)

    def arm(self, seconds: float, cause: str) -> None:
        self.disarm()
        if seconds > 0:
            self._cause = cause
            self._timer = asyncio.get_running_loop().call_later(seconds, self._expired)

    def disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _expired(self) -> None:
        self._timer = None
        if self.in_request == 0 and self.transport is not None:
            self.guard.refused[self._cause] += 1
            self.transport.close()

    def data_received(self, data: bytes) -> None:
        if not self._admitted:
            return
        if self.in_request == 0 and self._cause == "idle-timeout":
            self.arm(self.guard.limits.header_timeout, "header-timeout")  # a new head
        self.inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self.inner.eof_received() if self._admitted else None

    def connection_lost(self, exc: Exception | None) -> None:
        self.disarm()
        if not self._admitted:
            return
        guard = self.guard
        if guard.connections.pop(self.transport, None) is not None:  # type: ignore[arg-type]
            guard.per_source[self.source] -= 1
            if guard.per_source[self.source] <= 0:
                del guard.per_source[self.source]
        self.inner.connection_lost(exc)

    def pause_writing(self) -> None:
        if self._admitted:
            self.inner.pause_writing()

    def resume_writing(self) -> None:
        if self._admitted:
            self.inner.resume_writing()
