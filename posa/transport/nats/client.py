"""posa's own NATS client: one socket to one server of a cluster at a time.

The socket is non-blocking, in the poller of the process's nats I/O loop
(``loop``) or lent to a reactor's (``polling``): a readable socket is read, parsed
(``protocol``) and each message handed to its subscription's callback in the same
turn, holding ``io``. Any thread may write, holding ``lock``: a command goes
straight to the socket when nothing waits in the send queue (``send_locked``);
what the socket does not take waits there for the loop, until it is writable.

The client answers the server's PINGs and sends its own on a lease: a PING every
``ping_interval`` s; two unanswered when the next is due: the server is gone (a
stopped server sends no RST and no FIN). On a lost server the client dials the
next (``dialing``), sends CONNECT, one SUB for each live subscription and the
PINGs of callers waiting on ``flush``; what was queued for the lost socket is
lost with it, and the owner (``Handler``) hears ``lost``, then ``connected``.
A forked child shares its parent's socket: the client writes only in the process
that made it, and the child closes its copy at the fork (``link``).
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
from posa.transport.nats.dialing import Servers, dial
from posa.transport.nats.loop import Loop, Timer, pid
from posa.transport.nats.polling import Lender, Watch
from posa.transport.nats.protocol import INFO, MSG, PING, PING_CMD, PONG, Msg, Parser
from posa.transport.poller import READ, WRITE, PollerType, readable, writable

__all__ = ["Client", "Handler", "CONNECT_TIMEOUT", "BACKLOG"]

CONNECT_TIMEOUT = 2.0    # s from dialling a server to its INFO
READ_SIZE = 1 << 18
BACKLOG = 1 << 20        # queued bytes over which ``flush_locked`` says wait
MAX_PINGS_OUT = 2


class Handler(Protocol):
    """The client's owner: ``connected`` and ``drained`` run on the loop's thread,
    ``lost`` on the thread that found the server gone."""
    def connected(self) -> None: ...
    def lost(self, why: str) -> None: ...
    def drained(self) -> None: ...


class Client:
    """A connection to one NATS cluster, run by the process's nats loop."""

    def __init__(self, servers: Sequence[str], name: str, loop: Loop, handler: Handler,
                 ping_interval: float) -> None:
        self.loop, self.handler, self.name = loop, handler, name
        self.ping_interval = ping_interval
        self.lock = threading.Lock()     # every writer's
        self.io = threading.RLock()      # every reader's, and every change of socket
        self.pid = pid()
        self.sock: socket.socket | None = None
        self.server = ""                 # the server dialled last
        self.connected = False           # CONNECT sent on ``sock``
        self.closed = False
        self.max_payload = 0
        self.refused = ""                # why the last server refused the client
        self.ready = threading.Event()   # set at the first CONNECT
        self.servers = Servers(servers)
        self._out = bytearray()          # what the socket has not taken (under lock)
        self._writing = False            # WRITE is in the socket's poller mask
        self._parser = Parser()
        self.watch = Watch(loop, self._event, self.io)
        self._subs: dict[int, tuple[str, Callable[[Msg], None]]] = {}
        self._sids = itertools.count(1)
        self._pongs: deque[Callable[[], None] | None] = deque()   # one per PING out
        self._unsent: list[Callable[[], None]] = []   # flushes waiting for a server
        self._pings_out = 0
        self._lease: Timer | None = None
        self._handshake: Timer | None = None

    @property
    def candidates(self) -> list[str]:
        return self.servers.candidates

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
        with self.io:
            if sock is not None and sock is self.sock and self._writing:
                self.watch.set_mask(sock, READ | WRITE)

    # -- lending the socket to a reactor (posa.transport.nats.polling) -------------------
    def lend(self, share: PollerType, lender: Lender) -> bool:
        """Have the socket polled in ``share`` (a reactor's) until ``reclaim``;
        False if it is lent already (or in a forked child)."""
        with self.io:
            return not self.closed and self.pid == pid() and self.watch.lend(share, lender)

    def reclaim(self, lender: object) -> None:
        with self.io:
            self.watch.reclaim(lender)

    def serve(self, fd: int, mask: int) -> None:
        with self.io:
            self.watch.serve(fd, mask)

    def _defer(self, fn: Callable[[], None]) -> None:
        """Run ``fn`` on the loop (now, if this is its thread)."""
        if self.loop.in_thread():
            fn()
        else:
            self.loop.call_soon(fn)

    # -- subscriptions (any thread) -----------------------------------------------------
    def subscribe(self, subject: str, callback: Callable[[Msg], None]) -> int:
        """Subscribe ``callback`` (called by the socket's reader) to ``subject``; its sid."""
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
        self.server = self.servers.next()
        try:
            sock = dial(self.server)
        except (OSError, ValueError) as exc:
            self._failed(f"{self.server}: {exc}")
            return
        with self.io:
            self.sock = sock
            self._parser = Parser()
            self.watch.add(sock, READ)
        self._handshake = self.loop.call_later(
            CONNECT_TIMEOUT, lambda: self._lose(sock, "no INFO within "
                                                f"{CONNECT_TIMEOUT} s"))

    def _failed(self, why: str) -> None:
        """A dial failed: the next server, after a pause once a round has failed."""
        self.loop.call_later(self.servers.failed(), self._dial)

    def _established(self, info: dict[str, Any]) -> None:
        """The server's first INFO: CONNECT, the subscriptions, waiting PINGs."""
        if self._handshake is not None:
            self._handshake.cancel()
        self.servers.learn(info)
        try:
            self.max_payload = int(info.get("max_payload", 1 << 20))
        except (TypeError, ValueError):
            self.max_payload = 1 << 20
        with self.lock:
            self.connected = True
            self.servers.succeeded()
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
        self._defer(self.handler.connected)

    def _ping(self) -> None:
        sock = self.sock
        if not self.connected or sock is None:
            return
        if self._pings_out >= MAX_PINGS_OUT and not self.watch.unread(sock):
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
        """An event of the socket (the caller holds ``io``)."""
        if sock is not self.sock:
            return
        if readable(mask):
            self.read(sock)
        if writable(mask) and sock is self.sock:
            self._writable(sock)

    def read(self, sock: socket.socket) -> None:
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
        elif kind == INFO and self.connected:
            self.servers.learn(value)
        elif kind == INFO:
            needs = "TLS" if value.get("tls_required") else (
                "authentication" if value.get("auth_required") else "")
            if needs:       # neither is in a nats:// address
                self.refused = f"{self.server} requires {needs}, which nats:// does not do"
                self._lose(sock, self.refused)
            else:
                self._established(value)
        elif kind == protocol.ERR and "permissions violation" not in value.lower():
            self._lose(sock, f"the server said -ERR {value!r}")

    def _writable(self, sock: socket.socket) -> None:
        with self.lock:
            self._writing = False
            self.flush_locked()
            idle = not self._out
        if idle:
            self.watch.set_mask(sock, READ)
            self._defer(self.handler.drained)

    def _lose(self, sock: socket.socket, why: str) -> None:
        """Leave ``sock`` (if it is still the one): the owner hears ``lost``, and the
        next server is dialled."""
        with self.io:
            if sock is self.sock:
                self._leave(sock, why)

    def _leave(self, sock: socket.socket, why: str) -> None:
        with self.lock:
            was = self.connected
            self.connected, self.sock, self._writing = False, None, False
            self._out.clear()
            self._unsent += [w for w in self._pongs if w is not None]
            self._pongs.clear()
        for timer in (self._lease, self._handshake):
            if timer is not None:
                timer.cancel()
        self.watch.remove(sock)
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
        with self.io, self.lock:
            sock = self.sock
            self.connected, self.sock = False, None
            self._out.clear()
            for timer in (self._lease, self._handshake):
                if timer is not None:
                    timer.cancel()
            if sock is not None:
                self.watch.remove(sock)
                sock.close()

