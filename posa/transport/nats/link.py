"""One nats-py client per cluster per process, and the pump that publishes for
every endpoint on it.

Endpoints on the same servers (in any order) share a ``Link``, which dials the
servers in the order the first address used lists them, the first first, and
fails over in that order too: list a nearby server first. A link is counted:
the last endpoint to let go closes it, after what was queued has left.

Sending threads never touch the client's state: ``put`` appends the frame to its
``Outbound`` (one per direction of a connection: its subject, its numbering, its
queue) and that outbound to the link's queue, and wakes the pump only if it is
not awake already, so a burst costs one ``call_soon_threadsafe``. The pump is a
plain callback on the loop: it cuts frames to the server's ``max_payload``, numbers
them and writes them to the socket in the same turn of the loop
(``posa.transport.nats.direct``); only when the socket's buffer is over its
high-water mark does it wait, in a task, for the socket to drain. Subscriptions
deliver the same way, in the turn that parses the message.

When nothing is queued, ``put`` does not wake the pump at all: the sending thread
writes the frame to the socket itself, holding the lock every writer of the socket
takes (``Writer.send_now``). A request and its answer then cross no thread on
their way out, only on their way in (the loop reads the socket).

When the client loses its server, every endpoint on the link hears ``link_lost``:
frames in flight may be gone, so connections end (posa's streams resend on new
ones once the client has reconnected to another server of the cluster) and
listeners drop their connections.
"""
from __future__ import annotations

import asyncio
import contextlib
import os
import threading
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from posa.errors import Timeout, TransportError
from posa.transport.inproc.wakeup import Sleepers
from posa.transport.nats.address import NatsAddress
from posa.transport.nats.direct import Writer, check, deliver
from posa.transport.nats.loop import event_loop
from posa.transport.nats.wire import DATA, HEADER, chunks

if TYPE_CHECKING:
    from nats.aio.msg import Msg
    from nats.aio.subscription import Subscription

__all__ = ["INSTALL", "Endpoint", "Outbound", "Link", "acquire", "release"]

INSTALL = "pip install 'posa-messaging[nats]'"
RECONNECT_WAIT = 0.1     # s between attempts at the same server
PING_INTERVAL = 5        # s; two unanswered pings and a silent server is given up
BATCH = 1 << 20          # bytes the pump queues before it writes them
CLOSE_GRACE = 2.0        # s a closing link waits for its server to take what it holds


class Endpoint(Protocol):
    def link_lost(self, why: str) -> None: ...

    def out_failed(self, out: Outbound, why: str) -> None: ...


class Outbound:
    """One direction of one connection, as its sender sees it."""

    __slots__ = ("subject", "reply", "seq", "frames", "blocked", "low", "owner")

    def __init__(self, subject: str, reply: str, hwm: int, owner: Endpoint) -> None:
        self.subject, self.reply, self.owner = subject, reply, owner
        self.seq = 0                        # under the link writer's lock
        self.frames: deque[bytes] = deque()
        self.blocked = Sleepers()           # senders held by the high-water mark
        self.low = hwm // 2

    def wait_for_room(self, hwm: int, timeout: float | None, check: Callable[[], None],
                      towards: str) -> None:
        frames = self.frames

        def room() -> bool | None:
            check()
            return True if len(frames) < hwm else None

        if self.blocked.sleep_until(room, timeout) is None:
            raise Timeout(f"send to {towards} blocked for {timeout} s: {hwm} frames are "
                          "queued and the NATS client is not taking them; raise "
                          "Options.high_water_mark or Options.send_timeout")


