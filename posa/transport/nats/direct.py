"""Publishing and delivering on the loop without nats-py's per-message tasks.

nats-py publishes through a coroutine that queues the command and wakes a flusher
task, and hands a subscription's messages to a task of the subscription through an
``asyncio.Queue``: every message costs the loop one or two turns more than the
socket does, and on a request-reply path those turns are most of the transport's
CPU. The transport's pump and callbacks already run on the loop, so they go round
them, through three parts of the client that nats-py 2.x keeps stable:

- ``Writer`` appends ``PUB`` commands to the client's pending list (the one its
  flusher writes, and its reconnection resends) and writes that list to the socket
  itself, in the same order the flusher would, with no wait; the pump waits for the
  socket only when its buffer is over the high-water mark (``Writer.flush``).
- ``deliver`` gives a subscription (made without a callback) a queue whose
  ``put_nowait`` calls the endpoint's callback at once, as the read loop parses the
  message. The endpoints bound what they hold unread themselves, so nats-py's
  pending limits (and its slow-consumer errors) do not apply.

Everything here runs on the loop thread only: nats-py's client is not thread-safe.
``check`` refuses a client without these parts, naming the versions that have them.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from posa.errors import TransportError

if TYPE_CHECKING:
    from nats.aio.msg import Msg
    from nats.aio.subscription import Subscription

__all__ = ["Writer", "deliver", "check"]

_CRLF = b"\r\n"
_CLIENT = ("_pending", "_pending_data_size", "_max_pending_size", "_transport")


def check(nc: Any) -> None:
    """Raise ``TransportError`` unless ``nc`` (connected) has what ``Writer`` uses."""
    missing = [name for name in _CLIENT if not hasattr(nc, name)]
    if not hasattr(getattr(nc, "_transport", None), "_io_writer"):
        missing.append("_transport._io_writer")
    if missing:
        import nats
        raise TransportError(f"nats-py {getattr(nats, '__version__', '?')} lacks "
                             f"{', '.join(missing)}, which posa's nats:// transport "
                             "uses: install nats-py 2.7 to 2.x "
                             "(pip install 'posa-messaging[nats]')")


class Writer:
    """``PUB`` commands onto a client's pending list, and that list onto its socket."""

    __slots__ = ("nc",)

    def __init__(self, nc: Any) -> None:
        self.nc = nc

    def publish(self, subject: str, reply: str, head: bytes, body: bytes = b"") -> None:
        """Queue one message of ``head + body``; ``TransportError`` when the client
        is closed, or reconnecting with its buffer for that full."""
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
        """Write what is queued (when connected: reconnecting, the client resends it
        once it is back); ``True`` if the socket's buffer is over its high-water mark
        and the caller should ``await drained()`` before writing more."""
        nc = self.nc
        if not nc.is_connected or not nc._pending:
            return False
        transport = nc._transport
        transport.writelines(nc._pending)
        nc._pending = []
        nc._pending_data_size = 0
        sock = transport._io_writer.transport
        return bool(sock.get_write_buffer_size() > sock.get_write_buffer_limits()[1])

    async def drained(self) -> None:
        """Wait until the socket's buffer is under its low-water mark."""
        transport = self.nc._transport
        if self.nc.is_connected and transport is not None:
            await transport.drain()


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
    parsed, on the loop; what was queued before is delivered first."""
    queue = sub._pending_queue
    while not queue.empty():
        cb(queue.get_nowait())
    sub._pending_queue = _Direct(sub, cb)  # type: ignore[assignment]
