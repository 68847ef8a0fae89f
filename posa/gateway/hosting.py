"""Names served by the gateway for HTTP programs: receive by long poll or WebSocket.

``POST /v1/names/{name}`` makes a ``posa.aio.Peer`` of that name in the
gateway (its credential given back, or the one the program sends to take the
name over after a restart); its messages wait in a bounded queue (``inbox``)
until the program takes them by ``GET /v1/inbox/{name}?wait=`` or over a
WebSocket.  A request keeps an id until ``POST /v1/reply/{id}`` answers it or
its deadline passes (then the requester got ``Timeout``).

The lease: a hosted name lives while its program shows it is there, by a poll
in progress, an open WebSocket, or any call for the name within ``lease``
seconds.  When the program vanishes the gateway unregisters the name after
``lease`` seconds, so senders get ``NameNotFound`` instead of silence.

Taking is at most once: a message handed to a poll whose HTTP response is
lost is gone (a request's sender then gets ``Timeout``).  A full queue refuses
a request with ``Rejected`` and drops a one-way message, counted in
``posa_gateway_inbox_dropped_total``.
"""
from __future__ import annotations

import asyncio
import secrets
import time
from collections import deque
from typing import TYPE_CHECKING, Any

from posa.aio import Peer
from posa.errors import NameNotFound, Rejected, StaleEpoch, Unauthorized
from posa.peer import DEFERRED
from posa.wire.codec import Kind, Message
from posa.wire.names import validate_name

if TYPE_CHECKING:
    from posa.gateway.core import Gateway

__all__ = ["Hosting", "Hosted", "as_json"]

INBOX = 1000
MIN_LEASE, MAX_LEASE = 1.0, 3600.0


class Hosted:
    """One name the gateway serves for an HTTP program."""

    def __init__(self, hosting: Hosting, name: str, owner: str, credential: str,
                 lease: float) -> None:
        self.hosting, self.name, self.owner = hosting, name, owner
        self.credential, self.lease = credential, lease
        self.queue: deque[Message] = deque()
        self.wake = asyncio.Event()
        self.takers = 0
        self.last_seen = time.monotonic()
        self.dropped = 0
        self.peer: Peer | None = None
        self.opening: asyncio.Future[None] | None = None   # while its name registers

    def arrive(self, msg: Message) -> Any:
        """The reactor thread: queue the message for the program, or refuse it."""
        if len(self.queue) >= INBOX:
            if msg.kind == Kind.REQUEST:
                raise Rejected(f"the inbox of {self.name!r} at the gateway is full: its "
                               "program does not take its messages")
            self.dropped += 1
            self.hosting.gateway.counters["inbox_dropped"] += 1
            return None
        self.hosting.gateway.loop.call_soon_threadsafe(self._push, msg)
        return DEFERRED if msg.kind == Kind.REQUEST else None

    def _push(self, msg: Message) -> None:
        self.queue.append(msg)
        self.wake.set()

    async def _arrival(self, deadline: float) -> None:
        """Wait until a message is queued, the deadline passes or the name goes."""
        while not self.queue and self.peer is not None:
            self.wake.clear()
            left = deadline - time.monotonic()
            if left <= 0:
                return
            try:
                await asyncio.wait_for(self.wake.wait(), left)
            except asyncio.TimeoutError:
                return

    def _expired(self, msg: Message) -> bool:
        """A request whose deadline passed while it waited (answered with Timeout)."""
        return (msg.kind == Kind.REQUEST and self.peer is not None
                and self.peer.sync.expired(msg))

    def touch(self) -> None:
        self.last_seen = time.monotonic()

    async def take(self, wait: float, most: int) -> list[dict[str, Any]]:
        """Up to ``most`` messages, waiting up to ``wait`` seconds for the first."""
        self.touch()
        self.takers += 1
        try:
            deadline = time.monotonic() + wait
            while True:
                await self._arrival(deadline)
                taken = [self.queue.popleft() for _ in range(min(most, len(self.queue)))]
                handed = [self.hosting.hand_out(self, msg) for msg in taken
                          if not self._expired(msg)]
                if handed or not taken or self.peer is None:
                    return handed       # (only expired requests taken: wait on)
        finally:
            self.takers -= 1
            self.touch()


def as_json(msg: Message, request_id: str | None) -> dict[str, Any]:
    left = None if msg.deadline is None else round(max(0.0, msg.deadline - time.monotonic()), 3)
    return {"id": request_id, "kind": "request" if msg.kind == Kind.REQUEST else "send",
            "sender": msg.sender, "body": msg.body, "expires_in": left}


