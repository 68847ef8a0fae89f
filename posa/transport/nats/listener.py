"""The listening end of ``nats://``: ``NatsListener``, a subject of its own.

A listener subscribes to its subject (``posa.`` and 128 random bits unless the
address names one) on the process's link to the cluster; its address names every
server it was given, so a peer connected to any server of the cluster reaches it.
A connection is the reply subject its messages carry (the route): it says HELLO
first and is WELCOMEd (or RESET when ``max_connections`` are served); its DATA
and MORE messages are put back together in order by a ``Reassembly`` of its own.
A gap (NATS dropped a message), a frame over ``max_frame_size``, a connection
past ``idle_timeout``, a slow consumer (more than ``SLOW_FACTOR`` x
``high_water_mark`` frames unread) or the link losing its server drops the
connection: it hears RESET, and posa's streams resend on a new one.

The subscription callback runs on the thread that reads the client's socket; it
appends ``(route, frame)`` to the ready deque of
``posa.transport.inproc.receiver.Receiver`` and signals its descriptor, which is
what the reactor polls. A reactor that offers its poller (``attach``) is lent the
client's socket instead (``posa.transport.nats.polling``): it reads the socket
itself and drains the listener in the same turn.
"""
from __future__ import annotations

import time
from collections import Counter

from posa.errors import Closed, TransportError
from posa.transport.base import Options, Route
from posa.transport.inproc.receiver import Receiver, as_frame
from posa.transport.nats import link as links
from posa.transport.nats.address import NatsAddress
from posa.transport.nats.loop import Timer
from posa.transport.nats.protocol import Msg
from posa.transport.nats.wire import (
    CLOSE,
    DATA,
    HELLO,
    MORE,
    RESET,
    WELCOME,
    Gap,
    Oversize,
    Reassembly,
    pack,
    unpack,
)
from posa.transport.poller import PollerType

__all__ = ["NatsListener", "SLOW_FACTOR"]

SLOW_FACTOR = 16
_monotonic = time.monotonic
_WELCOME = pack(WELCOME, 0)


class _Route:
    __slots__ = ("inbound", "out", "seen")

    def __init__(self, inbound: Reassembly, out: links.Outbound, seen: float) -> None:
        self.inbound, self.out, self.seen = inbound, out, seen


