"""ZeroMQ transports: ``zmq+tcp://HOST:PORT`` and ``zmq+ipc:///PATH``.

A listener is a bound ROUTER socket, a connection a connected DEALER socket;
``zmq+tcp://h:p`` is ZeroMQ's ``tcp://h:p`` and ``zmq+ipc:///path`` its
``ipc:///path``. The route of an inbound frame is the ROUTER's identity frame
(``bytes``). A message on the wire is one frame from a DEALER, so a ROUTER
reads exactly ``[identity, payload]``.

Strategy
--------
* One ``zmq.Context`` per process (one I/O thread), created on first use under
  a lock and again in a forked child. At interpreter exit the context is
  terminated so that frames queued by closed endpoints are flushed for at most
  the longest ``linger`` any of them had (an endpoint still open then only
  delays exit by that much).
* The hot path is what raw pyzmq does: ``send(frame, NOBLOCK)`` and, on the
  ROUTER, two plain ``recv(NOBLOCK)`` calls (``recv_multipart`` costs twice as
  much). The ROUTER receives the payload as a ``zmq.Frame`` only to read its
  ``more`` flag, which says whether a foreign peer sent extra parts: that is
  the cheapest check pyzmq offers (``getsockopt(RCVMORE)`` costs twice as
  much), and without it one multi-part message would shift every later frame
  onto the wrong route.
* A receive that finds nothing is what costs most: pyzmq raises ``zmq.Again``
  and builds a traceback, the price of four receives or more, where an
  ``EVENTS`` check costs two. Whoever drains an endpoint receives until
  nothing comes, so every drain ends in one such receive. After a lone frame
  (the previous drain held one frame too: request-reply), the endpoint asks
  ``EVENTS`` before receiving again; in a burst it receives at once and pays
  the exception once per burst. A receive or check that found nothing also
  answers ``pending()`` until the socket is used again: the descriptor fires
  for the next frame then, and ``pending()`` need not ask.
* Only when a call would block does an endpoint poll, and then it polls
  its socket together with a wake-up pipe: ``close()`` from another thread sets
  a flag and writes the pipe; the blocked thread wakes, closes the socket itself
  (ZeroMQ sockets must never be used by two threads at once) and raises
  ``Closed``. ``close()`` with no thread blocked closes the socket at once.
  Apart from that one case, an endpoint belongs to one thread at a time.

Socket options, set deliberately
--------------------------------
``SNDHWM``/``RCVHWM`` = ``high_water_mark``
    ZeroMQ queues up to that many frames on each side of a connection (plus
    kernel buffers) before a send blocks.
``LINGER`` = ``linger``
    after ``close()`` queued frames keep flowing from the I/O thread for at most
    that long. On ``ipc`` this is no delivery guarantee (libzmq issue #4660:
    the tail of a stream can be lost when the sender closes right after its last
    send): the layer above acknowledges before it closes.
``MAXMSGSIZE`` = ``max_frame_size``
    a peer that sends a larger frame has its connection dropped by libzmq before
    the frame is buffered. libzmq reports only a disconnect, with no cause, so
    such drops are not counted in ``rejections``; a DEALER reconnects by itself
    and the oversized frame is lost. ``send`` refuses oversized frames itself,
    so only a foreign peer (or one configured with a larger limit) hits this.
``ROUTER_MANDATORY`` = 1, ``SNDTIMEO`` = ``send_timeout`` (listener)
    a send to a route whose connection is gone raises ``TransportError``
    instead of being dropped silently; a full peer queue blocks the send for at
    most ``send_timeout`` (``Timeout``). A connection's ``send`` waits by
    polling instead, so that ``close()`` can wake it.
``IMMEDIATE`` = 1 (connection)
    frames are queued only on a completed connection, so a send to an address
    where nobody listens blocks and ends in ``Timeout`` after ``send_timeout``
    instead of queueing silently.

A message from a peer that is not ``[identity, payload]`` (a DEALER sending
several frames at once) is drained, counted as ``"garbage"`` and not delivered;
the peer's connection stays up, ROUTER cannot drop one connection. For the same
reason ``max_connections`` is not enforced by this transport.

CURVE (optional): ``ZmqTransport(curve=Curve(server_public, server_secret))``,
registered with ``transport.register``, encrypts every zmq+ endpoint of the
process. Listeners hold the server key pair; each connection makes a key pair
of its own and accepts only a listener that proves the server public key (a
listener without it is never reached: ``send`` ends in ``Timeout``). Who may
*send* is decided above the transport, by posa's authentication.
"""
from __future__ import annotations

