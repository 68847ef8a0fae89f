"""One NATS client of posa's own per cluster per process, and the pump that
publishes for every endpoint on it.

Endpoints on the same servers (in any order) share a ``Link``, whose ``Client``
(``posa.transport.nats.client``) dials the servers in the order the first address
used lists them, the first first, and fails over in that order too: list a nearby
server first. A link is counted: the last endpoint to let go closes it, after
what was queued has left.

A send with nothing queued ahead of it writes its frame to the client's socket
from the sending thread, holding the lock every writer of the socket takes
(``Client.send_locked``): a request and its answer cross no thread on their way
out. Otherwise ``put`` appends the frame to its ``Outbound`` (one per direction
of a connection: its subject, its numbering, its queue) and that outbound to the
link's queue, and wakes the pump only if it is not awake already, so a burst
costs one hand-off to the nats loop. The pump cuts frames to the server's
``max_payload``, numbers them and queues them on the client, which writes what
the socket takes at once; while more than ``client.BACKLOG`` bytes wait for the
socket the pump waits for it to drain (``drained``). Subscriptions deliver in the
turn of the loop that reads the message.

When the client loses its server, every endpoint on the link hears ``link_lost``:
frames in flight may be gone, so connections end (posa's streams resend on new
ones once the client has connected to another server of the cluster) and
listeners drop their connections.

A forked child inherits the links, not the loop thread that runs them: the fork
hook (``_forget_parents``) closes in the child every endpoint on them (their use
raises ``Closed`` saying they are the parent's; their close returns at once,
taking no lock a thread of the parent may have held and writing no descriptor
the parent shares) and its copy of each client's socket, that of a link the
parent was closing too (it has left the table, its socket not yet closed), and
starts the child's table of links afresh: the child's endpoints get a client of
their own.
"""
from __future__ import annotations

import os
import secrets
import threading
import weakref
from collections import deque
from collections.abc import Callable
from typing import Protocol

from posa.errors import Timeout, TransportError
from posa.transport.inproc.wakeup import Sleepers
from posa.transport.nats import protocol
from posa.transport.nats.address import NatsAddress
from posa.transport.nats.client import Client
from posa.transport.nats.loop import event_loop
from posa.transport.nats.protocol import CRLF, Msg
from posa.transport.nats.wire import DATA, HEADER, chunks

__all__ = ["Endpoint", "Outbound", "Link", "acquire", "release", "new_inbox", "parents"]

PING_INTERVAL = 5        # s; two unanswered pings and a silent server is given up
BATCH = 1 << 20          # bytes the pump queues before it writes them
CLOSE_GRACE = 2.0        # s a closing link waits for its server to take what it holds
_HEADER, _pack = HEADER.size, HEADER.pack


class Endpoint(Protocol):
    def link_lost(self, why: str) -> None: ...
    def forked(self) -> None: ...


def parents(address: str) -> str:
    """Why a forked child cannot use the parent's endpoint at ``address``."""
    return (f"{address} was opened in the parent process, whose NATS client (its "
            "socket and the thread reading it) is the parent process's: open a new "
            "endpoint in the child (an inherited Peer, Sender or Client does so on "
            "its next send)")


class Outbound:
    """One direction of one connection, as its sender sees it."""

    __slots__ = ("subject", "reply", "head", "seq", "frames", "blocked", "low", "owner")

    def __init__(self, subject: str, reply: str, hwm: int, owner: Endpoint) -> None:
        self.subject, self.reply, self.owner = subject, reply, owner
        self.head = protocol.pub_head(subject, reply)   # its PUB line, but the size
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


def new_inbox() -> str:
    """A subject of a connection's own."""
    return "_INBOX." + secrets.token_hex(11)


