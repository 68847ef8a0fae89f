"""posa's own NATS client: one socket to one server of a cluster at a time.

The socket is non-blocking and in the poller of the process's nats I/O loop
(``posa.transport.nats.loop``): a readable socket is read and parsed
(``posa.transport.nats.protocol``) and each message handed to its
subscription's callback in the same turn; a writable one is written from the
client's send queue (``_out``). Any thread may write: holding ``lock``, which
every writer takes, a command goes straight to the socket when nothing waits in
the queue (``send_locked``), and what the socket does not take waits in the
queue for the loop to write when the socket is writable.

The client answers the server's PINGs and sends its own on a lease: every
``ping_interval`` seconds a PING, and two unanswered when the next is due mean
the server is gone (a stopped server sends no RST and no FIN).

Failover: the servers of the address first, in order, then the ``connect_urls``
that each server's INFO adds; on a lost server the client dials the next one
(the first again after the last, pausing ``RECONNECT_WAIT`` after a round
without success), sends CONNECT, one SUB for each live subscription and the
PINGs of callers waiting on ``flush``. What was queued for the lost socket is
lost with it; the owner (``Handler``) hears ``lost``, then ``connected``.

A forked child shares its parent's socket: the client writes only in the
process that made it.
"""
from __future__ import annotations

import itertools
import socket
import threading
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from posa.errors import ProtocolError, TransportError
from posa.transport.nats import protocol
from posa.transport.nats.loop import Loop, Timer, pid
from posa.transport.nats.protocol import INFO, MSG, PING, PING_CMD, PONG, Msg, Parser
from posa.transport.poller import READ, WRITE, readable, writable

__all__ = ["Client", "Handler", "CONNECT_TIMEOUT", "RECONNECT_WAIT", "BACKLOG"]

CONNECT_TIMEOUT = 2.0    # s from dialling a server to its INFO
RECONNECT_WAIT = 0.1     # s between rounds of the servers that all failed
READ_SIZE = 1 << 18
BACKLOG = 1 << 20        # queued bytes over which ``backlog_full`` says wait
MAX_PINGS_OUT = 2


class Handler(Protocol):
    """The client's owner; called on the loop's thread."""

    def connected(self) -> None: ...

    def lost(self, why: str) -> None: ...

    def drained(self) -> None: ...


def _split(server: str) -> tuple[str, int]:
    host, _, port = server.rpartition(":")
    return host.strip("[]"), int(port)