import atexit
import contextlib
import errno
import logging
import math
import os
import socket
import stat
import threading
import time
from collections import Counter
from dataclasses import dataclass

import zmq

from posa.errors import Closed, Timeout, TransportError
from posa.transport.base import Options

__all__ = ["ZmqTransport", "ZmqListener", "ZmqConnection", "Curve"]

_log = logging.getLogger(__name__)

# plain ints: pyzmq's enum and flag types cost a microsecond per operation
_NOBLOCK = int(zmq.NOBLOCK)
_SNDMORE = int(zmq.SNDMORE)
_RCVMORE = int(zmq.RCVMORE)
_EVENTS = int(zmq.EVENTS)
_POLLIN = int(zmq.POLLIN)
_POLLOUT = int(zmq.POLLOUT)
_Again = zmq.Again
_ZMQError = zmq.ZMQError
# pyzmq's Socket.send is a Python wrapper (routing ids, groups, Frame objects)
# around the compiled send; frames here are plain bytes, so the hot path calls
# the compiled one directly (about 250 ns less per frame).
_raw_send = zmq.backend.Socket.send

_SCHEMES = {"zmq+tcp": "tcp", "zmq+ipc": "ipc"}
_IPC_PATH_MAX = 107  # sun_path of a Unix socket, less the terminating NUL

# ------------------------------------------------------------ shared context
_ctx_lock = threading.Lock()
_ctx: zmq.Context | None = None
_ctx_pid = 0
_exit_linger = 0.0  # longest linger of an endpoint closed so far, in seconds


def _context() -> zmq.Context:
    """The process's one context, created on first use (again after a fork)."""
    global _ctx, _ctx_pid
    ctx = _ctx
    if ctx is not None and _ctx_pid == os.getpid():
        return ctx
    with _ctx_lock:
        if _ctx is None or _ctx_pid != os.getpid():
            _ctx = zmq.Context(io_threads=1)
            _ctx_pid = os.getpid()
        return _ctx


def _flush_at_exit() -> None:
    ctx = _ctx
    if ctx is None or _ctx_pid != os.getpid() or _exit_linger <= 0:
        return

    def term() -> None:
        with contextlib.suppress(zmq.ZMQError):
            ctx.term()

    flusher = threading.Thread(target=term, name="posa-zmq-flush", daemon=True)
    flusher.start()
    flusher.join(_exit_linger)


atexit.register(_flush_at_exit)


# ------------------------------------------------------------------ addresses
def _zmq_endpoint(address: str, *, binding: bool) -> tuple[str, bool]:
    """``zmq+tcp://h:p`` -> (``tcp://h:p``, is-IPv6). Raises ``TransportError``."""
    scheme, sep, where = address.partition("://")
    kind = _SCHEMES.get(scheme) if sep else None
    if kind is None:
        raise TransportError(f"address {address!r} is not a ZeroMQ address; write "
                             "zmq+tcp://HOST:PORT or zmq+ipc:///PATH")
    if kind == "ipc":
        if not where.startswith("/"):
            raise TransportError(f"address {address!r} needs an absolute path; write "
                                 "it as zmq+ipc:///PATH, e.g. zmq+ipc:///tmp/agent.sock")
        if len(os.fsencode(where)) > _IPC_PATH_MAX:
            raise TransportError(f"the path of {address!r} is longer than the "
                                 f"{_IPC_PATH_MAX} bytes a Unix socket allows; use a "
                                 "shorter one")
        return "ipc://" + where, False
    host, colon, port = where.rpartition(":")
    port_ok = port.isdigit() and int(port) <= 65535 and (binding or int(port) > 0)
    if not colon or not host or not (port_ok or (binding and port == "*")):
        example = "port 0 picks a free one" if binding else "the listener's port"
        raise TransportError(f"address {address!r} needs HOST:PORT ({example}), "
                             "e.g. zmq+tcp://127.0.0.1:7002")
    ipv6 = host.startswith("[")
    if ipv6 and not host.endswith("]"):
        raise TransportError(f"address {address!r} has an unclosed IPv6 bracket; "
                             "write it as zmq+tcp://[::1]:7002")
    return "tcp://" + where, ipv6


