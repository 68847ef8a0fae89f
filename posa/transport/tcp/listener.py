"""The listening end of ``tcp://``: ``TcpListener``.

Strategy.

*One descriptor for the reactor.* A listener owns an inner poller (epoll on
Linux: ``posa.transport.poller``) holding its listening socket, every accepted
connection and a wake-up socket. ``fileno()`` is that poller's descriptor,
readable whenever one of them is ready, so a reactor waits on one descriptor per
listener however many peers are connected. ``recv_nowait()`` serves queued
frames; when none are queued it polls the inner poller without waiting, accepts,
reads each ready connection once into one reused 256 KiB buffer (no allocation
per read: see the allocator pitfall in the anchors' RESULTS.md), and queues
every complete frame as ``(route, frame)``. One buffer's worth per connection
and poll bounds the queue. ``send`` writes at once; what the kernel does not
take waits in that connection's ``SendQueue``, the connection is registered for
writability, and the next poll (which the poller's readiness brings about)
flushes the waiting frames in one write.

*Bad peers.* A connection that fails the greeting, announces a frame over
``max_frame_size`` or closes mid-frame is closed and counted in ``rejections``;
the frames it completed before are delivered; no other connection notices.

*Hygiene.* A connection that sends no whole frame in time, stalls inside a
frame or stays idle is shed, and a new connection over ``max_connections``
(per listener or per source address) sheds one that never completed a frame,
else the longest idle one (``posa.transport.hygiene``: the policy;
``posa.transport.tcp.guard``: counting, throttled logs, the accept back-off
when descriptors run out). The poll reads the clock once (``_now``); reads and
sends stamp their connection with it, so the hot path adds no clock call. The
alarm thread (``posa.transport.tcp.alarm``) wakes the listener when a deadline
falls due while nothing else happens.

*Closing.* ``close()`` flushes, ends every connection and hands the sockets to
the reaper (``posa.transport.tcp.ending``).

*Served by a reactor.* A reactor that offers its own poller takes these
descriptors into it (``attach``, ``posa.transport.tcp.sharing``): one poll per
event instead of two, and ``recv_nowait`` then serves queued frames only.

*Threads.* A listener is used by one thread at a time, except ``close()``,
which may come from any thread and wakes a blocked ``recv`` with ``Closed``
through the wake-up socket.
"""
from __future__ import annotations

import enum
import itertools
import logging
import os
import socket
import threading
import time
from collections import Counter, deque
from itertools import repeat
from typing import Final

from posa.errors import Closed, ProtocolError, Timeout, TransportError
from posa.transport.base import Options, Route
from posa.transport.framing import GREETING, MAX_LENGTH, frame_header, pack_length
from posa.transport.poller import READ, WRITE, Poller, readable, writable
from posa.transport.refusals import clip
from posa.transport.tcp.accepting import Accepted, AcceptPath
from posa.transport.tcp.address import format_address
from posa.transport.tcp.bursts import BurstSending
from posa.transport.tcp.closing import reaper
from posa.transport.tcp.ending import ListenerClosing
from posa.transport.tcp.guard import Guard
from posa.transport.tcp.sharing import SharedPolling
from posa.transport.tcp.sockets import DIRECT_LIMIT, NOSIGNAL, error_text, too_large

__all__ = ["TcpListener"]

log = logging.getLogger("posa.transport.tcp")

_LISTENER_READ_SIZE = 256 * 1024   # one reused buffer per listener


class _Role(enum.Enum):
    """What a descriptor of the inner poller is, when it is no connection."""

    ACCEPT = "the listening socket"
    WAKE = "the wake-up socket"


# module globals, so that the poll loop compares identities without a lookup
_ACCEPT: Final = _Role.ACCEPT
_WAKE: Final = _Role.WAKE