class Link:
    """A nats-py client shared by the endpoints of a process on one cluster."""

    def __init__(self, address: NatsAddress) -> None:
        self.address = address
        self.users = 0
        self.endpoints: dict[Endpoint, None] = {}
        self.queue: deque[Outbound | tuple[str, bytes, str]] = deque()
        self.loop = event_loop()
        self.nc: Any = None
        self.writer: Writer | None = None
        self._scheduled = True       # until the link is open
        self._closing = False
        self._waiting: asyncio.Task[None] | None = None     # for the socket to drain
        self.opened = asyncio.run_coroutine_threadsafe(self._open(), self.loop)

    async def _open(self) -> None:
        try:
            from nats.aio.client import Client
        except ImportError as exc:
            raise TransportError(f"the nats:// transport needs nats-py, which cannot be "
                                 f"imported ({exc}); {INSTALL}") from None
        nc = Client()
        settings: dict[str, Any] = {
            "dont_randomize": True, "allow_reconnect": True, "max_reconnect_attempts": -1,
            "reconnect_time_wait": RECONNECT_WAIT, "connect_timeout": 2,
            "ping_interval": PING_INTERVAL, "max_outstanding_pings": 2}
        await nc.connect(servers=self.address.urls, name=f"posa-{os.getpid()}",
                         error_cb=self._error, disconnected_cb=self._disconnected,
                         **settings)
        try:
            check(nc)
        except TransportError:
            await nc.close()
            raise
        self.nc = nc
        writer = Writer(nc)
        writer.install()
        self.writer = writer
        self._pump()

    @property
    def room(self) -> int:
        """Payload bytes per message after the header, on the server the client is
        on now (it learns each server's ``max_payload`` as it connects: the nodes
        of a cluster need not agree)."""
        nc = self.nc
        return 0 if nc is None else int(nc.max_payload) - HEADER.size

    def ready(self, timeout: float) -> None:
        try:
            self.opened.result(timeout)
        except TransportError:
            raise
        except Exception as exc:
            self.opened.cancel()
            raise TransportError(f"no NATS server of {self.address.cluster} answered "
                                 f"within {timeout} s ({type(exc).__name__}: {exc}); start "
                                 "one, or check the address") from None

    # -- sending (any thread) ------------------------------------------------------------

    def put(self, out: Outbound, frame: bytes) -> None:
        writer = self.writer
        if writer is not None and writer.mine and not self.queue and len(frame) <= self.room:
            with writer.lock:
                if self._waiting is None and not self.queue and self._send_now(out, frame,
                                                                              writer):
                    return
        out.frames.append(frame)
        self.queue.append(out)
        if not self._scheduled:
            self._kick()

    def control(self, subject: str, payload: bytes, reply: str = "") -> None:
        self.queue.append((subject, payload, reply))
        if not self._scheduled:
            self._kick()

    def _send_now(self, out: Outbound, frame: bytes, writer: Writer) -> bool:
        """Write ``frame`` from this thread if nothing is queued ahead of it (holding
        the writer's lock, as the pump does); ``False`` to queue it."""
        try:
            if not writer.send_now(out.subject, out.reply, HEADER.pack(DATA, out.seq),
                                   frame):
                return False
        except OSError as exc:       # lost with the socket: the connection ends
            with contextlib.suppress(RuntimeError):    # the loop is gone (exit)
                self.loop.call_soon_threadsafe(out.owner.out_failed, out, "the NATS "
                                               f"client could not publish ({exc})")
        out.seq += 1
        if writer.rest is not None and not self._scheduled:
            self._kick()             # the pump writes what the socket did not take
        return True

    def _kick(self) -> None:
        self._scheduled = True
        if self.writer is not None:
            with contextlib.suppress(RuntimeError):    # the loop is gone (exit)
                self.loop.call_soon_threadsafe(self._pump)

    # -- the pump (the loop) -------------------------------------------------------------

    def _pump(self) -> None:
        """Publish what is queued, until the socket's buffer is over its high-water
        mark; then a task waits for it to drain and pumps again. While it waits the
        pump stays scheduled, so senders queue without waking the loop."""
        writer = self.writer
        if self._waiting is not None or writer is None:
            return
        self._scheduled = False
        with writer.lock:
            if self._publish_queued(writer):     # senders queue while it waits
                self._waiting = self.loop.create_task(self._drain(writer))

    def _publish_queued(self, writer: Writer) -> bool:
        """``True`` if the socket's buffer filled before the queue emptied. A turn
        publishes what was queued when it began, no more: senders that keep the
        queue full must not keep the loop from reading the socket and hearing it
        break (a lost socket takes every write and holds none, so no buffer fills
        to stop the turn); the senders that queue during the turn wake the pump
        again."""
        queue = self.queue
        for _ in range(len(queue)):
            item = queue.popleft()
            try:
                if isinstance(item, tuple):
                    subject, payload, reply = item
                    writer.publish(subject, reply, payload)
                else:
                    self._publish(item, writer)
            except Exception as exc:
                if not isinstance(item, tuple):
                    item.owner.out_failed(item, "the NATS client could not publish "
                                          f"({type(exc).__name__}: {exc})")
            if writer.queued >= BATCH and writer.flush():
                return True
        return writer.flush()

    async def _drain(self, writer: Writer) -> None:
        try:
            await writer.drained()
        except Exception:        # the connection broke: the client reconnects and
            pass                 # resends what it holds; the endpoints hear link_lost
        self._waiting = None
        self._pump()

    def _publish(self, out: Outbound, writer: Writer) -> None:
        frame = out.frames.popleft()
        if out.blocked and len(out.frames) <= out.low:
            out.blocked.wake_all()
        seq = out.seq
        for kind, body in chunks(frame, self.room):
            out.seq = seq + 1
            writer.publish(out.subject, out.reply, HEADER.pack(kind, seq), body)
            seq += 1

    # -- subscriptions and events (the loop) ----------------------------------------------

    async def subscribe(self, subject: str, cb: Callable[[Msg], None]) -> Subscription:
        """Subscribe ``cb`` (called on the loop as each message is parsed)."""
        sub: Subscription = await self.nc.subscribe(subject)
        try:
            deliver(sub, cb)
        except TransportError:
            await self.unsubscribe(sub)
            raise
        await self.nc.flush(timeout=5)       # the server has the interest
        return sub

    async def unsubscribe(self, sub: Subscription) -> None:
        with contextlib.suppress(Exception):
            await sub.unsubscribe()

    async def _error(self, exc: Exception) -> None:
        """nats-py's errors: a lost server is heard through ``_disconnected``."""

    async def _disconnected(self) -> None:
        if self._closing:
            return
        why = (f"the NATS server this process used in {self.address.cluster} went away; "
               "frames in flight may be lost (posa's streams resend them)")
        for endpoint in list(self.endpoints):
            endpoint.link_lost(why)

    async def close(self, linger: float) -> None:
        """Publish what is queued (within ``linger``), then close the client; what
        its socket still holds after ``max(linger, CLOSE_GRACE)`` s (a stopped
        server takes none of it) is dropped with the socket."""
        self._closing = True
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._flushed(), linger)
        if self._waiting is not None:
            self._waiting.cancel()
        if self.nc is not None:
            try:        # a stopped server never drains what a graceful close waits on
                await asyncio.wait_for(self.nc.close(), max(linger, CLOSE_GRACE))
            except asyncio.TimeoutError:
                if self.writer is not None:
                    self.writer.abort()
            except Exception:
                pass

    async def _flushed(self) -> None:
        for _ in range(100_000):
            if not self.queue and not self._scheduled and self._waiting is None:
                break
            await asyncio.sleep(0.001)
        await self.nc.flush(timeout=5)


_links: dict[tuple[int, str], Link] = {}
_links_lock = threading.Lock()


def acquire(address: NatsAddress, owner: Endpoint, timeout: float) -> Link:
    """The process's link to ``address``'s servers, connected; ``owner`` hears its events."""
    key = (os.getpid(), address.key)
    with _links_lock:
        link = _links.get(key)
        if link is None or _failed(link):
            link = _links[key] = Link(address)
        link.users += 1
        link.endpoints[owner] = None
    try:
        link.ready(timeout)
    except BaseException:
        release(link, owner, 0.0)
        raise
    return link


def release(link: Link, owner: Endpoint, linger: float) -> None:
    """``owner`` is done with ``link``; the last user closes it (after ``linger``)."""
    with _links_lock:
        link.endpoints.pop(owner, None)
        link.users -= 1
        if link.users > 0:
            return
        key = (os.getpid(), link.address.key)
        if _links.get(key) is link:
            del _links[key]
    if link.opened.done() and not _failed(link):
        asyncio.run_coroutine_threadsafe(link.close(linger), link.loop)
    else:
        link.opened.cancel()


def _failed(link: Link) -> bool:
    opened = link.opened
    return opened.done() and (opened.cancelled() or opened.exception() is not None)