def _posa_address(endpoint: str) -> str:
    """ZeroMQ's ``tcp://h:p`` -> ``zmq+tcp://h:p``."""
    kind, _, where = endpoint.partition("://")
    return f"zmq+{kind}://{where}"


def _check_ipc_free(address: str, path: str) -> None:
    """libzmq replaces whatever file is at an ipc path: refuse a live listener's
    socket or a file that is no socket; a stale socket file may be replaced."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return
    if not stat.S_ISSOCK(mode):
        raise TransportError(f"cannot bind {address}: {path} exists and is not a "
                             "socket; choose another path")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.settimeout(1.0)
        probe.connect(path)
    except (ConnectionRefusedError, FileNotFoundError):
        return  # nobody accepts there: a stale file left by a dead process
    except OSError:
        pass    # someone is there but busy: as good as in use
    finally:
        probe.close()
    raise TransportError(f"cannot bind {address}: address in use by a live listener; "
                         "choose another path or close that listener")


_BIND_REASONS = {
    errno.EADDRINUSE: "address in use; choose another port, or port 0 for a free one",
    errno.EADDRNOTAVAIL: "no local interface has that address; use one of this "
                         "host's addresses, e.g. 127.0.0.1",
    errno.ENOENT: "the directory does not exist; create it first",
    errno.EACCES: "permission denied; choose a port above 1023 or a writable directory",
    errno.EINVAL: "malformed address; write zmq+tcp://HOST:PORT or zmq+ipc:///PATH",
    errno.ENODEV: "unknown host or interface; use an IP address such as 127.0.0.1",
}


def _socket_error(action: str, address: str, exc: zmq.ZMQError | OSError) -> TransportError:
    """Translate a ZeroMQ/OS error; a terminated context or closed socket is ``Closed``."""
    if exc.errno in (zmq.ETERM, zmq.ENOTSOCK):
        return Closed(f"{address} is closed (or the process is exiting); open a new "
                      "endpoint to go on")
    return TransportError(f"cannot {action} {address}: {exc.strerror or exc}")


def _new_socket(kind: int, options: Options, ipv6: bool) -> zmq.Socket:
    sock = _context().socket(kind)
    sock.setsockopt(zmq.LINGER, int(options.linger * 1000))
    sock.setsockopt(zmq.SNDHWM, options.high_water_mark)
    sock.setsockopt(zmq.RCVHWM, options.high_water_mark)
    sock.setsockopt(zmq.MAXMSGSIZE, options.max_frame_size)
    if ipv6:
        sock.setsockopt(zmq.IPV6, 1)
    return sock


@dataclass(frozen=True)
class Curve:
    """CURVE keys (Z85 text, as ``zmq.curve_keypair()`` makes them): the server
    key pair that listeners use; connections need only ``server_public``."""

    server_public: bytes
    server_secret: bytes | None = None

    def apply(self, sock: zmq.Socket, *, listening: bool) -> None:
        """Set ``sock``'s CURVE options, as a listener's or a connection's."""
        if listening:
            sock.curve_server = True
            sock.curve_publickey = self.server_public
            sock.curve_secretkey = self.server_secret
        else:
            public, secret = zmq.curve_keypair()
            sock.curve_serverkey = self.server_public
            sock.curve_publickey = public
            sock.curve_secretkey = secret


