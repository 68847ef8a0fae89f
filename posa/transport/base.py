"""The transport contract: byte frames between addresses, and nothing more.

A transport knows nothing of names, envelopes or patterns. It is chosen by the
scheme of an address URI (``tcp://127.0.0.1:7000``) from the registry in
``posa/transport/__init__.py``, which the entry-point group ``posa.transports`` extends.

Two endpoint kinds, both *pollable* so that one reactor thread can demultiplex
every transport of a process:

``Listener``   bound to an address, receives frames from many connections, each
               tagged with an opaque ``route`` that ``send`` uses to answer on
               the same connection.
``Connection`` connected to one listener; sends frames to it and receives the
               frames the listener sends back on that connection.

Polling contract (the same for both):
- ``fileno()`` is a descriptor that becomes readable when ``recv_nowait()`` may
  return a frame. It may be edge-triggered (ZeroMQ's is), so a caller must not
  wait on it while ``pending()`` is true.
- ``pending()`` is a cheap check, to be made before waiting on the descriptor:
  true if ``recv_nowait()`` may return a frame without the descriptor firing
  (a send can consume a ZeroMQ notification); false if the descriptor will fire
  for the next frame. A caller that took a frame may therefore wait as soon as
  ``pending()`` is false, without draining ``recv_nowait()`` to ``None`` first
  (a receive that finds nothing is the dearest call of some transports).
- ``recv(timeout)`` is the blocking form: it returns a frame or raises
  ``Timeout``; ``close()`` from another thread wakes it with ``Closed``.

Frames are ``bytes``. Frames on one connection arrive in the order they were
sent, whole or not at all. A frame larger than ``Options.max_frame_size`` is
refused: by ``send`` with ``TransportError`` before it leaves, and by a listener
by dropping the connection that sent it (counted in ``rejections`` where the
transport can see the cause: libzmq drops such a peer without saying why) while
every other connection goes on.

A listener that authenticates its peers may also offer
``identity(route) -> str | None``: what the connection's verified credential names
(``tls://`` with client certificates: the certificate's common name). It is
optional; callers look it up with ``getattr``.

A connection may also offer ``wait_readable(timeout) -> bool``: wait up to
``timeout`` s until ``recv_nowait()`` may return a frame (or raise), True if it
may. It is optional, for a transport whose frames do not make ``fileno()``
readable by themselves (``nats://``: a waiting thread reads the shared client's
socket). Without it a blocking caller waits on ``fileno()`` once ``pending()`` is
false (``default_wait_readable``); ``waiter`` gives a class's way, looked up once
per class.

Errors are posa's: ``TransportError`` (``Closed`` once an endpoint is closed),
``Timeout``. Nothing from ``zmq``, ``socket`` or ``OSError`` escapes.
"""
from __future__ import annotations

import math
import select
from collections import Counter
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    from posa.transport.tls.settings import TlsSettings

__all__ = ["Options", "Transport", "Listener", "Connection", "Route", "Wait",
           "default_wait_readable", "waiter"]

Route = Hashable  # identifies one inbound connection of a listener