class Hosting:
    """The hosted names of one gateway, their open requests, and their leases."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self.names: dict[str, Hosted] = {}
        self.requests: dict[str, tuple[Hosted, Message]] = {}
        self._sweeper: asyncio.Task[None] | None = None

    async def register(self, name: str, owner: str, credential: str | None,
                       lease: float) -> Hosted:
        validate_name(name)
        if not MIN_LEASE <= lease <= MAX_LEASE:
            raise Rejected(f"lease must be {MIN_LEASE:.0f} to {MAX_LEASE:.0f} seconds")
        old = self.names.get(name)
        if old is not None:
            if credential != old.credential:
                raise StaleEpoch(f"{name!r} is already served by this gateway; "
                                 "give its credential to take it over")
            if old.opening is not None:
                await asyncio.shield(old.opening)
            old.owner, old.lease = owner, lease
            old.touch()
            return old
        hosted = Hosted(self, name, owner, credential or secrets.token_urlsafe(24), lease)
        self.names[name] = hosted       # held while it registers: a second register sees it
        hosted.opening = asyncio.ensure_future(self._open(hosted))
        await asyncio.shield(hosted.opening)
        if self._sweeper is None:
            self._sweeper = asyncio.ensure_future(self._sweep())
        return hosted

    async def _open(self, hosted: Hosted) -> None:
        """Register ``hosted``'s name through a peer of its own, off the loop."""
        gateway, name = self.gateway, hosted.name
        try:
            peer = await Peer.open(
                name, registry=gateway.registry_for(name), listen=gateway.listen,
                credential=hosted.credential, handler=hosted.arrive,
                lease=min(hosted.lease, 10.0), authenticator=gateway.authenticator(name))
        except BaseException:
            if self.names.get(name) is hosted:
                del self.names[name]
            raise
        finally:
            hosted.opening = None
        if self.names.get(name) is not hosted:      # unregistered meanwhile
            await peer.close()
            raise NameNotFound(f"{name!r} was unregistered while it registered")
        hosted.peer = peer
        gateway.counters["hosted_registered"] += 1

    def find(self, name: str, owner: str) -> Hosted:
        hosted = self.names.get(name)
        if hosted is None:
            raise NameNotFound(f"{name!r} is not served by this gateway: "
                               f"register it with POST /v1/names/{name}")
        if hosted.owner != owner:
            raise Unauthorized(f"{name!r} was registered with another token")
        hosted.touch()
        return hosted

    def hand_out(self, hosted: Hosted, msg: Message) -> dict[str, Any]:
        request_id = None
        if msg.kind == Kind.REQUEST:
            request_id = secrets.token_urlsafe(12)
            self.requests[request_id] = (hosted, msg)
        return as_json(msg, request_id)

    def answer(self, request_id: str, owner: str, body: Any = None,
               error: str | None = None) -> None:
        """Answer an open request with ``body`` (or with the error ``error``)."""
        found = self.requests.get(request_id)
        if found is None or found[0].owner != owner:
            raise NameNotFound(f"no open request {request_id!r}: it was answered, "
                               "or its deadline passed")
        hosted, msg = self.requests.pop(request_id)
        hosted.touch()
        if hosted.peer is None:
            raise NameNotFound(f"{hosted.name!r} is no longer served by this gateway")
        if error is not None:
            hosted.peer.reply_error(msg, Rejected(error))
        else:
            hosted.peer.reply(msg, body)

    async def unregister(self, name: str, owner: str) -> None:
        await self._drop(self.find(name, owner))

    async def _drop(self, hosted: Hosted) -> None:
        self.names.pop(hosted.name, None)
        for request_id in [r for r, (h, _) in self.requests.items() if h is hosted]:
            del self.requests[request_id]
        peer, hosted.peer = hosted.peer, None
        hosted.wake.set()
        if peer is not None:
            await peer.close()

    async def _sweep(self) -> None:
        """Unregister names whose program vanished; forget expired requests."""
        while True:
            await asyncio.sleep(0.5)
            now = time.monotonic()
            for request_id, (_, msg) in list(self.requests.items()):
                if msg.deadline is not None and msg.deadline < now:
                    del self.requests[request_id]
            for hosted in list(self.names.values()):
                if hosted.takers == 0 and now - hosted.last_seen > hosted.lease:
                    self.gateway.counters["hosted_expired"] += 1
                    await self._drop(hosted)

    async def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
        for hosted in list(self.names.values()):
            await self._drop(hosted)