# ------------------------------------------------------------------ endpoints
class _Endpoint:
    """What listener and connection share: closing, waking, waiting, polling."""

    address: str

    def __init__(self, address: str, sock: zmq.Socket, options: Options) -> None:
        self.address = address
        self.rejections: Counter[str] = Counter()
        self._options = options
        self._sock = sock
        self._fd: int = sock.getsockopt(zmq.FD)
        self._lock = threading.Lock()
        self._closed = False
        self._sock_closed = False
        self._blocked = 0                  # threads inside a blocking wait
        self._idle = False                 # nothing to receive, socket untouched since
        self._run = 0                      # frames received since the last empty receive
        self._lone = False                 # the run before that was a single frame
        self._wake: tuple[int, int] | None = None   # pipe, made on first blocking wait
        self._poll_in: list[tuple[object, int]] = []    # zmq_poll items: socket + pipe
        self._poll_out: list[tuple[object, int]] = []

    def _closed_error(self) -> Closed:
        return Closed(f"{self.address} is closed; open a new endpoint to go on")

    def fileno(self) -> int:
        """The socket's descriptor; edge-triggered: drain ``recv_nowait`` first."""
        if self._closed:
            raise self._closed_error()
        return self._fd

    def pending(self) -> bool:
        """True if ``recv_nowait`` may return a frame without the descriptor firing."""
        if self._closed:
            raise self._closed_error()
        if self._idle:
            return False
        try:
            ready = bool(self._sock.get(_EVENTS) & _POLLIN)
        except _ZMQError as exc:
            raise _socket_error("poll", self.address, exc) from None
        if not ready:
            self._drained()     # as a receive that found nothing: the run ends
        return ready

    def _nothing_left(self) -> bool:
        """After a lone frame of a lone-frame drain, whether ``EVENTS`` says that
        nothing is left to receive (see the module docstring)."""
        return self._run == 1 and self._lone and not self._sock.get(_EVENTS) & _POLLIN

    def _drained(self) -> None:
        """A receive found nothing: the run of frames ends."""
        self._idle = True
        self._lone = self._run == 1
        self._run = 0

    def close(self) -> None:
        """Close; a thread blocked in this endpoint wakes with ``Closed``. Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            if self._blocked:
                os.write(self._wake[1], b"!")  # type: ignore[index]
                return                         # the blocked thread closes the socket
            self._close_socket()

    def _close_socket(self) -> None:
        global _exit_linger
        self._sock_closed = True
        self._sock.close()
        if self._wake is not None:
            os.close(self._wake[0])
            os.close(self._wake[1])
        _exit_linger = max(_exit_linger, self._options.linger)

    def _enter_wait(self) -> None:
        with self._lock:
            if self._closed:
                raise self._closed_error()
            if self._wake is None:
                self._wake = os.pipe()
                self._poll_in = [(self._sock, _POLLIN), (self._wake[0], _POLLIN)]
                self._poll_out = [(self._sock, _POLLOUT), (self._wake[0], _POLLIN)]
            self._blocked += 1

    def _leave_wait(self) -> None:
        with self._lock:
            self._blocked -= 1
            if self._closed and not self._blocked and not self._sock_closed:
                self._close_socket()

    def _wait(self, items: list[tuple[object, int]], deadline: float | None) -> bool:
        """Between ``_enter_wait`` and ``_leave_wait``: poll ``items`` (the socket
        and the wake-up pipe) until the socket is ready (True) or ``deadline``
        passes (False). Raises ``Closed``. Polling first, rather than trying a
        receive, spares the ``zmq.Again`` exception: it costs pyzmq ~6 us."""
        sock = self._sock
        while True:
            ms = -1 if deadline is None else max(
                0, math.ceil((deadline - time.monotonic()) * 1000))
            try:
                ready = zmq.zmq_poll(items, ms)
            except _ZMQError as exc:
                raise _socket_error("poll", self.address, exc) from None
            if self._closed:
                raise self._closed_error()
            for polled, _ in ready:
                if polled is sock:
                    return True
            if deadline is not None and time.monotonic() >= deadline:
                return False

    @staticmethod
    def _deadline(timeout: float | None) -> float | None:
        return None if timeout is None else time.monotonic() + max(timeout, 0.0)

    def _drop_garbage(self, source: str, parts: int) -> None:
        """Drain the rest of a multi-part message (``parts`` frames of it read so
        far, not counting a ROUTER's identity frame) and count it; the first
        such message is logged as a warning, later ones at debug level."""
        while self._sock.get(_RCVMORE):
            self._sock.recv(_NOBLOCK)
            parts += 1
        self.rejections["garbage"] += 1
        log = _log.warning if self.rejections["garbage"] == 1 else _log.debug
        log("%s dropped a message of %d frames from %s (expected one frame); %d "
            "dropped so far", self.address, parts, source, self.rejections["garbage"])

    def _too_big(self, frame: bytes) -> TransportError:
        return TransportError(f"frame of {len(frame)} bytes exceeds max_frame_size "
                              f"({self._options.max_frame_size}) of {self.address}; "
                              "split it or raise Options.max_frame_size on both sides")

    def _send_timeout(self) -> Timeout:
        return Timeout(f"could not send to {self.address} within "
                       f"{self._options.send_timeout:g} s: nobody accepts frames there "
                       "(no listener, or its queue is full); check the address or raise "
                       "Options.send_timeout")

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"<{type(self).__name__} {self.address} {state}>"


class ZmqListener(_Endpoint):
    """A bound ROUTER socket. Routes are identity frames (``bytes``)."""

    def __init__(self, address: str, options: Options, curve: Curve | None = None) -> None:
        if curve is not None and curve.server_secret is None:
            raise TransportError(f"cannot listen on {address} with CURVE without the "
                                 "server secret key; give Curve(server_public, server_secret)")
        endpoint, ipv6 = _zmq_endpoint(address, binding=True)
        if endpoint.startswith("ipc://"):
            _check_ipc_free(address, endpoint[len("ipc://"):])
        try:
            sock = _new_socket(zmq.ROUTER, options, ipv6)
        except _ZMQError as exc:
            raise _socket_error("listen on", address, exc) from None
        try:
            sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
            if curve is not None:
                curve.apply(sock, listening=True)
            sock.setsockopt(zmq.SNDTIMEO, -1 if options.send_timeout is None
                            else int(options.send_timeout * 1000))
            sock.bind(endpoint)
            bound = sock.getsockopt(zmq.LAST_ENDPOINT).decode()
        except _ZMQError as exc:
            sock.close(linger=0)
            reason = _BIND_REASONS.get(exc.errno, exc.strerror)
            raise TransportError(f"cannot bind {address}: {reason}") from None
        super().__init__(_posa_address(bound), sock, options)
        self._recv = sock.recv

    def recv_nowait(self) -> tuple[bytes, bytes] | None:
        """The next ``(route, frame)``, or ``None``. Raises ``Closed`` after close."""
        if self._closed:
            raise self._closed_error()
        recv = self._recv
        while True:
            try:
                if self._nothing_left():
                    self._drained()
                    return None
                route = recv(_NOBLOCK)
            except _Again:
                self._drained()
                return None
            except _ZMQError as exc:
                raise _socket_error("receive on", self.address, exc) from None
            frame = recv(_NOBLOCK, copy=False)   # the parts of a message come together
            self._idle = False
            if not frame.more:
                self._run += 1
                return route, frame.bytes
            self._drop_garbage(f"route {route!r}", 1)

    def recv(self, timeout: float | None = None) -> tuple[bytes, bytes]:
        """Block for the next ``(route, frame)``. Raises ``Timeout``, ``Closed``."""
        deadline = self._deadline(timeout)
        self._enter_wait()
        try:
            while self._wait(self._poll_in, deadline):
                item = self.recv_nowait()
                if item is not None:
                    return item
        finally:
            self._leave_wait()
        raise Timeout(f"no frame arrived at {self.address} within {timeout:g} s")

    def send(self, route: bytes, frame: bytes) -> None:
        """Send ``frame`` on the connection ``route`` came from.

        Raises ``TransportError`` (oversize frame, connection gone), ``Timeout``
        if the peer's queue stays full for ``send_timeout``, ``Closed``."""
        if self._closed:
            raise self._closed_error()
        if len(frame) > self._options.max_frame_size:
            raise self._too_big(frame)
        sock = self._sock
        self._idle = False           # a send may take the descriptor's notification
        try:
            try:
                _raw_send(sock, route, _NOBLOCK | _SNDMORE)
            except _Again:
                self._send_blocking(route, frame)
                return
            _raw_send(sock, frame)     # never blocks: the message was admitted
        except _ZMQError as exc:
            if exc.errno == zmq.EHOSTUNREACH:
                raise TransportError(f"cannot send on {self.address}: the connection of "
                                     f"route {route!r} is gone (the peer closed or was "
                                     "dropped)") from None
            raise _socket_error("send on", self.address, exc) from None

    def _send_blocking(self, route: bytes, frame: bytes) -> None:
        # ROUTER's POLLOUT says "some peer has room", not this one: let libzmq
        # block for this peer (SNDTIMEO = send_timeout). A close() from another
        # thread meanwhile takes effect when the send returns.
        self._enter_wait()
        try:
            self._sock.send(route, _SNDMORE)
            self._sock.send(frame)
        except _Again:
            raise self._send_timeout() from None
        finally:
            self._leave_wait()


class ZmqConnection(_Endpoint):
    """A DEALER socket connected to one listener."""

    def __init__(self, address: str, options: Options, curve: Curve | None = None) -> None:
        endpoint, ipv6 = _zmq_endpoint(address, binding=False)
        try:
            sock = _new_socket(zmq.DEALER, options, ipv6)
        except _ZMQError as exc:
            raise _socket_error("connect to", address, exc) from None
        try:
            sock.setsockopt(zmq.IMMEDIATE, 1)
            if curve is not None:
                curve.apply(sock, listening=False)
            sock.connect(endpoint)
        except _ZMQError as exc:
            sock.close(linger=0)
            raise TransportError(f"cannot connect to {address}: {exc.strerror}; write "
                                 "zmq+tcp://HOST:PORT or zmq+ipc:///PATH") from None
        super().__init__(address, sock, options)
        self._recv = sock.recv
        self._get = sock.get
        self._send = _raw_send.__get__(sock)

    def send(self, frame: bytes) -> None:
        """Send one frame. Raises ``TransportError`` (oversize), ``Timeout`` after
        ``send_timeout`` with nobody accepting, ``Closed``."""
        if self._closed:
            raise self._closed_error()
        if len(frame) > self._options.max_frame_size:
            raise self._too_big(frame)
        self._idle = False           # a send may take the descriptor's notification
        try:
            self._send(frame, _NOBLOCK)
        except _Again:
            self._send_blocking(frame)
        except _ZMQError as exc:
            raise _socket_error("send to", self.address, exc) from None

    def _send_blocking(self, frame: bytes) -> None:
        timeout = self._options.send_timeout
        deadline = self._deadline(timeout)
        self._enter_wait()
        try:
            while self._wait(self._poll_out, deadline):
                try:
                    self._send(frame, _NOBLOCK)
                    return
                except _Again:
                    continue
        except _ZMQError as exc:
            raise _socket_error("send to", self.address, exc) from None
        finally:
            self._leave_wait()
        raise self._send_timeout()

    def recv_nowait(self) -> bytes | None:
        """The next frame from the listener, or ``None``. Raises ``Closed``."""
        if self._closed:
            raise self._closed_error()
        recv = self._recv
        while True:
            try:
                if self._nothing_left():
                    self._drained()
                    return None
                frame = recv(_NOBLOCK)
            except _Again:
                self._drained()
                return None
            except _ZMQError as exc:
                raise _socket_error("receive from", self.address, exc) from None
            self._idle = False
            if not self._get(_RCVMORE):
                self._run += 1
                return frame
            self._drop_garbage("the listener", 1)

    def recv(self, timeout: float | None = None) -> bytes:
        """Block for the next frame. Raises ``Timeout``, ``Closed``."""
        deadline = self._deadline(timeout)
        self._enter_wait()
        try:
            while self._wait(self._poll_in, deadline):
                frame = self.recv_nowait()
                if frame is not None:
                    return frame
        finally:
            self._leave_wait()
        raise Timeout(f"no frame arrived from {self.address} within {timeout:g} s")


class ZmqTransport:
    """ZeroMQ ROUTER/DEALER over tcp and Unix sockets."""

    schemes = ("zmq+tcp", "zmq+ipc")

    def __init__(self, curve: Curve | None = None) -> None:
        self.curve = curve

    def listen(self, address: str, options: Options) -> ZmqListener:
        """Bind a ROUTER at ``address`` (port 0 or ``*`` picks a free port)."""
        return ZmqListener(address, options, self.curve)

    def connect(self, address: str, options: Options) -> ZmqConnection:
        """Connect a DEALER to ``address``; the connection completes in the
        background, and ``send`` waits for it (at most ``send_timeout``)."""
        return ZmqConnection(address, options, self.curve)