class Client:
    """A connection to one NATS cluster, owned by the process's nats loop."""

    def __init__(self, servers: Sequence[str], name: str, loop: Loop, handler: Handler,
                 ping_interval: float) -> None:
        self.loop, self.handler, self.name = loop, handler, name
        self.ping_interval = ping_interval
        self.lock = threading.Lock()
        self.pid = pid()
        self.sock: socket.socket | None = None
        self.server = ""                 # the server dialled last
        self.connected = False           # CONNECT sent on ``sock``
        self.closed = False
        self.max_payload = 0
        self.ready = threading.Event()   # set at the first CONNECT
        self._servers = list(servers)
        self._learned: list[str] = []
        self._at = -1
        self._failures = 0               # dials in a row that failed
        self._out = bytearray()          # what the socket has not taken (under lock)
        self._writing = False            # WRITE is in the socket's poller mask
        self._parser = Parser()
        self._subs: dict[int, tuple[str, Callable[[Msg], None]]] = {}
        self._sids = itertools.count(1)
        self._pongs: deque[Callable[[], None] | None] = deque()   # one per PING out
        self._unsent: list[Callable[[], None]] = []   # flushes waiting for a server
        self._pings_out = 0
        self._lease: Timer | None = None
        self._handshake: Timer | None = None

    @property
    def candidates(self) -> list[str]:
        """The servers to dial, in order: the address's, then those learned."""
        return self._servers + [url for url in self._learned if url not in self._servers]

    def start(self) -> None:
        self.loop.call_soon(self._dial)

    # -- writing (any thread) ------------------------------------------------------------
    def send_locked(self, data: bytes) -> bool:
        """Write ``data`` to the socket now if nothing is queued ahead of it (the
        caller holds ``lock``); ``False`` (nothing written) when something is,
        or no server is connected, or this is a forked child."""
        sock = self.sock
        if not self.connected or self._out or sock is None or self.pid != pid():
            return False
        try:
            sent = sock.send(data)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError as exc:           # lost with the socket: its owner hears it
            self.loop.call_soon(self._lose, sock, f"a write failed ({exc})")
            return True
        if sent < len(data):
            self._out += memoryview(data)[sent:]
            self._want_write()
        return True

    def queue_locked(self, *parts: bytes) -> None:
        """Queue a command (the caller holds ``lock``); dropped while no server is
        connected: a reconnection resends subscriptions, not messages."""
        if self.connected and self.pid == pid():
            out = self._out
            for part in parts:
                out += part

    def write(self, data: bytes) -> None:
        """Write a command, after what is queued (any thread)."""
        with self.lock:
            if not self.send_locked(data):
                self.queue_locked(data)
                self.flush_locked()

    def flush_locked(self) -> bool:
        """Write what is queued, as much as the socket takes (the caller holds
        ``lock``); ``True`` if over ``BACKLOG`` bytes are left."""
        out, sock = self._out, self.sock
        if not out or self._writing or sock is None or not self.connected:
            return len(out) > BACKLOG
        try:
            sent = sock.send(out)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError as exc:
            self.loop.call_soon(self._lose, sock, f"a write failed ({exc})")
            return False
        del out[:sent]
        if out:
            self._want_write()
        return len(out) > BACKLOG

    @property
    def backlog(self) -> int:
        return len(self._out)

    def _want_write(self) -> None:
        if not self._writing:
            self._writing = True
            self.loop.call_soon(self._watch_writes, self.sock)

    def _watch_writes(self, sock: socket.socket | None) -> None:
        if sock is not None and sock is self.sock and self._writing:
            self.loop.modify(sock.fileno(), READ | WRITE)

    # -- subscriptions (any thread) -----------------------------------------------------
    def subscribe(self, subject: str, callback: Callable[[Msg], None]) -> int:
        """Subscribe ``callback`` (called on the loop) to ``subject``; its sid."""
        sid = next(self._sids)
        with self.lock:
            self._subs[sid] = (subject, callback)
            if self.connected:
                self.queue_locked(protocol.sub(subject, sid))
                self.flush_locked()
        return sid

    def unsubscribe(self, sid: int) -> None:
        with self.lock:
            if self._subs.pop(sid, None) is not None:
                self.queue_locked(protocol.unsub(sid))
                self.flush_locked()

    def flush(self, timeout: float) -> None:
        """Wait until the server answers a PING sent after what this thread wrote
        (it has processed all of it); on a server reached later if none is now.
        Raises ``TransportError``."""
        done = threading.Event()
        with self.lock:
            if self.connected:
                self._pongs.append(done.set)
                self.queue_locked(PING_CMD)
                self.flush_locked()
            else:
                self._unsent.append(done.set)
        if not done.wait(timeout):
            raise TransportError(f"the NATS server {self.server} did not answer a PING "
                                 f"within {timeout} s")

    # -- dialling (the loop) -------------------------------------------------------------
    def _dial(self) -> None:
        if self.closed or self.sock is not None:
            return
        servers = self.candidates
        self._at = (self._at + 1) % len(servers)
        self.server = servers[self._at]
        try:
            host, port = _split(self.server)
            family, kind, proto, _, where = socket.getaddrinfo(
                host, port, type=socket.SOCK_STREAM)[0]
            sock = socket.socket(family, kind, proto)
        except (OSError, ValueError) as exc:
            self._failed(f"{self.server}: {exc}")
            return
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        error = sock.connect_ex(where)
        if error not in (0, 115, 36, 10035):     # EINPROGRESS (Linux, BSD), WSAEWOULDBLOCK
            sock.close()
            self._failed(f"{self.server}: connect error {error}")
            return
        self.sock = sock
        self._parser = Parser()
        self.loop.watch(sock.fileno(), READ, lambda mask: self._event(sock, mask))
        self._handshake = self.loop.call_later(
            CONNECT_TIMEOUT, lambda: self._lose(sock, "no INFO within "
                                                f"{CONNECT_TIMEOUT} s"))

    def _failed(self, why: str) -> None:
        """A dial failed: the next server, after a pause once a round has failed."""
        self._failures += 1
        if self._failures % max(1, len(self.candidates)) == 0:
            self.loop.call_later(RECONNECT_WAIT, self._dial)
        else:
            self.loop.call_soon(self._dial)

    def _established(self, info: dict[str, Any]) -> None:
        """The server's first INFO: CONNECT, the subscriptions, waiting PINGs."""
        if self._handshake is not None:
            self._handshake.cancel()
        self._learn(info)
        try:
            self.max_payload = int(info.get("max_payload", 1 << 20))
        except (TypeError, ValueError):
            self.max_payload = 1 << 20
        with self.lock:
            self.connected, self._failures = True, 0
            self._out.clear()
            self.queue_locked(protocol.connect(self.name), *(
                protocol.sub(subject, sid) for sid, (subject, _) in self._subs.items()))
            for waiter in self._unsent:
                self._pongs.append(waiter)
                self.queue_locked(PING_CMD)
            self._unsent.clear()
            self.flush_locked()
        self._pings_out = 0
        self._lease = self.loop.call_later(self.ping_interval, self._ping)
        self.ready.set()
        self.handler.connected()

    def _learn(self, info: dict[str, Any]) -> None:
        urls = info.get("connect_urls")
        if isinstance(urls, list):
            for url in urls:
                if isinstance(url, str) and url not in self._learned:
                    self._learned.append(url)

    def _ping(self) -> None:
        sock = self.sock
        if not self.connected or sock is None:
            return
        if self._pings_out >= MAX_PINGS_OUT:
            self._lose(sock, f"{self._pings_out} PINGs went unanswered")
            return
        self._pings_out += 1
        with self.lock:
            self._pongs.append(None)
            self.queue_locked(PING_CMD)
            self.flush_locked()
        self._lease = self.loop.call_later(self.ping_interval, self._ping)

    # -- the socket's events (the loop) -------------------------------------------------
    def _event(self, sock: socket.socket, mask: int) -> None:
        if sock is not self.sock:
            return
        if readable(mask):
            self._read(sock)
        if writable(mask) and sock is self.sock:
            self._writable(sock)

    def _read(self, sock: socket.socket) -> None:
        for _ in range(64):              # then the loop's other sockets get a turn
            try:
                data = sock.recv(READ_SIZE)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                self._lose(sock, f"a read failed ({exc})")
                return
            if not data:
                self._lose(sock, "the server closed the connection")
                return
            try:
                events = self._parser.feed(data)
            except ProtocolError as exc:
                self._lose(sock, str(exc))
                return
            subs = self._subs
            for kind, value in events:
                if kind == MSG:
                    entry = subs.get(value.sid)
                    if entry is not None:
                        entry[1](value)
                else:
                    self._control(sock, kind, value)
            if len(data) < READ_SIZE or sock is not self.sock:
                return

    def _control(self, sock: socket.socket, kind: int, value: Any) -> None:
        if sock is not self.sock:
            return
        if kind == PING:
            self.write(protocol.PONG_CMD)
        elif kind == PONG:
            self._pings_out = 0
            if self._pongs:
                waiter = self._pongs.popleft()
                if waiter is not None:
                    waiter()
        elif kind == INFO:
            if not self.connected:
                self._established(value)
            else:
                self._learn(value)
        elif kind == protocol.ERR and "permissions violation" not in value.lower():
            self._lose(sock, f"the server said -ERR {value!r}")

    def _writable(self, sock: socket.socket) -> None:
        with self.lock:
            self._writing = False
            self.flush_locked()
            idle = not self._out
        if idle:
            self.loop.modify(sock.fileno(), READ)
            self.handler.drained()

    def _lose(self, sock: socket.socket, why: str) -> None:
        """Leave ``sock`` (if it is still the one): the owner hears ``lost``, and the
        next server is dialled."""
        if sock is not self.sock:
            return
        with self.lock:
            was = self.connected
            self.connected, self.sock, self._writing = False, None, False
            self._out.clear()
            self._unsent += [w for w in self._pongs if w is not None]
            self._pongs.clear()
        for timer in (self._lease, self._handshake):
            if timer is not None:
                timer.cancel()
        self.loop.unwatch(sock.fileno())
        sock.close()
        if was:
            self.handler.lost(f"the NATS server {self.server} went away ({why}); "
                              "frames in flight may be lost (posa's streams resend them)")
            self.loop.call_soon(self._dial)
        else:
            self._failed(why)

    # -- closing -------------------------------------------------------------------------
    def close(self, grace: float) -> None:
        """Stop: once what is queued is written (within ``grace`` s) the socket
        is closed, and dropped with what the kernel still holds after that."""
        self.loop.call_soon(self._closing, grace)

    def _closing(self, grace: float) -> None:
        self.closed = True
        if self._out and self.sock is not None and grace > 0:
            self.loop.call_later(0.01, lambda: self._closing(grace - 0.01))
            return
        self._shut()

    def _shut(self) -> None:
        sock = self.sock
        with self.lock:
            self.connected, self.sock = False, None
            self._out.clear()
        for timer in (self._lease, self._handshake):
            if timer is not None:
                timer.cancel()
        if sock is not None:
            self.loop.unwatch(sock.fileno())
            sock.close()

