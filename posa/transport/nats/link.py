"""One nats-py client per cluster per process, and the pump that publishes for
every endpoint on it.

Endpoints on the same servers (in any order) share a ``Link``, which dials the
servers in the order the first address used lists them, the first first, and
fails over in that order too: list a nearby server first. A link is counted:
the last endpoint to let go closes it, after what was queued has left.

Sending threads never touch the client: ``put`` appends the frame to its
``Outbound`` (one per direction of a connection: its subject, its numbering, its
queue) and that outbound to the link's queue, and wakes the pump only if it is
not awake already, so a burst costs one ``call_soon_threadsafe``. The pump, on
the loop, cuts frames to the server's ``max_payload``, numbers and publishes them.

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
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Protocol

from posa.errors import Timeout, TransportError
from posa.transport.inproc.wakeup import Sleepers
from posa.transport.nats.address import NatsAddress
from posa.transport.nats.loop import event_loop
from posa.transport.nats.wire import HEADER, chunks, pack

if TYPE_CHECKING:
    from nats.aio.msg import Msg
    from nats.aio.subscription import Subscription

__all__ = ["INSTALL", "Endpoint", "Outbound", "Link", "acquire", "release"]

INSTALL = "pip install 'posa-messaging[nats]'"
RECONNECT_WAIT = 0.1     # s between attempts at the same server
PING_INTERVAL = 5        # s; two unanswered pings and a silent server is given up


class Endpoint(Protocol):
    def link_lost(self, why: str) -> None: ...

    def out_failed(self, out: Outbound, why: str) -> None: ...

    def slow_consumer(self, route: str) -> None: ...


class Outbound:
    """One direction of one connection, as its sender sees it."""

    __slots__ = ("subject", "reply", "seq", "frames", "blocked", "low", "owner")

    def __init__(self, subject: str, reply: str, hwm: int, owner: Endpoint) -> None:
        self.subject, self.reply, self.owner = subject, reply, owner
        self.seq = 0                        # the pump's alone
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
        self.by_sid: dict[int, Endpoint] = {}
        self.queue: deque[Outbound | tuple[str, bytes, str]] = deque()
        self.loop = event_loop()
        self.room = 0                # payload bytes per message after the header
        self.nc: Any = None
        self._scheduled = True       # until the pump runs
        self._closing = False
        self._wake: asyncio.Event | None = None
        self._pump_task: asyncio.Task[None] | None = None
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
        self.nc, self.room = nc, nc.max_payload - HEADER.size
        self._wake = asyncio.Event()
        self._pump_task = asyncio.get_running_loop().create_task(self._pump())
        self._scheduled = False
        if self.queue:
            self._kick()

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
        out.frames.append(frame)
        self.queue.append(out)
        if not self._scheduled:
            self._kick()

    def control(self, subject: str, payload: bytes, reply: str = "") -> None:
        self.queue.append((subject, payload, reply))
        if not self._scheduled:
            self._kick()

    def _kick(self) -> None:
        self._scheduled = True
        wake = self._wake
        if wake is not None:
            with contextlib.suppress(RuntimeError):    # the loop is gone (exit)
                self.loop.call_soon_threadsafe(wake.set)

    # -- the pump (the loop) -------------------------------------------------------------

    async def _pump(self) -> None:
        wake, queue = self._wake, self.queue
        assert wake is not None
        while True:
            await wake.wait()
            wake.clear()
            self._scheduled = False
            while queue:
                item = queue.popleft()
                try:
                    if isinstance(item, tuple):
                        subject, payload, reply = item
                        await self.nc.publish(subject, payload, reply=reply)
                    else:
                        await self._publish(item)
                except Exception as exc:
                    if not isinstance(item, tuple):
                        item.owner.out_failed(item, "the NATS client could not publish "
                                              f"({type(exc).__name__}: {exc})")

    async def _publish(self, out: Outbound) -> None:
        frame = out.frames.popleft()
        if out.blocked and len(out.frames) <= out.low:
            out.blocked.wake_all()
        seq, publish = out.seq, self.nc.publish
        for kind, body in chunks(frame, self.room):
            out.seq = seq + 1
            await publish(out.subject, pack(kind, seq, body), reply=out.reply)
            seq += 1

    # -- subscriptions and events (the loop) ----------------------------------------------

    async def subscribe(self, subject: str, cb: Callable[[Msg], Awaitable[None]],
                        owner: Endpoint) -> Subscription:
        sub: Subscription = await self.nc.subscribe(subject, cb=cb)
        self.by_sid[sub._id] = owner
        await self.nc.flush(timeout=5)       # the server has the interest
        return sub

    async def unsubscribe(self, sub: Subscription) -> None:
        self.by_sid.pop(sub._id, None)
        with contextlib.suppress(Exception):
            await sub.unsubscribe()

    async def _error(self, exc: Exception) -> None:
        sid = getattr(exc, "sid", None)
        owner = self.by_sid.get(sid) if sid is not None else None
        if owner is not None:
            owner.slow_consumer(getattr(exc, "reply", "") or "")

    async def _disconnected(self) -> None:
        if self._closing:
            return
        why = (f"the NATS server this process used in {self.address.cluster} went away; "
               "frames in flight may be lost (posa's streams resend them)")
        for endpoint in list(self.endpoints):
            endpoint.link_lost(why)

    async def close(self, linger: float) -> None:
        self._closing = True
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._flushed(), linger)
        if self._pump_task is not None:
            self._pump_task.cancel()
        if self.nc is not None:
            with contextlib.suppress(Exception):
                await self.nc.close()

    async def _flushed(self) -> None:
        for _ in range(100_000):
            if not self.queue and not self._scheduled:
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
