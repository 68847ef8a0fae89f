"""``tcp://HOST:PORT``: length-prefixed frames over plain TCP sockets.

The byte format is ``transports.framing`` (greeting, then u32-prefixed frames);
this module only moves those bytes. ``tcp://127.0.0.1:0`` and ``tcp://[::1]:0``
bind a free port, which ``Listener.address`` then names.

Strategy.

*Listener: one descriptor for the reactor.* A listener owns an inner selector
(epoll on Linux) holding its listening socket, every accepted connection and a
wake-up socket. ``fileno()`` is that selector's descriptor, readable whenever
one of them is ready, so a reactor waits on one descriptor per listener however
many peers are connected. ``recv_nowait()`` serves queued frames; when none are
queued it polls the inner selector without waiting, accepts, reads each ready
connection once into one reused 256 KiB buffer (no allocation per read: see the
allocator pitfall in the anchors' RESULTS.md), and queues every complete frame
as ``(route, frame)``. One buffer's worth per connection and poll bounds the
queue. ``Listener.send`` writes at once; what the kernel does not take waits in
that connection's ``SendQueue``, the connection is registered for writability,
and the next poll (which the selector's readiness brings about) flushes the
waiting frames in one write.

*Bad peers.* A connection that fails the greeting, announces a frame over
``max_frame_size``, closes mid-frame, or arrives past ``max_connections`` is
closed and counted in ``rejections``; the frames it completed before are
delivered; no other connection notices.

*Connection: coalesced writes.* A system call per 100-byte frame would cap a
sender at ~200k frames/s (on loopback the kernel delivers to the receiver inside
the sender's call). An idle connection writes a frame at once, so a request
costs one system call and no thread hop. A frame that follows the last write
within ``_BURST_GAP`` (and no answer came in between) joins a ``SendQueue``
instead; the sender writes the queue itself every ``_SYNC_FLUSH`` frames, and a
flusher thread, woken when the queue stops being empty, takes what the burst
leaves behind after ``_TAIL_DELAY``, so every frame leaves without waiting for
a next ``send`` (``recv`` and ``close`` write the queue at once). The flusher
also waits for room in the kernel's buffer when the listener reads slowly;
``send`` blocks only while ``high_water_mark`` entries wait in the queue (beyond
the kernel's buffer of a few MiB; a frame over 64 KiB counts as two). The
flusher ends after ``_FLUSHER_IDLE`` seconds without work.

*Closing without loss.* A TCP socket closed while input is unread, or receiving
input after it was closed, answers with a reset, and a reset makes the other
kernel discard what its application has not read yet. So a connection's
``close()`` ends only its sending side and hands the socket to a reaper thread,
which discards input until the listener ends its side too (or ``linger`` runs
out) and only then closes it; a program that sends, closes and exits keeps
the reaper alive until then. A closing listener hands its connections to the
reaper the same way; a listener that sees a connection's stream end has read
all of it, and closes that socket at once.

*Threads.* A listener is used by one thread at a time, except ``close()``. A
connection may be used by several threads (writes are serialised by one lock).
``close()`` may come from any thread and wakes a blocked ``recv`` with
``Closed``, through a wake-up socket (the connection makes its own on the first
blocking wait). Sockets are released only once no thread waits on them.

Every ``OSError`` is translated here into ``TransportError``, ``Closed`` or
``Timeout`` with the address in the message.
"""
from __future__ import annotations

import atexit
import errno
import itertools
import logging
import math
import select
import selectors
import socket
import threading
import time
from collections import Counter, deque
from itertools import repeat
from typing import Callable

from posa.errors import Closed, ProtocolError, Timeout, TransportError
from transports.base import Options, Route
from transports.framing import GREETING, MAX_LENGTH, FrameDecoder, SendQueue, frame_header

__all__ = ["TcpTransport", "TcpListener", "TcpConnection", "parse_address",
           "format_address"]

log = logging.getLogger(__name__)

