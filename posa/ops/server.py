"""``GET /health`` (JSON) and ``GET /metrics`` (Prometheus text format 0.0.4).

One event loop (``selectors``) on its own daemon thread serves every connection,
so no client can hold the server by being slow: a connection that has not sent
its request head is only a buffer and a deadline. The limits (``Limits`` in
``posa.ops.hygiene``: a header deadline, a cap on header bytes, a cap on open
connections where the oldest unfinished request gives way, an idle timeout for
kept-alive connections, a write deadline) have safe defaults; every connection
they cut is counted by cause in ``rejections``, which the monitor exports as
``posa_rejections_total{listener=<url>,reason=...}``, and logged at most once
per cause a minute with the count.

The server binds 127.0.0.1 unless told otherwise, answers GET and HEAD, keeps
HTTP/1.1 connections alive, and logs a failed answer, never raises it into the
process. Health answers 503 while the monitor drains or a watched name is not
registered here.
"""
from __future__ import annotations

import errno
import json
import logging
import os
import selectors
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

from posa.errors import PosaError, ProtocolError
from posa.ops.hygiene import IDLE, READING, WRITING, Limits, Slots
from posa.ops.monitor import Monitor
from posa.ops.request import Request, RequestReader, response

__all__ = ["OpsServer"]

log = logging.getLogger("posa.ops")

_OUT_OF_DESCRIPTORS = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}
_TEXT = "text/plain; charset=utf-8"
_METRICS = "text/plain; version=0.0.4; charset=utf-8"
_RECV_SIZE = 65536
_ACCEPTS_PER_TURN = 64
_REQUESTS_PER_TURN = 8
_LOG_INTERVAL = 60.0
_ROUTINE = {"idle-timeout"}          # counted, but an idle client is no attack: not warned


class _Conn:
    """One client connection: its socket, what it sent, what it is owed."""

    __slots__ = ("sock", "reader", "out", "close_after", "events")

    def __init__(self, sock: socket.socket, max_header_bytes: int) -> None:
        self.sock = sock
        self.reader = RequestReader(max_header_bytes)
        self.out = bytearray()
        self.close_after = False
        self.events = selectors.EVENT_READ


class _Throttle:
    """One log line per cause per interval, with the count since the last one."""

    def __init__(self, where: str, interval: float = _LOG_INTERVAL) -> None:
        self.where, self.interval = where, interval
        self._last: dict[str, float] = {}
        self._unlogged: Counter[str] = Counter()

    def note(self, cause: str, now: float) -> None:
        self._unlogged[cause] += 1
        if now - self._last.get(cause, -self.interval) >= self.interval:
            level = logging.DEBUG if cause in _ROUTINE else logging.WARNING
            log.log(level, "ops server %s: %d connection(s) cut (%s) since the last report; "
                        "see posa_rejections_total", self.where, self._unlogged[cause], cause)
            self._last[cause] = now
            del self._unlogged[cause]


