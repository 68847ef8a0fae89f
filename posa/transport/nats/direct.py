"""Publishing and delivering on the loop without nats-py's per-message tasks.

nats-py publishes through a coroutine that queues the command and wakes a flusher
task, and hands a subscription's messages to a task of the subscription through an
``asyncio.Queue``: every message costs the loop one or two turns more than the
socket does, and on a request-reply path those turns are most of the transport's
CPU. The transport's pump and callbacks already run on the loop, so they go round
them, through parts of the client (as nats-py 2.16 has them):

- ``Writer`` appends ``PUB`` commands to the client's pending list (the one its
  flusher writes, and its reconnection resends) and writes that list to the socket
  itself, in the same order the flusher would, with no wait; the pump waits for the
  socket only when its buffer is over the high-water mark (``Writer.flush``). A
  sending thread may write a frame to the socket itself when nothing is ahead of
  it (``Writer.send_now``): a lock that every writer of the socket takes keeps the
  bytes whole and in order, and spares the request path a hand-off to the loop.
  The client's closing of a socket it leaves to reconnect becomes an abort (a
  stopped server never drains what a graceful close waits for).
- ``deliver`` gives a subscription (made without a callback) a queue whose
  ``put_nowait`` calls the endpoint's callback at once, as the read loop parses the
  message. The endpoints bound what they hold unread themselves, so nats-py's
  pending limits (and its slow-consumer errors) do not apply.

Everything here but ``send_now`` runs on the loop thread only: nats-py's client is
not thread-safe, and ``send_now`` touches only the socket (under the lock) and reads
what the loop changes only under the lock or atomically.
``check`` and ``deliver`` refuse a client without these parts with
``TransportError``, naming what is missing.
"""
from __future__ import annotations

import os
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from posa.errors import TransportError

if TYPE_CHECKING:
    from nats.aio.msg import Msg
    from nats.aio.subscription import Subscription

__all__ = ["Writer", "deliver", "check"]

_CRLF = b"\r\n"
_pid = [os.getpid()]        # this process's, kept current in a forked child


def _forked() -> None:
    _pid[0] = os.getpid()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forked)
_CLIENT = ("_pending", "_pending_data_size", "_max_pending_size", "_transport")


def check(nc: Any) -> None:
    """Raise ``TransportError`` unless ``nc`` (connected) has what ``Writer`` uses."""
    missing = [name for name in _CLIENT if not hasattr(nc, name)]
    if not hasattr(getattr(nc, "_transport", None), "_io_writer"):
        missing.append("_transport._io_writer")
    _refuse(missing)


def _refuse(missing: list[str]) -> None:
    if missing:
        import nats
        raise TransportError(f"nats-py {getattr(nats, '__version__', '?')} lacks "
                             f"{', '.join(missing)}, which posa's nats:// transport "
                             "uses: install a nats-py 2.x release that has them (posa "
                             "is tested with 2.16)")