_LISTENER_READ_SIZE = 256 * 1024   # one reused buffer per listener
_CONNECTION_READ_SIZE = 64 * 1024  # one reused buffer per connection
_DIRECT_LIMIT = 64 * 1024          # frames up to this size are written with their header
_BURST_GAP = 50e-6                 # s: a send this soon after a write joins the queue
_SYNC_FLUSH = 256                  # queued entries at which the sender writes them itself
_TAIL_DELAY = 100e-6               # s: the flusher's pause before it takes a burst's tail
_FLUSHER_IDLE = 1.0                # s: an idle flusher thread ends after this long
_ACCEPT_BATCH = 64                 # connections accepted per poll
_REAP_POLL = 0.05                  # s: how often the reaper takes new sockets in
_NOSIGNAL = getattr(socket, "MSG_NOSIGNAL", 0)
_ACCEPT = object()                 # selector tag of the listening socket
_WAKE = object()                   # selector tag of the wake-up socket
_GONE = (errno.EPIPE, errno.ECONNRESET, errno.ECONNABORTED, errno.ENOTCONN,
         errno.ESHUTDOWN, errno.ETIMEDOUT)


def parse_address(address: str) -> tuple[str, int]:
    """``"tcp://127.0.0.1:7000"`` -> ``("127.0.0.1", 7000)``; IPv6 hosts in
    brackets (``tcp://[::1]:7000``). Raises ``TransportError`` if malformed."""
    scheme, sep, rest = address.partition("://")
    host, port_text = "", ""
    if sep and scheme == "tcp":
        if rest.startswith("["):
            host, bracket, tail = rest[1:].partition("]")
            if bracket and tail.startswith(":"):
                port_text = tail[1:]
        else:
            host, _, port_text = rest.rpartition(":")
            if ":" in host:
                host = ""
    if not host or not port_text.isdigit() or int(port_text) > 65535:
        raise TransportError(f"{address!r} is not a tcp address; write it as "
                             "tcp://HOST:PORT (tcp://127.0.0.1:7000, tcp://[::1]:7000; "
                             "port 0 picks a free port)")
    return host, int(port_text)


def format_address(host: str, port: int) -> str:
    """The URI of ``host``, ``port``: ``tcp://[::1]:7000`` for IPv6 hosts."""
    return f"tcp://[{host}]:{port}" if ":" in host else f"tcp://{host}:{port}"


def _reason(exc: OSError) -> str:
    """A short text for ``exc`` without Python's ``[Errno n]`` decoration."""
    if isinstance(exc, TimeoutError) and not exc.strerror:
        return "timed out"
    return (exc.strerror or str(exc) or type(exc).__name__).lower()


def _ms(timeout: float | None) -> int | None:
    """A poll() timeout in whole milliseconds, rounded up."""
    return None if timeout is None else max(0, math.ceil(timeout * 1000))


def _too_large(size: int, limit: int, where: str) -> TransportError:
    return TransportError(f"cannot send a frame of {size} bytes {where}: the limit is "
                          f"{limit} bytes (Options.max_frame_size); split it or raise "
                          "the limit on both sides")