class OpsServer:
    """Serves ``monitor`` over HTTP on ``host:port`` (port 0 picks a free one).

    ``header_timeout``: seconds from a request's first byte (or the connection's
    start) to the end of its head; ``max_header_bytes``: bytes of a request line
    and its fields; ``max_connections``: open at once, the oldest unfinished
    request gives way to a new connection; ``idle_timeout``: seconds a kept-alive
    connection may wait for its next request; ``write_timeout``: seconds a client
    has to read an answer. The server adds itself to ``monitor``, so that its own
    refusals are in ``/metrics``."""

    def __init__(self, monitor: Monitor, *, host: str = "127.0.0.1", port: int = 0,
                 header_timeout: float = Limits.header_timeout,
                 max_header_bytes: int = Limits.max_header_bytes,
                 max_connections: int = Limits.max_connections,
                 idle_timeout: float = Limits.idle_timeout,
                 write_timeout: float = Limits.write_timeout) -> None:
        self.limits = Limits(header_timeout, max_header_bytes, max_connections,
                             idle_timeout, write_timeout)
        self.monitor = monitor
        self.rejections: Counter[str] = Counter()
        self._clock = time.monotonic
        self._listener = _bind(host, port)
        bound, self.port = self._listener.getsockname()[:2]
        self.host = str(bound)
        self._slots: Slots[socket.socket] = Slots(self.limits)
        self._conns: dict[socket.socket, _Conn] = {}
        self._ready: list[_Conn] = []      # pipelined requests left for the next turn
        self._throttle = _Throttle(self.url)
        self._closing = False
        self._pid = os.getpid()     # a forked child's copy is not its to serve or end
        self._accept_paused_until: float | None = None
        self._accept_backoff = 0.05
        self._selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._selector.register(self._listener, selectors.EVENT_READ, "accept")
        self._selector.register(self._wake_r, selectors.EVENT_READ, "wake")
        monitor.add(self)
        self._thread = threading.Thread(target=self._run, name="posa-ops", daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @property
    def address(self) -> str:
        """The URL, as the ``listener`` label of this server's refusals."""
        return self.url

    def close(self) -> None:
        """Stop serving, close every connection and release the port. Idempotent.

        In a forked child, a server the parent made (its thread, connections and
        port the parent's) only has the child's copies of its sockets closed: the
        port is released once the parent closes it too, whether the child lives."""
        if self._pid != os.getpid():
            if not self._closing:
                self._closing = True
                for sock in (self._listener, self._wake_r, self._wake_w, *self._conns):
                    sock.close()        # no shutdown: the parent's connections go on
                self._selector.close()  # the child's descriptor of the shared set
            return
        self._closing = True
        if self._thread.is_alive():
            try:
                self._wake_w.send(b"x")
            except OSError:
                pass
            self._thread.join(5.0)
        self._wake_w.close()

    def __enter__(self) -> OpsServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the loop (on the posa-ops thread) --------------------------------------
    def _run(self) -> None:
        try:
            while not self._closing:
                now = self._clock()
                for key, mask in self._selector.select(self._wait(now)):
                    self._dispatch(key.data, key.fileobj, mask)
                ready, self._ready = self._ready, []
                for conn in ready:
                    if conn.sock in self._conns and not conn.out:
                        self._guarded(conn, self._serve)
                now = self._clock()
                for sock, cause in self._slots.expired(now):
                    self._cut(sock, cause, now, polite=cause == "header-timeout")
                self._resume_accepting(now)
        except Exception:
            log.exception("ops server %s stopped on an unexpected error", self.url)
        finally:
            self._shut()

    def _wait(self, now: float) -> float:
        if self._ready:
            return 0.0
        deadlines = [d for d in (self._slots.next_deadline(), self._accept_paused_until)
                     if d is not None]
        return max(0.0, min(deadlines, default=now + 1.0) - now)

    def _dispatch(self, what: Any, fileobj: Any, mask: int) -> None:
        if what == "accept":
            self._accept()
        elif what == "wake":
            try:
                self._wake_r.recv(64)
            except OSError:
                pass
        elif (conn := self._conns.get(fileobj)) is not None:
            self._guarded(conn, self._read if mask & selectors.EVENT_READ else self._written)

    def _guarded(self, conn: _Conn, step: Callable[[_Conn], None]) -> None:
        """Run one step of ``conn``; a bug closes that connection, not the server."""
        try:
            step(conn)
        except Exception:
            log.exception("ops server %s: a connection failed; closing it", self.url)
            self._close(conn.sock)

    def _written(self, conn: _Conn) -> None:
        if self._flush(conn):
            self._serve(conn)

    def _shut(self) -> None:
        for sock in list(self._conns):
            self._close(sock)
        for sock in (self._listener, self._wake_r):
            try:
                self._selector.unregister(sock)
            except (KeyError, ValueError):
                pass
            sock.close()
        self._selector.close()

    # -- accepting -----------------------------------------------------------------
    def _accept(self) -> None:
        # fewer than the cap per turn: a connection accepted with its request already
        # sent is read before newcomers could push it out
        for _ in range(max(1, min(_ACCEPTS_PER_TURN, self.limits.max_connections // 4))):
            try:
                sock, _ = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno in _OUT_OF_DESCRIPTORS:
                    self._pause_accepting()
                return                      # ECONNABORTED and the like: the next turn
            self._accept_backoff = 0.05
            self._admit(sock)

    def _admit(self, sock: socket.socket) -> None:
        now = self._clock()
        admitted, evicted = self._slots.admit(sock, now)
        if evicted is not None:
            self._count("evicted", now)
            self._close(evicted)
        if not admitted:
            self._count("too-many-connections", now)
            sock.close()
            return
        sock.setblocking(False)
        self._conns[sock] = _Conn(sock, self.limits.max_header_bytes)
        self._selector.register(sock, selectors.EVENT_READ, "conn")

    def _pause_accepting(self) -> None:
        """Out of descriptors: stop accepting for a while (doubling up to 1 s)."""
        now = self._clock()
        self._count("no-descriptors", now)
        self._selector.unregister(self._listener)
        self._accept_paused_until = now + self._accept_backoff
        self._accept_backoff = min(1.0, self._accept_backoff * 2)

    def _resume_accepting(self, now: float) -> None:
        if self._accept_paused_until is not None and now >= self._accept_paused_until:
            self._accept_paused_until = None
            self._selector.register(self._listener, selectors.EVENT_READ, "accept")

    # -- reading and answering ----------------------------------------------------
    def _read(self, conn: _Conn) -> None:
        try:
            data = conn.sock.recv(_RECV_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:                       # the client went away
            self._close(conn.sock)
            return
        if self._slots.phase(conn.sock) == IDLE:
            self._slots.enter(conn.sock, READING, self._clock())
        conn.reader.feed(data)
        self._serve(conn)

    def _serve(self, conn: _Conn) -> None:
        """Answer the complete requests in ``conn``'s buffer while each answer is
        written at once; a few per turn, so a pipelining client shares the loop."""
        for _ in range(_REQUESTS_PER_TURN):
            if not (self._take(conn) and self._flush(conn)):
                return
        self._ready.append(conn)

    def _take(self, conn: _Conn) -> bool:
        """Queue the answer to the next complete request; False if none is complete."""
        try:
            request = conn.reader.next_request()
        except ProtocolError:
            cause, status = conn.reader.failure or ("bad-request", 400)
            self._count(cause, self._clock())
            conn.out += response(status, _TEXT, f"refused: {cause}\n".encode(),
                                 keep_alive=False)
            conn.close_after = True
        else:
            if request is None:
                return False
            conn.out += self._answer(request)
            conn.close_after = not request.keep_alive
        self._slots.enter(conn.sock, WRITING, self._clock())
        return True

    def _answer(self, request: Request) -> bytes:
        keep, head = request.keep_alive, request.method == "HEAD"
        if request.method not in ("GET", "HEAD"):
            return response(405, _TEXT, b"only GET and HEAD are answered here\n",
                            keep_alive=keep, extra=(("Allow", "GET, HEAD"),))
        try:
            if request.path == "/health":
                health = self.monitor.health()
                return response(200 if health["ok"] else 503, "application/json",
                                json.dumps(health).encode(), keep_alive=keep, head_only=head)
            if request.path == "/metrics":
                return response(200, _METRICS, self.monitor.metrics().encode(),
                                keep_alive=keep, head_only=head)
        except Exception:
            log.info("ops: answering %s failed", request.path, exc_info=True)
            return response(500, _TEXT, b"the monitor failed; see the process log\n",
                            keep_alive=False, head_only=head)
        return response(404, _TEXT, b"not found: ask for /health or /metrics\n",
                        keep_alive=keep, head_only=head)

    def _flush(self, conn: _Conn) -> bool:
        """Write what ``conn`` is owed; True once it is all written and the
        connection stays open for the next request."""
        try:
            sent = conn.sock.send(conn.out)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError:
            self._close(conn.sock)
            return False
        del conn.out[:sent]
        if conn.out:
            self._watch(conn, selectors.EVENT_WRITE)
            return False
        if conn.close_after:
            self._close(conn.sock)
            return False
        self._watch(conn, selectors.EVENT_READ)
        self._slots.enter(conn.sock, READING if conn.reader.pending else IDLE, self._clock())
        return True

    def _watch(self, conn: _Conn, events: int) -> None:
        if conn.events != events:
            conn.events = events
            self._selector.modify(conn.sock, events, "conn")

    # -- closing ---------------------------------------------------------------------
    def _cut(self, sock: socket.socket, cause: str, now: float, *, polite: bool) -> None:
        """Close a connection a limit cut, counted under ``cause``."""
        self._count(cause, now)
        if polite:
            try:
                sock.send(response(408, _TEXT, b"the request took too long\n",
                                   keep_alive=False))
            except OSError:
                pass
        self._close(sock)

    def _count(self, cause: str, now: float) -> None:
        self.rejections[cause] += 1
        self._throttle.note(cause, now)

    def _close(self, sock: socket.socket) -> None:
        self._slots.remove(sock)
        if self._conns.pop(sock, None) is not None:
            self._selector.unregister(sock)
        sock.close()


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(128)
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        remedy = ("choose another --ops-port" if exc.errno == errno.EADDRINUSE else
                  "give --ops-host an address of this machine, e.g. 127.0.0.1")
        raise PosaError(f"cannot serve health and metrics on {host}:{port}: "
                        f"{exc.strerror}; {remedy}") from None
    return sock