class NatsListener(Receiver[tuple[Route, bytes]]):
    """A ``nats://SERVERS/SUBJECT`` listener; routes are reply subjects (``str``)."""

    _parents = False            # (in a forked child) the parent's listener

    def __init__(self, address: NatsAddress, options: Options) -> None:
        super().__init__(str(address), options)
        self.rejections: Counter[str] = Counter()
        self.subject = address.subject or ""
        self._routes: dict[str, _Route] = {}
        self._limit = SLOW_FACTOR * options.high_water_mark
        self._sub: int | None = None
        self._idle: Timer | None = None
        timeout = options.send_timeout or 10.0
        self._link = links.acquire(address, self, timeout)
        try:
            self._start(timeout)
        except BaseException:
            links.release(self._link, self, 0.0)
            raise

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"{len(self._routes)} connections"
        return f"<NatsListener {self.address} {state}>"

    def _start(self, timeout: float) -> None:
        self._sub = self._link.subscribe(self.subject, self._on_msg, timeout)
        idle = self._options.idle_timeout
        if idle is not None:
            self._idle = self._link.loop.call_later(idle / 4, self._sweep)

    # -- the thread that reads the client's socket ------------------------------------------

    def _on_msg(self, msg: Msg) -> None:
        route = msg.reply
        state = self._routes.get(route)
        if state is None:
            self._unusual(msg, route, None)
            return
        frame = state.inbound.whole(msg.data)
        if frame is None:
            frame = self._unusual(msg, route, state)
            if frame is None:
                return
        state.seen = _monotonic()
        if len(self._ready) >= self._limit:
            self._drop(route, "slow-consumer", f"{self._limit} frames were waiting "
                       "unread (a slow consumer): this frame is not delivered")
            return
        self._ready.append((route, frame))
        if not self._signalled:
            self._signal()
        if self._readers:
            self._readers.wake_one()

    def _unusual(self, msg: Msg, route: str, state: _Route | None) -> bytes | None:
        """What ``whole`` does not take: a chunk, a control message, garbage, a
        gap; the frame it completes, if any."""
        try:
            kind, seq, body = unpack(msg.data)
        except ValueError as exc:
            self.rejections["garbage"] += 1
            if route:
                self._drop(route, None, f"it sent what posa does not send: {exc}")
            return None
        if kind in (DATA, MORE) and state is not None:
            try:
                return state.inbound.feed(kind, seq, body)
            except Oversize as exc:
                self._drop(route, "oversize", f"it sent {exc}")
            except Gap as exc:
                self._drop(route, "gap", str(exc))
        elif kind == HELLO and route and not self._closed:
            self._hello(route)
        elif kind == CLOSE:
            self._routes.pop(route, None)
        elif route and kind in (DATA, MORE):
            self._link.control(route, pack(RESET, 0, b"the listener has no such "
                                           b"connection (dropped, or restarted)"))
        return None

    def _hello(self, route: str) -> None:
        if route not in self._routes:
            limit = self._options.max_connections
            if len(self._routes) >= limit:
                self._drop(route, "too-many-connections", f"it has {limit} connections "
                           "already (its max_connections)")
                return
            out = links.Outbound(route, "", self._options.high_water_mark, self)
            self._routes[route] = _Route(Reassembly(self._options.max_frame_size), out,
                                         time.monotonic())
        self._link.control(route, _WELCOME)

    def _drop(self, route: str, cause: str | None, why: str) -> None:
        """Forget ``route`` and tell it why (counted under ``cause``)."""
        state = self._routes.pop(route, None)
        if cause is not None:
            self.rejections[cause] += 1
        text = f"the nats listener {self.address} dropped this connection: {why}"
        self._link.control(route, pack(RESET, 0, text.encode()))
        if state is not None:
            state.out.blocked.wake_all()

    def _sweep(self) -> None:
        idle = self._options.idle_timeout
        if self._closed or idle is None:
            return
        now = time.monotonic()
        for route, state in list(self._routes.items()):
            if now - state.seen > idle and not state.out.frames:
                self._drop(route, "idle-timeout", f"no frame for {idle} s")
        self._idle = self._link.loop.call_later(idle / 4, self._sweep)

    def link_lost(self, why: str) -> None:
        for route in list(self._routes):
            self._drop(route, None, why)

    # -- a reactor's poller (posa.transport.nats.polling) ---------------------------------
    def attach(self, share: PollerType) -> bool:
        """Lend the client's socket to the reactor that polls ``share``; False
        (it keeps polling ``fileno()``) if another endpoint lent it already."""
        return not self._closed and self._link.client.lend(share, self)

    def serve(self, fd: int, mask: int) -> None:
        self._link.client.serve(fd, mask)

    def detach(self) -> None:
        self._link.client.reclaim(self)

    # -- the owner's threads ----------------------------------------------------------------

    def _closed_error(self) -> Closed:
        if self._parents:
            return Closed(links.parents(self.address))
        return Closed(f"the nats listener {self.address} is closed; listen again")

    def forked(self) -> None:
        """(in a forked child, from the link's fork hook) The parent's listener:
        closed here, without a word to its connections (see ``Receiver._forked``)."""
        self._forked()
        self._parents = True

    def recv_nowait(self) -> tuple[Route, bytes] | None:
        """The next ``(route, frame)``, or ``None``. Raises ``Closed`` after close."""
        if self._closed:
            raise self._closed_error()
        ready = self._ready
        try:
            return ready.popleft()
        except IndexError:
            if not self._unsignal():
                return None
            try:
                return ready.popleft()
            except IndexError:
                return None

    def recv(self, timeout: float | None = None) -> tuple[Route, bytes]:
        """Block for the next ``(route, frame)``. Raises ``Timeout``, ``Closed``."""
        item = self.recv_nowait()
        if item is not None:
            return item
        return self._wait_for_frame(self.recv_nowait, timeout,
                                    f"the nats listener {self.address}")

    def send(self, route: Route, frame: bytes) -> None:
        """Send ``frame`` to the connection ``route`` came from; blocks while
        ``high_water_mark`` frames to it wait for the NATS client. Raises
        ``TransportError``, ``Timeout`` after ``send_timeout``, ``Closed``."""
        if self._closed:
            raise self._closed_error()
        state = self._routes.get(route)  # type: ignore[call-overload]
        if state is None:
            raise TransportError(f"the nats listener {self.address} has no connection "
                                 f"{route!r}: it was closed or dropped; a route is valid "
                                 "only while its connection is open")
        if frame.__class__ is not bytes:
            frame = as_frame(frame)
        limit = self._options.max_frame_size
        if len(frame) > limit:
            raise TransportError(f"a frame of {len(frame)} bytes exceeds max_frame_size "
                                 f"{limit} of the nats listener {self.address}; split it "
                                 "or raise Options.max_frame_size")
        out, hwm = state.out, self._options.high_water_mark
        if len(out.frames) >= hwm:
            out.wait_for_room(hwm, self._options.send_timeout,
                              lambda: self._check_route(route),
                              f"connection {route!r} of the nats listener {self.address}")
        self._link.put(out, frame)

    def _check_route(self, route: Route) -> None:
        if self._closed:
            raise self._closed_error()
        if route not in self._routes:
            raise TransportError(f"connection {route!r} of the nats listener "
                                 f"{self.address} was dropped")

    def close(self) -> None:
        """Stop listening and drop every connection (each hears RESET). Idempotent."""
        if not self._mark_closed():
            return
        link = self._link
        link.client.reclaim(self)
        link.loop.call_soon(self._shut)
        links.release(link, self, self._options.linger)
        self._release()

    def _shut(self) -> None:
        if self._idle is not None:
            self._idle.cancel()
        for route in list(self._routes):
            self._drop(route, None, "it was closed")
        if self._sub is not None:
            self._link.unsubscribe(self._sub)
        self._ready.clear()