class _Reaper:
    """Closes the sockets that closed endpoints hand over (their sending side
    already ended) once the other side has ended too, or at their deadline,
    discarding what still arrives.

    One thread for the process, started when a socket is handed over and ended
    when none is left; at interpreter exit, it is given until the last deadline
    to finish, so that a program that sends, closes and exits loses nothing."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._sockets: dict[socket.socket, float] = {}
        self._thread: threading.Thread | None = None

    def adopt(self, sock: socket.socket, deadline: float) -> None:
        with self._lock:
            self._sockets[sock] = deadline
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, daemon=True,
                                                name="posa-tcp-reaper")
                self._thread.start()

    def finish(self) -> None:
        """Wait for the sockets handed over so far (until their deadlines)."""
        with self._lock:
            thread = self._thread
            last = max(self._sockets.values(), default=0.0)
        if thread is not None:
            thread.join(max(0.0, last - time.monotonic()) + _REAP_POLL)

    def _run(self) -> None:
        sink = bytearray(_CONNECTION_READ_SIZE)
        while True:
            with self._lock:
                if not self._sockets:
                    self._thread = None
                    return
                waiting = list(self._sockets.items())
            poller = select.poll()
            for sock, _ in waiting:
                poller.register(sock, select.POLLIN)
            first = min(deadline for _, deadline in waiting)
            ready = {fd for fd, _ in poller.poll(
                _ms(min(_REAP_POLL, max(0.0, first - time.monotonic()))))}
            now = time.monotonic()
            for sock, deadline in waiting:
                done = now >= deadline
                if not done and sock.fileno() in ready:
                    try:
                        done = not sock.recv_into(sink)
                    except (BlockingIOError, InterruptedError):
                        pass
                    except OSError:
                        done = True   # reset: nothing more will come
                if done:
                    with self._lock:
                        del self._sockets[sock]
                    sock.close()


_reaper = _Reaper()
atexit.register(_reaper.finish)


class TcpTransport:
    """The ``tcp`` scheme: ``listen`` binds, ``connect`` dials."""

    schemes = ("tcp",)

    def listen(self, address: str, options: Options) -> TcpListener:
        """Bind ``address``; port 0 picks a free port. Raises ``TransportError``."""
        host, port = parse_address(address)
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                       flags=socket.AI_PASSIVE)
        except OSError as exc:
            raise TransportError(f"cannot listen on {address}: host {host!r} does not "
                                 f"resolve ({_reason(exc)}); use an IP address such "
                                 "as 127.0.0.1") from None
        family, kind, proto, _, where = infos[0]
        sock = socket.socket(family, kind, proto)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(where)
            sock.listen(socket.SOMAXCONN)
            sock.setblocking(False)
            return TcpListener(sock, options)
        except OSError as exc:
            sock.close()
            hint = {
                errno.EADDRINUSE: "; another socket is bound there: pick another port "
                                  "or port 0 for a free one",
                errno.EADDRNOTAVAIL: "; no interface of this host has that address",
                errno.EACCES: "; ports below 1024 need privileges: pick a higher port",
            }.get(exc.errno or 0, "")
            raise TransportError(f"cannot listen on {address}: "
                                 f"{_reason(exc)}{hint}") from None

    def connect(self, address: str, options: Options) -> TcpConnection:
        """Connect to the listener at ``address``, waiting at most
        ``send_timeout``. Raises ``TransportError``."""
        host, port = parse_address(address)
        try:
            sock = socket.create_connection((host, port), timeout=options.send_timeout)
        except ConnectionRefusedError:
            raise TransportError(f"cannot connect to {address}: connection refused; "
                                 "is a posa peer listening there?") from None
        except socket.gaierror as exc:
            raise TransportError(f"cannot connect to {address}: host {host!r} does "
                                 f"not resolve ({_reason(exc)})") from None
        except TimeoutError:
            raise TransportError(f"cannot connect to {address}: no answer within "
                                 f"{options.send_timeout} s; check the address and "
                                 "that the host is reachable") from None
        except OSError as exc:
            raise TransportError(f"cannot connect to {address}: {_reason(exc)}") from None
        try:
            return TcpConnection(sock, address, options)
        except OSError as exc:
            sock.close()
            raise TransportError(f"cannot connect to {address}: {_reason(exc)}") from None
        except BaseException:
            sock.close()
            raise


class _Peer:
    """One accepted connection of a listener."""

    __slots__ = ("route", "sock", "remote", "decoder", "out", "watching_writes")

    def __init__(self, route: int, sock: socket.socket, remote: str,
                 decoder: FrameDecoder) -> None:
        self.route = route
        self.sock = sock
        self.remote = remote
        self.decoder = decoder
        self.out = SendQueue()            # what the kernel has not taken yet
        self.watching_writes = False      # registered for EVENT_WRITE


class TcpListener:
    """A bound ``tcp://`` endpoint; see the module docstring for its design.

    Routes are ints, one per accepted connection, never reused by a listener."""

    def __init__(self, sock: socket.socket, options: Options) -> None:
        host, port = sock.getsockname()[:2]
        self.address = format_address(host, port)
        self.rejections: Counter[str] = Counter()
        self._sock = sock
        self._max_frame = min(options.max_frame_size, MAX_LENGTH)
        self._max_connections = options.max_connections
        self._high_water_mark = options.high_water_mark
        self._send_timeout = options.send_timeout
        self._linger = options.linger
        self._peers: dict[int, _Peer] = {}
        self._ids = itertools.count(1)
        self._ready: deque[tuple[int, bytes]] = deque()
        self._buf = bytearray(_LISTENER_READ_SIZE)
        self._view = memoryview(self._buf)
        self._io_lock = threading.Lock()      # held by the thread doing I/O
        self._close_lock = threading.Lock()
        self._closed = False
        self._selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        try:
            self._wake_r.setblocking(False)
            self._wake_w.setblocking(False)
            self._selector.register(sock, selectors.EVENT_READ, _ACCEPT)
            self._selector.register(self._wake_r, selectors.EVENT_READ, _WAKE)
        except BaseException:
            self._selector.close()
            self._wake_r.close()
            self._wake_w.close()
            raise

    def fileno(self) -> int:
        """The inner selector's descriptor: readable when a poll has work."""
        if self._closed:
            raise self._closed_error()
        return self._selector.fileno()

    def pending(self) -> bool:
        """True if frames are queued (``recv_nowait`` returns one at once)."""
        return bool(self._ready)

    def recv_nowait(self) -> tuple[Route, bytes] | None:
        """The next ``(route, frame)``, or ``None``. Raises ``Closed`` after close."""
        if self._closed:
            raise self._closed_error()
        ready = self._ready
        if not ready:
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
            raise _too_large(size, self._max_frame, f"from {self.address}")
        with self._io_lock:
            if self._closed:
                raise self._closed_error()
            peer = self._peers.get(route)  # type: ignore[call-overload]
            if peer is None:
                raise self._gone_error(route)
            out = peer.out
            if len(out) >= self._high_water_mark:
                self._wait_for_room(peer)
            if out or size > _DIRECT_LIMIT:
                out.push(frame)
                self._flush(peer)
                if peer.route not in self._peers:
                    raise self._gone_error(route)
                return
            data = frame_header(size) + frame
            try:
                sent = peer.sock.send(data, _NOSIGNAL)
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError as exc:
                self._drop(peer, None, f"the connection failed: {_reason(exc)}")
                raise self._gone_error(route) from None
            if sent < len(data):
                out.push_raw(memoryview(data)[sent:] if sent else data)
                self._watch_writes(peer, True)

    def close(self) -> None:
        """Stop listening, flush queued replies and end every connection, within
        ``linger`` seconds. Idempotent; wakes a ``recv`` blocked in another
        thread, which raises ``Closed``. Frames not yet received are dropped."""
        with self._close_lock:
            if self._closed:
                return
            self._closed = True
        try:
            self._wake_w.send(b"\0")
        except OSError:
            pass  # the wake-up socket is full: a wake-up is pending already
        with self._io_lock:
            deadline = time.monotonic() + self._linger
            self._flush_before_close(deadline)
            for peer in self._peers.values():
                try:
                    peer.sock.shutdown(socket.SHUT_WR)
                except OSError:
                    peer.sock.close()  # reset already: nothing to deliver
                else:
                    _reaper.adopt(peer.sock, deadline)  # see "Closing without loss"
            self._peers.clear()
            self._ready.clear()
            self._selector.close()
            self._sock.close()
            self._wake_r.close()
            self._wake_w.close()

    def __enter__(self) -> TcpListener:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"{len(self._peers)} connections"
        return f"<TcpListener {self.address} {state}>"

    # -- the following run with the I/O lock held ----------------------------

    def _poll(self, timeout: float | None) -> None:
        """Wait at most ``timeout`` for the inner selector, then serve what it
        reports: accept, flush, read. Raises ``Closed`` once closed."""
        with self._io_lock:
            if self._closed:
                raise self._closed_error()
            try:
                events = self._selector.select(timeout)
            except OSError as exc:
                raise TransportError(f"polling {self.address} failed: "
                                     f"{_reason(exc)}") from None
            for key, mask in events:
                peer = key.data
                if peer is _ACCEPT:
                    self._accept()
                elif peer is _WAKE:
                    self._drain_wake()
                else:
                    if mask & selectors.EVENT_WRITE:
                        self._flush(peer)
                    if mask & selectors.EVENT_READ and peer.route in self._peers:
                        self._read(peer)
            if self._closed:
                raise self._closed_error()

    def _accept(self) -> None:
        for _ in range(_ACCEPT_BATCH):
            try:
                sock, remote = self._sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                log.warning("%s: cannot accept a connection: %s", self.address,
                            _reason(exc))
                return
            where = format_address(remote[0], remote[1])
            if len(self._peers) >= self._max_connections:
                sock.close()
                self.rejections["too-many-connections"] += 1
                log.warning("%s: refused a connection from %s: %d connections are "
                            "open (Options.max_connections)", self.address, where,
                            self._max_connections)
                continue
            try:
                sock.setblocking(False)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                sock.close()  # reset before it could be used: nothing to serve
                continue
            peer = _Peer(next(self._ids), sock, where, FrameDecoder(self._max_frame))
            self._peers[peer.route] = peer
            self._selector.register(sock, selectors.EVENT_READ, peer)

    def _read(self, peer: _Peer) -> None:
        try:
            size = peer.sock.recv_into(self._buf)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            cause = "truncated" if peer.decoder.buffered else None
            self._drop(peer, cause, f"the connection failed: {_reason(exc)}")
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
        if frames:
            self._ready.extend(zip(repeat(peer.route), frames))
        if not greeted and decoder.greeted:
            peer.out.push_raw(GREETING)
            self._flush(peer)

    def _flush(self, peer: _Peer) -> None:
        """Hand the kernel what it takes of ``peer.out`` without waiting; watch
        for writability while something is left. Drops ``peer`` if it failed."""
        out = peer.out
        while out:
            data = out.head()
            try:
                sent = peer.sock.send(data, _NOSIGNAL)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:
                self._drop(peer, None, f"the connection failed: {_reason(exc)}")
                return
            out.consume(sent)
            if sent < len(data):
                break
        self._watch_writes(peer, bool(out))

    def _watch_writes(self, peer: _Peer, on: bool) -> None:
        if peer.watching_writes != on:
            peer.watching_writes = on
            events = selectors.EVENT_READ | (selectors.EVENT_WRITE if on else 0)
            self._selector.modify(peer.sock, events, peer)

    def _wait_for_room(self, peer: _Peer) -> None:
        """Flush ``peer`` until fewer than ``high_water_mark`` entries wait."""
        deadline = None if self._send_timeout is None else (
            time.monotonic() + self._send_timeout)
        poller = select.poll()
        poller.register(peer.sock, select.POLLOUT)
        while len(peer.out) >= self._high_water_mark:
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                raise Timeout(f"cannot send on connection {peer.route} of "
                              f"{self.address}: {len(peer.out)} frames wait for a peer "
                              f"that has not read for {self._send_timeout} s "
                              "(Options.high_water_mark); the frame was not sent")
            poller.poll(_ms(remaining))
            self._flush(peer)
            if peer.route not in self._peers:
                raise self._gone_error(peer.route)

    def _flush_before_close(self, deadline: float) -> None:
        while True:
            waiting = [peer for peer in self._peers.values() if peer.out]
            remaining = deadline - time.monotonic()
            if not waiting:
                return
            if remaining <= 0:
                log.warning("%s: closed with frames unsent to %d connections after "
                            "%s s (Options.linger)", self.address, len(waiting),
                            self._linger)
                return
            poller = select.poll()
            for peer in waiting:
                poller.register(peer.sock, select.POLLOUT)
            poller.poll(_ms(remaining))
            for peer in waiting:
                if peer.route in self._peers:
                    self._flush(peer)

    def _drain_wake(self) -> None:
        try:
            while self._wake_r.recv(64):
                pass
        except OSError:
            pass  # drained (BlockingIOError): the wake-up has done its job

    def _drop(self, peer: _Peer, cause: str | None, detail: str) -> None:
        """Close ``peer``; count it in ``rejections`` under ``cause`` if given."""
        del self._peers[peer.route]
        self._selector.unregister(peer.sock)
        peer.sock.close()
        if cause is None:
            log.debug("%s: connection %d from %s ended: %s", self.address, peer.route,
                      peer.remote, detail)
            return
        self.rejections[cause] += 1
        log.warning("%s: dropped connection %d from %s (%s): %s", self.address,
                    peer.route, peer.remote, cause, detail)

    def _gone_error(self, route: Route) -> TransportError:
        return TransportError(f"connection {route!r} of {self.address} is gone (the "
                              "peer closed it or it was dropped); the frame was not "
                              "sent")

    def _closed_error(self) -> Closed:
        return Closed(f"the listener {self.address} is closed; listen again to go on")