class Link:
    """A NATS client shared by the endpoints of a process on one cluster."""

    def __init__(self, address: NatsAddress) -> None:
        self.address = address
        self.users = 0
        self.failed = False
        self.endpoints: dict[Endpoint, None] = {}
        self.queue: deque[Outbound | tuple[str, bytes, str]] = deque()
        self.loop = event_loop()
        self._scheduled = True       # until the client is connected
        self._waiting = False        # for the client's backlog to drain
        self._closing = False
        self.client = Client(address.servers, f"posa-{os.getpid()}", self.loop, self,
                             PING_INTERVAL)
        _made.add(self)
        self.client.start()

    @property
    def room(self) -> int:
        """Payload bytes per message after the header, on the server the client is
        on now (it learns each server's ``max_payload`` as it connects: the nodes
        of a cluster need not agree)."""
        payload = self.client.max_payload
        return payload - HEADER.size if payload else 0

    def ready(self, timeout: float) -> None:
        if not self.client.ready.wait(timeout):
            self.failed = True
            refused = self.client.refused
            raise TransportError(f"no NATS server of {self.address.cluster} answered "
                                 f"within {timeout} s; " + (
                                     f"{refused}" if refused else
                                     "start one, or check the address"))

    # -- sending (any thread) ------------------------------------------------------------

    def put(self, out: Outbound, frame: bytes) -> None:
        client = self.client
        size = _HEADER + len(frame)
        if client.connected and not self.queue and size <= client.max_payload:   # (``room``)
            with client.lock:
                if not self.queue and not self._waiting and client.send_locked(
                        b"%s%d\r\n%s%s\r\n" % (out.head, size, _pack(DATA, out.seq), frame)):
                    out.seq += 1
                    return
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
        self.loop.call_soon(self._pump)

    # -- the pump (the loop) -------------------------------------------------------------

    def _pump(self) -> None:
        """Publish what is queued, until the client's backlog is over its mark; the
        client's ``drained`` pumps again. While it waits, or no server is
        connected, the pump stays scheduled, so senders queue without waking the
        loop."""
        client = self.client
        if self._waiting or not client.connected:
            return
        self._scheduled = False
        with client.lock:
            if self._publish_queued(client):
                self._waiting = self._scheduled = True

    def _publish_queued(self, client: Client) -> bool:
        """``True`` if the backlog filled before the queue emptied. A turn publishes
        what was queued when it began, no more: senders that keep the queue full
        must not keep the loop from reading the socket and hearing it break; the
        senders that queue during the turn wake the pump again."""
        queue = self.queue
        for _ in range(len(queue)):
            item = queue.popleft()
            if isinstance(item, tuple):
                subject, payload, reply = item
                client.queue_locked(protocol.pub(subject, reply, len(payload)), payload,
                                    CRLF)
            else:
                self._publish(item, client)
            if client.backlog >= BATCH and client.flush_locked():
                return True
        return client.flush_locked()

    def _publish(self, out: Outbound, client: Client) -> None:
        frame = out.frames.popleft()
        if out.blocked and len(out.frames) <= out.low:
            out.blocked.wake_all()
        seq = out.seq
        room = self.room
        for kind, body in chunks(frame, room):
            out.seq = seq + 1
            client.queue_locked(b"%s%d\r\n%s" % (out.head, HEADER.size + len(body),
                                                  HEADER.pack(kind, seq)), body, CRLF)
            seq += 1

    # -- the client's events (the loop) ---------------------------------------------------

    def connected(self) -> None:
        self._waiting = False
        self._pump()

    def drained(self) -> None:
        if self._waiting:
            self._waiting = False
            self._pump()

    def lost(self, why: str) -> None:
        self._scheduled, self._waiting = True, False     # until connected again
        if self._closing:
            return
        for endpoint in list(self.endpoints):
            endpoint.link_lost(why)

    # -- subscriptions (any thread) ------------------------------------------------------

    def subscribe(self, subject: str, cb: Callable[[Msg], None], timeout: float) -> int:
        """Subscribe ``cb`` (called as each message is parsed, on the thread that
        reads the socket: the loop's, or a reactor's it is lent to) and wait
        until the server has the interest; the subscription's id."""
        sid = self.client.subscribe(subject, cb)
        try:
            self.client.flush(timeout)
        except BaseException:
            self.client.unsubscribe(sid)
            raise
        return sid

    def unsubscribe(self, sid: int) -> None:
        self.client.unsubscribe(sid)

    def close(self, linger: float) -> None:
        """Publish what is queued, then close the client; what its socket still
        holds after ``max(linger, CLOSE_GRACE)`` s (a stopped server takes none of
        it) is dropped with the socket."""
        self._closing = True
        self._pump()
        self.client.close(max(linger, CLOSE_GRACE))


_links: dict[tuple[int, str], Link] = {}
_links_lock = threading.Lock()
_made: weakref.WeakSet[Link] = weakref.WeakSet()     # for the fork hook: closing ones too


def acquire(address: NatsAddress, owner: Endpoint, timeout: float) -> Link:
    """The process's link to ``address``'s servers, connected; ``owner`` hears its events."""
    key = (os.getpid(), address.key)
    with _links_lock:
        link = _links.get(key)
        if link is None or link.failed:
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
    link.loop.call_soon(link.close, 0.0 if link.failed else linger)


def _forget_parents() -> None:
    """In a forked child every link is the parent's (see the module docstring)."""
    global _links_lock
    _links_lock = threading.Lock()
    inherited = list(_made)         # a link being closed has left ``_links`` already
    _links.clear()
    _made.clear()
    for link in inherited:
        _close_copy(link.client)
        for endpoint in list(link.endpoints):
            endpoint.forked()


def _close_copy(client: Client) -> None:
    """(in a forked child) The parent's client: closed here, its socket's copy
    closed (without a word to the server: the connection is the parent's), its
    locks new (a thread of the parent, absent here, may have held one)."""
    client.lock, client.io = threading.Lock(), threading.RLock()
    client.closed, client.connected = True, False
    sock, client.sock = client.sock, None
    if sock is not None:
        sock.close()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_parents)
