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
per class. ``wait_fd`` is that wait on one descriptor, written once for every
blocking caller (``posa.delivery.waiting``, ``nats://``'s waiting threads).

Errors are posa's: ``TransportError`` (``Closed`` once an endpoint is closed),
``Timeout``. Nothing from ``zmq``, ``socket`` or ``OSError`` escapes.
"""
from __future__ import annotations

import math
import select
import threading
import time
from collections import Counter
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    from posa.transport.tls.settings import TlsSettings

__all__ = ["Options", "Transport", "Listener", "Connection", "Route", "Wait",
           "default_wait_readable", "waiter", "wait_fd", "POLL_SLICE"]

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
    return wait_fd(conn.fileno(), timeout)


def waiter(kind: type) -> Wait:
    """How a blocking caller waits on a connection of class ``kind``: its own
    ``wait_readable`` if it has one, else ``default_wait_readable``."""
    own: Wait | None = getattr(kind, "wait_readable", None)
    return default_wait_readable if own is None else own


def wait_fd(fd: int, timeout: float) -> bool:
    """Wait up to ``timeout`` s (``inf``: for ever) until descriptor ``fd`` is
    readable; True if it is (or is closed: the next receive says how).

    ``poll``, not ``select``, which refuses descriptors from 1024 up. Each thread
    keeps its poll objects, one per descriptor number (one made for a number
    serves any socket given that number later): a wait is one ``poll`` call, with
    no object made and registered per wait. A poll waits ``POLL_SLICE`` s at most at
    once (its milliseconds are a C int: about 24 days), a longer wait polls again
    until its end."""
    try:
        poller = _local.pollers[fd]
    except (AttributeError, KeyError):
        if _poll is None:
            return _select_fd(fd, timeout)
        poller = _poller(fd)
    if timeout < POLL_SLICE:
        return bool(poller.poll(math.ceil(timeout * 1000) if timeout > 0.0 else 0))
    if timeout != timeout:      # nan: no wait
        return bool(poller.poll(0))
    end = time.monotonic() + timeout
    while True:
        left = end - time.monotonic()
        if poller.poll(math.ceil(min(left, POLL_SLICE) * 1000) if left > 0.0 else 0):
            return True
        if left <= POLL_SLICE:
            return False


def _poller(fd: int) -> Any:
    """This thread's poll object for descriptor ``fd``, made now."""
    try:
        pollers: dict[int, Any] = _local.pollers
    except AttributeError:
        pollers = _local.pollers = {}
    if len(pollers) >= _KEEP:
        pollers.clear()
    poller = pollers[fd] = _poll()  # type: ignore[misc]
    poller.register(fd, _POLLIN)
    return poller


def _select_fd(fd: int, timeout: float) -> bool:
    """``wait_fd`` where there is no ``poll``: ``select``, in slices as well."""
    end = time.monotonic() + timeout if timeout > 0.0 else 0.0
    while True:
        left = end - time.monotonic() if end else 0.0
        if select.select([fd], [], [], min(left, POLL_SLICE) if left > 0.0 else 0.0)[0]:
            return True
        if left <= POLL_SLICE:
            return False


_poll = getattr(select, "poll", None)
_POLLIN = getattr(select, "POLLIN", 1)
_local = threading.local()
_KEEP = 64              # poll objects kept per thread (one per descriptor number)
POLL_SLICE = 86_400.0    # the longest single poll, s: far under poll's int milliseconds


class Transport(Protocol):
    """A way to move frames, chosen by URI scheme (``schemes``)."""

    schemes: tuple[str, ...]

    def listen(self, address: str, options: Options) -> Listener:
        """Bind ``address`` (port 0 picks a free port). Raises ``TransportError``."""

    def connect(self, address: str, options: Options) -> Connection:
        """Connect to a listener at ``address``. Raises ``TransportError``."""