class TcpConnection:
    """A connection to a ``tcp://`` listener; see the module docstring."""

    def __init__(self, sock: socket.socket, address: str, options: Options) -> None:
        self.address = address
        self._sock = sock
        self._max_frame = min(options.max_frame_size, MAX_LENGTH)
        self._high_water_mark = options.high_water_mark
        self._send_timeout = options.send_timeout
        self._linger = options.linger
        self._decoder = FrameDecoder(self._max_frame)
        self._ready: deque[bytes] = deque()
        self._buf = bytearray(_CONNECTION_READ_SIZE)
        self._view = memoryview(self._buf)
        self._lock = threading.Lock()         # guards everything below and writes
        self._cond = threading.Condition(self._lock)
        self._out = SendQueue()
        self._last_write = 0.0                # time.monotonic() of the last write
        self._flusher: threading.Thread | None = None
        self._flusher_idle = False            # the flusher waits for work
        self._space_waiters = 0               # threads waiting for _out to shrink
        self._closing = False                 # close() began: no more sends
        self._closed = False                  # closed: nothing more at all
        self._waiting = 0                     # threads waiting on the socket
        self._released = False                # the socket went to the reaper
        self._close_deadline = 0.0            # close() + linger
        self._wake: tuple[socket.socket, socket.socket] | None = None
        self._failure: tuple[type[TransportError], str] | None = None  # unusable since
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._readable = select.poll()
        self._readable.register(sock, select.POLLIN)
        self._writable = select.poll()
        self._writable.register(sock, select.POLLOUT)
        with self._lock:
            self._out.push_raw(GREETING)
            self._flush_locked()
            if self._out:
                self._kick_locked()
            self._last_write = 0.0   # the first frame goes out at once

    def fileno(self) -> int:
        """The socket's descriptor: readable when a frame may have arrived."""
        if self._closed:
            raise self._closed_error()
        return self._sock.fileno()

    def pending(self) -> bool:
        """True if frames are queued (``recv_nowait`` returns one at once)."""
        return bool(self._ready)

    def send(self, frame: bytes) -> None:
        """Send one frame. It is written at once or queued for the flusher;
        blocks, at most ``send_timeout``, while ``high_water_mark`` entries wait.

        Raises ``TransportError`` (frame too large, listener gone), ``Timeout``
        (the frame was not sent), ``Closed``."""
        size = len(frame)
        if size > self._max_frame:
            raise _too_large(size, self._max_frame, f"to {self.address}")
        with self._lock:
            if self._closing or self._failure is not None:
                raise self._failure_error()
            out = self._out
            if out and len(out) >= self._high_water_mark:
                self._wait_for_room_locked()
            if out:                       # the flusher is at work: join the queue
                if out.push(frame) >= _SYNC_FLUSH:
                    self._flush_locked()
                return
            now = time.monotonic()
            if now - self._last_write < _BURST_GAP:
                out.push(frame)           # a burst: the flusher or a later send writes it
                self._kick_locked()
                return
            self._last_write = now
            if size > _DIRECT_LIMIT:
                out.push(frame)
                self._flush_locked()
                if out:
                    self._kick_locked()
                return
            data = frame_header(size) + frame
            try:
                sent = self._sock.send(data, _NOSIGNAL)
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError as exc:
                raise self._broken_locked(exc) from None
            if sent < len(data):
                out.push_raw(memoryview(data)[sent:] if sent else data)
                self._kick_locked()

    def recv_nowait(self) -> bytes | None:
        """The next frame from the listener, or ``None``.

        Raises ``Closed`` after close, or once the listener closed the connection
        and every frame it sent was returned; ``TransportError`` if the listener
        broke the protocol."""
        if self._closed:
            raise self._closed_error()
        if not self._ready:
            self._fill()
            if not self._ready:
                return None
        return self._ready.popleft()

    def recv(self, timeout: float | None = None) -> bytes:
        """Block for the next frame. Raises ``Timeout``, ``Closed``, ``TransportError``."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            frame = self.recv_nowait()
            if frame is not None:
                return frame
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                raise Timeout(f"no frame from {self.address} within {timeout} s")
            if self._out:                 # the answer may wait for what is queued
                with self._lock:
                    if not self._closing and self._failure is None:
                        self._flush_locked()
            self._wait_readable(remaining)

    def close(self) -> None:
        """Flush queued frames and end the connection, within ``linger``
        seconds; idempotent. Wakes a ``recv`` or ``send`` blocked in another
        thread, which raises ``Closed``.

        The socket stays open, discarding what arrives, until the listener has
        read everything and ended its side too (or ``linger`` ran out): closing
        it at once would make the kernel answer a late greeting or reply with a
        reset, which destroys frames the listener has not read yet."""
        with self._cond:
            if self._closing:
                return
            self._closing = True
            self._close_deadline = time.monotonic() + self._linger
            if self._out and self._failure is None:
                self._linger_locked()
            self._closed = True
            self._out.clear()
            self._cond.notify_all()
            try:
                self._sock.shutdown(socket.SHUT_WR)
            except OSError:
                pass  # the listener reset the connection already: nothing to end
            if self._wake is not None:
                self._wake[1].send(b"\0")
            if not self._waiting:
                self._release_locked()

    def __enter__(self) -> TcpConnection:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<TcpConnection to {self.address}{' closed' if self._closed else ''}>"

    # -- receiving -------------------------------------------------------------

    def _fill(self) -> None:
        """Read once without waiting and queue the frames that completes."""
        if self._failure is not None:
            raise self._failure_error()
        try:
            size = self._sock.recv_into(self._buf)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            with self._lock:
                raise self._broken_locked(exc) from None
        if not size:
            try:
                self._decoder.finish()
            except ProtocolError as exc:
                self._failure = (TransportError, f"{self.address}: {exc}")
            else:
                self._failure = (Closed, f"the listener at {self.address} closed the "
                                         "connection; connect again to go on")
            raise self._failure_error()
        try:
            frames = self._decoder.feed(self._view[:size])
        except ProtocolError as exc:
            self._ready.extend(self._decoder.frames_before_failure)
            self._failure = (TransportError, f"{self.address} broke the posa tcp "
                                             f"protocol: {exc}")
            if not self._ready:
                raise self._failure_error() from None
            return
        self._ready.extend(frames)
        self._last_write = 0.0            # after an answer, the next send is no burst

    def _wait_readable(self, timeout: float | None) -> None:
        """Wait for input without the lock; ``Closed`` if closed meanwhile."""
        with self._lock:
            if self._closed:
                raise self._closed_error()
            if self._wake is None:        # made on the first wait: close() writes it
                self._wake = socket.socketpair()
                self._readable.register(self._wake[0], select.POLLIN)
            self._waiting += 1
        try:
            self._readable.poll(_ms(timeout))
        finally:
            with self._lock:
                self._waiting -= 1
                if self._closed and not self._waiting:
                    self._release_locked()
        if self._closed:
            raise self._closed_error()

    # -- sending (the lock is held) ----------------------------------------------

    def _flush_locked(self) -> None:
        """Write what the kernel takes of the queue without waiting."""
        out = self._out
        before = len(out)
        while out:
            data = out.head()
            try:
                sent = self._sock.send(data, _NOSIGNAL)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:
                raise self._broken_locked(exc) from None
            out.consume(sent)
            if sent < len(data):
                break
        self._last_write = time.monotonic()
        if self._space_waiters and len(out) < before:
            self._cond.notify_all()

    def _kick_locked(self) -> None:
        """Make sure a flusher thread will write the queue."""
        if self._flusher is None:
            self._flusher = threading.Thread(target=self._run_flusher, daemon=True,
                                             name=f"posa-tcp-flusher {self.address}")
            self._flusher.start()
        elif self._flusher_idle:
            self._flusher_idle = False
            self._cond.notify_all()

    def _run_flusher(self) -> None:
        """The flusher thread: write what a burst of sends leaves queued."""
        with self._cond:
            try:
                while True:
                    # a burst began: its sender writes most of it (every _SYNC_FLUSH
                    # frames); wait a moment and take what it leaves behind
                    self._unlocked(time.sleep, _TAIL_DELAY)
                    while self._out and not self._closed and self._failure is None:
                        self._flush_locked()
                        if self._out:
                            self._unlocked(self._writable.poll)
                    if self._closed or self._failure is not None:
                        break
                    self._flusher_idle = True
                    woken = self._cond.wait(_FLUSHER_IDLE)
                    self._flusher_idle = False
                    if self._closed or self._failure is not None or not (woken or self._out):
                        break
            except TransportError:
                pass  # recorded in _failure: the next send raises it
            finally:
                self._flusher = None
                self._cond.notify_all()
                if self._closed and not self._waiting:
                    self._release_locked()

    def _unlocked(self, wait: Callable[..., object], *args: float) -> None:
        """Call ``wait`` without the lock, counted as a thread using the socket."""
        self._waiting += 1
        self._lock.release()
        try:
            wait(*args)
        finally:
            self._lock.acquire()
            self._waiting -= 1

    def _wait_for_room_locked(self) -> None:
        """Wait until fewer than ``high_water_mark`` entries are queued."""
        deadline = None if self._send_timeout is None else (
            time.monotonic() + self._send_timeout)
        self._flush_locked()
        self._space_waiters += 1
        try:
            while len(self._out) >= self._high_water_mark:
                if self._closing or self._failure is not None:
                    raise self._failure_error()
                self._kick_locked()
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    raise Timeout(f"cannot send to {self.address}: {len(self._out)} "
                                  "frames wait for a listener that has not read for "
                                  f"{self._send_timeout} s (Options.send_timeout); "
                                  "the frame was not sent")
                self._cond.wait(remaining)
        finally:
            self._space_waiters -= 1
        if self._closing or self._failure is not None:
            raise self._failure_error()

    def _linger_locked(self) -> None:
        """Let the flusher write the queue until the close deadline."""
        deadline = self._close_deadline
        try:
            self._flush_locked()
        except TransportError:
            return  # the connection failed: _broken_locked reported the loss
        self._space_waiters += 1
        try:
            while self._out and self._failure is None:
                self._kick_locked()
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    log.warning("closing the connection to %s with %d frames unsent "
                                "after %s s (Options.linger): the listener is not "
                                "reading", self.address, len(self._out), self._linger)
                    return
                self._cond.wait(remaining)
        finally:
            self._space_waiters -= 1

    def _broken_locked(self, exc: OSError) -> TransportError:
        """Record that the stream failed with ``exc``; the error to raise."""
        if self._closed:
            return self._closed_error()
        if exc.errno in _GONE:
            self._failure = (Closed, f"the listener at {self.address} closed the "
                                     f"connection ({_reason(exc)}); connect again to "
                                     "go on")
        else:
            self._failure = (TransportError, f"the connection to {self.address} "
                                             f"failed: {_reason(exc)}")
        if self._out:
            log.warning("%d frames queued for %s are lost: %s", len(self._out),
                        self.address, self._failure[1])
        self._out.clear()
        self._cond.notify_all()
        return self._failure_error()

    def _release_locked(self) -> None:
        """Give the socket, once, to the reaper, which closes it when the listener
        has ended the connection too, or at the close deadline."""
        if self._released:
            return
        self._released = True
        if self._wake is not None:
            for end in self._wake:
                end.close()
        if self._failure is None:
            _reaper.adopt(self._sock, self._close_deadline)
        else:
            self._sock.close()

    def _failure_error(self) -> TransportError:
        if self._closing or self._failure is None:
            return self._closed_error()
        cls, message = self._failure
        return cls(message)

    def _closed_error(self) -> Closed:
        return Closed(f"the connection to {self.address} is closed; connect again "
                      "to go on")