class TcpListener(AcceptPath, SharedPolling, BurstSending, ListenerClosing):
    """A bound ``tcp://`` endpoint; see the module docstring for its design.

    Routes are ints, one per accepted connection, never reused by a listener."""

    def __init__(self, sock: socket.socket, options: Options) -> None:
        host, port = sock.getsockname()[:2]
        self.address = format_address(host, port)
        self.rejections: Counter[str] = Counter()
        self._sock = sock
        self._max_frame = min(options.max_frame_size, MAX_LENGTH)
        self._guard = Guard(self.address, options, self.rejections, self._wake_up)
        self._hygiene = self._guard.hygiene
        self._now = time.monotonic()           # read once per poll
        self._accepting = True                 # the listening socket is watched
        self._shed_for_descriptor = False
        self._high_water_mark = options.high_water_mark
        self._send_timeout = options.send_timeout
        self._linger = options.linger
        self._peers: dict[Route, Accepted] = {}
        self._ids = itertools.count(1)
        self._ready: deque[tuple[int, bytes]] = deque()
        self._buf = bytearray(_LISTENER_READ_SIZE)
        self._view = memoryview(self._buf)
        self._io_lock = threading.Lock()      # held by the thread doing I/O
        self._close_lock = threading.Lock()
        self._closed = False
        self._ended = False                    # every step of close() done (ending.py)
        self._pid = os.getpid()                # a forked child's copy is not its to end
        self._poller = Poller()
        self._own = None        # the inner poller while a reactor's serves (sharing.py)
        self._wake_r, self._wake_w = socket.socketpair()
        # what each descriptor's events mean: _ACCEPT, _WAKE or a connection (Accepted)
        self._owners: dict[int, Accepted | _Role] = {sock.fileno(): _ACCEPT,
                                           self._wake_r.fileno(): _WAKE}
        try:
            self._wake_r.setblocking(False)
            self._wake_w.setblocking(False)
            self._poller.register(sock, READ)
            self._poller.register(self._wake_r, READ)
        except BaseException:
            self._poller.close()
            self._wake_r.close()
            self._wake_w.close()
            raise

    def fileno(self) -> int:
        """The inner poller's descriptor: readable when a poll has work."""
        if self._closed:
            raise self._closed_error()
        return self._poller.fileno()

    def pending(self) -> bool:
        """True if frames are queued (``recv_nowait`` returns one at once)."""
        return bool(self._ready)

    def recv_nowait(self) -> tuple[Route, bytes] | None:
        """The next ``(route, frame)``, or ``None``. Raises ``Closed`` after close."""
        if self._closed:
            raise self._closed_error()
        ready = self._ready
        if not ready:
            if self._own is not None:   # served by a reactor: it polls (sharing.py)
                return None
            self._poll(0)
            if not ready:
                return None
        return ready.popleft()

    def recv(self, timeout: float | None = None) -> tuple[Route, bytes]:
        """Block for the next ``(route, frame)``. Raises ``Timeout``, ``Closed``."""
        deadline = None if timeout is None else time.monotonic() + timeout
        ready = self._ready
        while True:
            if self._closed:
                raise self._closed_error()
            if ready:
                return ready.popleft()
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            self._poll(remaining)
            if not ready and remaining == 0.0:
                raise Timeout(f"no frame arrived at {self.address} within {timeout} s")

    def send(self, route: Route, frame: bytes) -> None:
        """Send ``frame`` on connection ``route``. Blocks, at most ``send_timeout``,
        only while ``high_water_mark`` entries wait for that connection.

        Raises ``TransportError`` (frame too large, connection gone), ``Timeout``,
        ``Closed``."""
        size = len(frame)
        if size > self._max_frame:
            raise too_large(size, self._max_frame, f"from {self.address}")
        with self._io_lock:
            peer = self._peers.get(route)
            if peer is None or self._closed or peer.out or size > DIRECT_LIMIT:
                self._send_queued(route, frame)
                return
            peer.tracked.active = self._now     # (``_room``'s, for a connection with room)
            self._write_out(peer, route, pack_length(size) + frame)

    def _send_queued(self, route: Route, frame: bytes) -> None:
        """``send`` of a frame that cannot go straight out: behind queued frames,
        large, or on a connection gone or closed (raises). The I/O lock is held."""
        peer = self._room(route)
        out = peer.out
        if out or len(frame) > DIRECT_LIMIT:
            out.push(frame)
            self._flush(peer)
            if peer.route not in self._peers:
                raise self._gone_error(route)
            return
        self._write_out(peer, route, frame_header(len(frame)) + frame)

    def __enter__(self) -> TcpListener:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"{len(self._peers)} connections"
        return f"<TcpListener {self.address} {state}>"

    # -- the following run with the I/O lock held ----------------------------

    def _poll(self, timeout: float | None) -> None:
        """Wait at most ``timeout`` for the inner poller, then serve what it
        reports: accept, flush, read. Raises ``Closed`` once closed."""
        with self._io_lock:
            if self._closed:
                raise self._closed_error()
            if self._own is not None:
                raise TransportError(f"the listener {self.address} is served by a reactor; "
                                     "remove it from the reactor to receive directly")
            try:
                events = self._poller.poll(-1 if timeout is None else max(0.0, timeout))
            except OSError as exc:
                raise TransportError(f"polling {self.address} failed: "
                                     f"{error_text(exc)}") from None
            now = self._now = time.monotonic()
            event = self._event
            for fd, mask in events:
                event(fd, mask)
            self._after_events(now)
            if self._closed:
                raise self._closed_error()

    def _event(self, fd: int, mask: int) -> None:
        """Serve one event of the poller: accept, wake-up, flush, read."""
        owner = self._owners.get(fd)
        if owner is _ACCEPT:
            self._accept()
        elif owner is _WAKE:
            self._drain_wake()
        elif owner is not None:     # (None: dropped earlier in this round)
            if mask == READ:        # input alone, the common event: no calls to tell
                self._read(owner)
                return
            if writable(mask):
                self._flush(owner)
            if readable(mask) and owner.route in self._peers:
                self._read(owner)

    def _after_events(self, now: float) -> None:
        if now >= self._guard.check_at:
            self._sweep(now)

    def _read(self, peer: Accepted) -> None:
        try:
            size = peer.sock.recv_into(self._buf)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            cause = "truncated" if peer.decoder.buffered else None
            self._drop(peer, cause, f"the connection failed: {error_text(exc)}")
            return
        decoder = peer.decoder
        if not size:
            try:
                decoder.finish()
            except ProtocolError as exc:
                self._drop(peer, "truncated", str(exc))
            else:
                self._drop(peer, None, "closed by the peer")
            return
        greeted = decoder.greeted
        try:
            frames = decoder.feed(self._view[:size])
        except ProtocolError as exc:
            self._ready.extend(zip(repeat(peer.route), decoder.frames_before_failure))
            self._drop(peer, decoder.failure, str(exc))
            return
        if len(frames) == 1:    # the common case: no repeat() (it parses keywords), no zip
            self._ready.append((peer.route, frames[0]))
        elif frames:
            self._ready.extend(zip(repeat(peer.route), frames))
        if self._hygiene.read(peer.tracked, self._now, bool(frames), decoder.buffered > 0):
            self._guard.arm(self._now)
        if not greeted and decoder.greeted:
            peer.out.push_raw(GREETING)
            self._flush(peer)

    def _flush(self, peer: Accepted) -> None:
        """Hand the kernel what it takes of ``peer.out`` without waiting; watch
        for writability while something is left. Drops ``peer`` if it failed."""
        out = peer.out
        while out:
            data = out.head()
            try:
                sent = peer.sock.send(data, NOSIGNAL)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:
                self._drop(peer, None, f"the connection failed: {error_text(exc)}")
                return
            out.consume(sent)
            if sent < len(data):
                break
        self._watch_writes(peer, bool(out))

    def _watch_writes(self, peer: Accepted, on: bool) -> None:
        if peer.watching_writes != on:
            peer.watching_writes = on
            self._poller.modify(peer.sock, READ | WRITE if on else READ)

    def _wake_up(self) -> None:
        """Make the next (or a blocked) poll return: from any thread."""
        try:
            self._wake_w.send(b"\0")
        except OSError:
            pass  # full (a wake-up is pending already) or closed

    def _drain_wake(self) -> None:
        try:
            while self._wake_r.recv(64):
                pass
        except OSError:
            pass  # drained (BlockingIOError): the wake-up has done its job

    def _drop(self, peer: Accepted, cause: str | None, detail: str,
              graceful: bool = False) -> None:
        """Close ``peer``; count it in ``rejections`` under ``cause`` if given.
        ``graceful``: end the sending side and let the reaper close it."""
        del self._peers[peer.route]
        del self._owners[peer.sock.fileno()]
        self._hygiene.forget(peer.route)
        try:
            self._poller.unregister(peer.sock)
        except (OSError, ValueError, KeyError):
            pass                  # closing below takes it out of the set as well
        try:
            if not graceful:
                raise OSError
            peer.sock.shutdown(socket.SHUT_WR)
            reaper.adopt(peer.sock, time.monotonic() + self._linger)
        except OSError:
            peer.sock.close()
        if cause is None:
            log.debug("%s: connection %d from %s ended: %s", self.address, peer.route,
                      peer.remote, detail)
            return
        self._guard.refuse(cause, "%s: dropped connection %d from %s (%s): %s",
                           self.address, peer.route, peer.remote, cause, clip(detail))

    def _gone_error(self, route: Route) -> TransportError:
        return TransportError(f"connection {route!r} of {self.address} is gone (the "
                              "peer closed it or it was dropped); the frame was not "
                              "sent")

    def _closed_error(self) -> Closed:
        return Closed(f"the listener {self.address} is closed; listen again to go on")