class Writer:
    """``PUB`` commands onto a client's pending list and its socket, under ``lock``.

    Every byte posa or nats-py writes to the client's socket is written holding
    ``lock``: the pump holds it while it publishes, ``install`` makes the client's
    own ``write`` and ``writelines`` take it, and ``send_now`` holds it for a write
    straight from the calling thread. ``send_now`` writes only when nothing is ahead
    of it: the client connected over plain TCP, its pending list empty, the socket
    transport's buffer empty (asyncio writes from that buffer only while it holds
    bytes) and not given up (closing), and no rest of an earlier partial write.
    What the socket does not take at once is kept as ``rest``, which every writer
    under the lock writes first, on the loop (``flush`` and the installed methods).
    """

    __slots__ = ("nc", "lock", "rest", "_plain", "_pid")

    def __init__(self, nc: Any) -> None:
        self.nc = nc
        self._pid = _pid[0]
        self.lock = threading.Lock()
        self.rest: tuple[Any, bytes] | None = None     # (socket transport, bytes)
        self._plain: Any = None      # the last socket transport found to be plain TCP

    def abort(self) -> None:
        """Drop the socket at once with what it still holds (a server that stopped
        reading never takes it, and a graceful close waits for that)."""
        io_writer = getattr(self.nc._transport, "_io_writer", None)
        if io_writer is not None:
            io_writer.transport.abort()

    @property
    def mine(self) -> bool:
        """False in a process forked from the one that made it: the socket is the
        parent's (a write from the child would land amid the parent's, numbered as
        the parent numbers its own), and the lock may have been held at the fork."""
        return self._pid == _pid[0]

    def install(self) -> None:
        """Make the client's writes to its socket take ``lock`` (on the loop, once:
        nats-py keeps its transport object across reconnections), and its closing
        of a socket it is leaving to reconnect an abort: a graceful close waits
        for the socket's buffer to drain, which a stopped server never lets it
        do, and nats-py waits for that close before it dials another server."""
        nc = self.nc
        transport = nc._transport
        lock = self.lock

        def write(data: bytes) -> None:
            with lock:
                self._write_rest()
                transport._io_writer.write(data)

        def writelines(data: list[bytes]) -> None:
            with lock:
                self._write_rest()
                transport._io_writer.writelines(data)

        def close() -> None:
            writer = transport._io_writer
            if nc.is_reconnecting:      # what the socket holds is lost with it
                writer.transport.abort()
            else:
                writer.close()

        try:
            transport.write, transport.writelines = write, writelines
            transport.close = close
        except AttributeError:
            _refuse(["a transport whose write, writelines and close can be replaced"])

    def _write_rest(self) -> None:
        """Write the rest of a partial write first, to the socket it began on (the
        rest of a socket since closed is dropped: the frame is lost with it)."""
        rest = self.rest
        if rest is not None:
            self.rest = None
            writer = self.nc._transport._io_writer
            if writer.transport is rest[0]:
                writer.write(rest[1])

    def publish(self, subject: str, reply: str, head: bytes, body: bytes = b"") -> None:
        """Queue one message of ``head + body`` (the loop, holding ``lock``);
        ``TransportError`` when the client is closed, or reconnecting with its
        buffer for that full."""
        nc = self.nc
        size = len(head) + len(body)
        line = f"PUB {subject} {reply} {size}\r\n".encode()
        if not nc.is_connected:
            if nc.is_closed:
                raise TransportError("the NATS client is closed")
            room = nc._max_pending_size
            if room <= 0 or size + nc._pending_data_size > room:
                raise TransportError("the NATS client is reconnecting and its buffer "
                                     f"of {room} bytes is full")
        pending = nc._pending
        pending.append(line)
        pending.append(head)
        if body:
            pending.append(body)
        pending.append(_CRLF)
        nc._pending_data_size += len(line) + size + 2

    @property
    def queued(self) -> int:
        """Bytes queued and not yet written to the socket."""
        size: int = self.nc._pending_data_size
        return size

    def flush(self) -> bool:
        """Write the rest and what is queued (the loop, holding ``lock``; when
        connected: reconnecting, the client resends its pending list once it is
        back); ``True`` if the socket's buffer is over its high-water mark and the
        caller should ``await drained()`` before writing more."""
        nc = self.nc
        if not nc.is_connected:
            return False
        writer = nc._transport._io_writer
        self._write_rest()
        if nc._pending:
            writer.writelines(nc._pending)
            nc._pending = []
            nc._pending_data_size = 0
        sock = writer.transport
        return bool(sock.get_write_buffer_size() > sock.get_write_buffer_limits()[1])

    async def drained(self) -> None:
        """Wait until the socket's buffer is under its low-water mark."""
        transport = self.nc._transport
        if self.nc.is_connected and transport is not None:
            await transport.drain()

    def send_now(self, subject: str, reply: str, head: bytes, body: bytes) -> bool:
        """Write one message to the socket from this thread (holding ``lock``) if
        nothing is ahead of it; ``False`` if something is (queue it for the pump).
        Raises ``OSError`` (the message is lost) when the socket breaks."""
        nc = self.nc
        if (not nc.is_connected or nc._pending or self.rest is not None
                or len(head) + len(body) > nc.max_payload):   # a server since connected to
            return False
        sock_transport = nc._transport._io_writer.transport
        if sock_transport is not self._plain:       # a new socket: plain TCP?
            if (getattr(sock_transport, "_sock", None) is None
                    or sock_transport.get_extra_info("sslcontext") is not None):
                return False
            self._plain = sock_transport
        # asyncio gives a failed socket up (closing, its buffer dropped) and closes
        # it a turn later (``_sock`` None), turns before the client is told: the
        # frame goes to the pump meanwhile, and the connections end once it is
        sock = sock_transport._sock
        if sock is None or sock_transport.is_closing() \
                or sock_transport.get_write_buffer_size():
            return False
        data = b"".join((f"PUB {subject} {reply} {len(head) + len(body)}\r\n".encode(),
                         head, body, _CRLF))
        try:
            sent = sock.send(data)
        except (BlockingIOError, InterruptedError):
            sent = 0
        if sent < len(data):
            self.rest = (sock_transport, data[sent:])
        return True


class _Direct:
    """Stands in for a subscription's queue: what is put is delivered at once."""

    __slots__ = ("sub", "cb")

    def __init__(self, sub: Subscription, cb: Callable[[Msg], None]) -> None:
        self.sub, self.cb = sub, cb

    def put_nowait(self, msg: Msg) -> None:
        self.sub._pending_size -= len(msg.data)
        self.cb(msg)

    def qsize(self) -> int:
        return 0

    def empty(self) -> bool:
        return True


def deliver(sub: Subscription, cb: Callable[[Msg], None]) -> None:
    """Call ``cb`` with each message of ``sub`` (made without a callback) as it is
    parsed, on the loop; what was queued before is delivered first. Raises
    ``TransportError`` when nats-py's subscriptions have no such queue."""
    _refuse([name for name in ("_pending_queue", "_pending_size")
             if not hasattr(sub, name)])
    queue = sub._pending_queue
    while not queue.empty():
        msg = queue.get_nowait()
        sub._pending_size -= len(msg.data)
        cb(msg)
    sub._pending_queue = _Direct(sub, cb)  # type: ignore[assignment]