@dataclass(frozen=True)
class Options:
    """Settings every transport honours. Defaults are safe for untrusted peers.

    Above the transports, ``max_frame_size`` is not set by hand: a peer or sender
    takes it from its codec's limits (``CodecLimits.options``), so that a
    transport refuses exactly the frames its codec would."""

    max_frame_size: int = 16 * 1024 * 1024   # bytes; larger frames are refused
    max_connections: int = 1024              # per listener; see posa.transport.hygiene
    high_water_mark: int = 1000              # frames queued per connection before send blocks
    send_timeout: float | None = 5.0         # seconds send may block; None: forever
    linger: float = 1.0                      # seconds close() may spend flushing
    tls: TlsSettings | None = None           # tls:// only; None: the transport's own
    # connection hygiene (docs/security.md); None turns a deadline off
    max_connections_per_source: int = 512    # per listener and source address
    first_frame_timeout: float | None = 10.0  # s to deliver a first whole frame (zmq: handshake)
    frame_timeout: float | None = 60.0       # s a begun frame may take to complete
    idle_timeout: float | None = 300.0       # s without a frame (zmq: without a heartbeat)

    def __post_init__(self) -> None:
        if min(self.max_frame_size, self.max_connections, self.high_water_mark,
               self.max_connections_per_source) <= 0:
            raise ValueError("Options limits must be positive")
        for name in ("first_frame_timeout", "frame_timeout", "idle_timeout"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ValueError(f"Options.{name} must be positive seconds or None "
                                 f"(no deadline), not {value!r}")


@runtime_checkable
class Listener(Protocol):
    """A bound endpoint that receives frames from many connections."""

    address: str
    """The address actually bound (port 0 resolved), to hand to ``connect``."""

    rejections: Counter[str]
    """Connections refused or dropped, by cause: ``"oversize"``, ``"garbage"``,
    ``"truncated"``, and the causes of ``posa.transport.hygiene`` (deadlines,
    caps, evictions) and ``"out-of-descriptors"`` where the transport can see them."""

    def fileno(self) -> int: ...

    def pending(self) -> bool: ...

    def recv_nowait(self) -> tuple[Route, bytes] | None:
        """The next ``(route, frame)``, or ``None`` if nothing is ready.

        Raises ``Closed`` after ``close()``."""

    def recv(self, timeout: float | None = None) -> tuple[Route, bytes]:
        """Block for the next ``(route, frame)``. Raises ``Timeout``, ``Closed``."""

    def send(self, route: Route, frame: bytes) -> None:
        """Send ``frame`` back on the connection ``route`` came from.

        Raises ``TransportError`` if that connection is gone, ``Closed`` after close."""

    def close(self) -> None:
        """Stop listening and drop every connection. Idempotent."""


@runtime_checkable
class Connection(Protocol):
    """A connection to one listener."""

    address: str

    def fileno(self) -> int: ...

    def pending(self) -> bool: ...

    def send(self, frame: bytes) -> None:
        """Send one frame; blocks while ``high_water_mark`` frames are queued.

        Raises ``TransportError`` (oversize frame, peer gone), ``Timeout`` after
        ``send_timeout``, ``Closed`` after close."""

    def recv_nowait(self) -> bytes | None: ...

    def recv(self, timeout: float | None = None) -> bytes:
        """Block for the next frame from the listener. Raises ``Timeout``, ``Closed``."""

    def close(self) -> None:
        """Flush what was sent (at most ``linger`` seconds) and close. Idempotent."""

    # optional: ``def wait_readable(self, timeout: float) -> bool`` (see the module
    # docstring); a Protocol member would make every connection declare it


Wait = Callable[[Any, float], bool]     # (connection, timeout s) -> it may have a frame


def default_wait_readable(conn: Connection, timeout: float) -> bool:
    """A connection without ``wait_readable``: True at once while ``pending()``,
    else whether ``fileno()`` became readable within ``timeout`` s."""
    if conn.pending():
        return True
    fd = conn.fileno()
    if _poll is None:
        return bool(select.select([fd], [], [], max(0.0, timeout))[0])
    poller = _poll()        # poll, not select: select refuses descriptors from 1024 up
    poller.register(fd, getattr(select, "POLLIN", 1))
    return bool(poller.poll(math.ceil(timeout * 1000) if timeout > 0.0 else 0))


def waiter(kind: type) -> Wait:
    """How a blocking caller waits on a connection of class ``kind``: its own
    ``wait_readable`` if it has one, else ``default_wait_readable``."""
    own: Wait | None = getattr(kind, "wait_readable", None)
    return default_wait_readable if own is None else own


_poll = getattr(select, "poll", None)


class Transport(Protocol):
    """A way to move frames, chosen by URI scheme (``schemes``)."""

    schemes: tuple[str, ...]

    def listen(self, address: str, options: Options) -> Listener:
        """Bind ``address`` (port 0 picks a free port). Raises ``TransportError``."""

    def connect(self, address: str, options: Options) -> Connection:
        """Connect to a listener at ``address``. Raises ``TransportError``."""
