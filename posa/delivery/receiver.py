"""The Receiver: the receiving half of Forwarder-Receiver, with no I/O (sans-IO).

It is fed messages the gatekeeper admitted, each with the endpoint and route it
came by, and says what to do: which messages to deliver (in order, once, per
sender and stream) and which frames to send back where.  It reads no socket, no
clock and no reactor: the glue (``posa.peer``) reads frames, passes the time in,
writes what the receiver returns and arms a timer for ``deadline``.

    glue                                    Receiver
    msg = gatekeeper.admit(frame) ─────▶  receive(msg, endpoint, route) -> deliveries
    for m in deliveries: handler(m)         (a BATCH opens into its run; duplicates
                                             are dropped, early ones held)
    send every (endpoint, route, frame) ◀─  take_outbox(): cached REPLYs for repeated
                                             requests, NameNotFound for misdirected ones
    send ...; timer at ``deadline``     ◀─  collect(now): cumulative ACKs, MOVED notices
    answer(msg, kind, body) ──────────▶    (endpoint, route, frame, settles)
    after the reply went out: replied() ─▶  the ACK it stands for is dropped

Invariants:
- Per (sender, stream) each sequence number is delivered at most once and in
  order (``Inbound``); an ACK carries the highest number delivered, never more.
  What the application refuses of a run (``forget``: a peer's ``on_run``) counts
  as not delivered: the stream expects it again and no ACK covers it.
- Every run of a stream (a message or a BATCH), new or duplicate, counts towards
  that stream's pending ACK: a sender that resends is acknowledged again.  The ACK
  goes out at once after ``ack_batch`` deliveries, else when ``deadline`` passes
  (one ACK for many messages), on the route the stream's latest run came by.
- A REPLY to the newest message of a stream, sent on the route its pending ACK
  would take, stands for that ACK (the requester takes a REPLY for an ACK): a
  request-reply exchange costs two frames, not three.
- The latest replies are cached, at most ``max_replies`` of them and
  ``max_reply_bytes`` in all (the oldest go first; a reply larger than the whole
  budget is not kept): a request that comes again gets the same reply again.
- An answer that cannot be encoded (not msgpack-able, or over the frame limit)
  is replaced by an ERROR that the requester raises as ``RemoteError`` naming the
  cause, so a requester is told at once instead of waiting out its deadline.
- A request still being handled is remembered with the route its latest copy
  came by (at most ``max_open``): its reply goes there.
- After ``move(endpoint, ...)`` every sender acknowledged on that endpoint is told
  once where the peer went (MOVED), on every route the endpoint has seen (the
  latest ``max_routes``).

``answer`` may be called from any thread (an application's deferred reply); its
dict operations are single steps.  Everything else runs on one thread.
"""
from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Collection, Hashable, Iterable, Sequence
from typing import Any

from posa.admission.gatekeeper import Rejection
from posa.delivery.requests import PROGRESS_EVERY, Key, Requests
from posa.delivery.streams import Inbound
from posa.errors import NameNotFound, ProtocolError
from posa.wire.codec import Codec, Kind, Message, error_body

__all__ = ["Receiver", "Endpoint", "Outgoing", "ACK_BATCH", "ACK_DELAY", "unkeyed",
           "OnRun"]

ACK_BATCH = 128         # a stream is acknowledged at once after this many deliveries,
ACK_DELAY = 0.002       # and otherwise within this many seconds (one ACK for many)
_NO_HEADERS: dict[str, Any] = {}    # packed for ACKs (they carry none); never changed
# the kinds the receiving path compares with, as module globals: looking a member
# up on its enum class costs ~0.1 us before Python 3.12
_SEND, _REQUEST, _REPLY, _ERROR, _BATCH, _ACK, _MOVED = (
    Kind.SEND, Kind.REQUEST, Kind.REPLY, Kind.ERROR, Kind.BATCH, Kind.ACK, Kind.MOVED)



class Endpoint:
    """One address a peer receives at, as the receiver knows it: where it moved
    (if it did), the routes told so, and the recent routes of its senders.
    ``listener`` belongs to the glue; the receiver never touches it."""

    __slots__ = ("listener", "address", "moved_to", "told", "routes")

    def __init__(self, listener: Any, address: str) -> None:
        self.listener = listener
        self.address = address
        self.moved_to: tuple[str, int] | None = None
        self.told: set[Hashable] = set()
        self.routes: dict[Hashable, None] = {}   # recent senders' routes, bounded

    def __repr__(self) -> str:
        return f"Endpoint({self.address!r})"


Outgoing = tuple[Endpoint, Hashable, bytes]   # send this frame on that route
# a peer's ``on_run``: sees a turn's deliveries first, returns those it refuses (or None)
OnRun = Callable[[list[Message]], Collection[Message] | None]


def _unsealed(frame: bytes) -> bytes:
    return frame


def _no_batches(batch: Message, route: Hashable) -> list[Message]:
    raise Rejection("malformed", ProtocolError("this receiver takes no BATCH"), None)


def unkeyed(run: list[Message], keys: Any) -> list[Message]:
    """``run`` without the messages that repeat an idempotency key (one in ``keys``,
    or earlier in the run): those ``Intake.deliver`` will not deliver."""
    if not any(msg.headers and "key" in msg.headers for msg in run):
        return run
    seen: set[tuple[str, Any]] = set()
    shown = []
    for msg in run:
        if msg.headers and "key" in msg.headers:
            token = (msg.sender, msg.headers["key"])
            if token in keys or token in seen:
                continue
            seen.add(token)
        shown.append(msg)
    return shown


class Receiver(Inbound):
    """Delivery state of one named peer: ordering and duplicates (``Inbound``),
    acknowledgements, replies, moves."""

    def __init__(self, name: str, recipients: Iterable[str], *, codec: Codec,
                 seal: Callable[[bytes], bytes] | None = None,
                 unbatch: Callable[[Message, Hashable], list[Message]] = _no_batches,
                 rejections: Any = None, ack_batch: int = ACK_BATCH,
                 ack_delay: float = ACK_DELAY, max_replies: int = 1024,
                 max_reply_bytes: int = 64 * 1024 * 1024,
                 max_open: int = 65536, max_routes: int = 4096,
                 max_streams: int = 65536, max_early: int = 4096,
                 progress_every: float = PROGRESS_EVERY) -> None:
        super().__init__(max_streams, max_early)
        self.name = name
        self.recipients = frozenset([name, *recipients])
        self._pack = codec.pack             # thread-safe: ``answer`` runs on any thread
        self._pack_here = codec.packer()    # the receiving thread's own, for ACK and MOVED
        self._seal = seal or _unsealed
        self._unbatch = unbatch
        self.rejections = rejections if rejections is not None else {}
        self.ack_batch = ack_batch
        self.ack_delay = ack_delay
        self.requests = Requests(name, self.recipients, pack=self._pack, seal=seal,
                                 pack_here=self._pack_here,
                                 max_replies=max_replies, max_reply_bytes=max_reply_bytes,
                                 max_open=max_open, progress_every=progress_every)
        self.max_routes = max_routes
        # (sender, stream) -> [endpoint, route, recipient, runs since the last ACK]
        self.pending: dict[tuple[str, int], list[Any]] = {}
        self.deadline: float | None = None    # the pending ACKs go out by then
        self.outbox: list[Outgoing] = []     # what ``receive`` has to send back

    # -- receiving -------------------------------------------------------------
    def receive(self, msg: Message, endpoint: Endpoint, route: Hashable) -> Sequence[Message]:
        """The messages to deliver now, in order, for the admitted ``msg`` that came
        by ``route`` of ``endpoint`` (often ``[msg]``; a BATCH's run; or none).
        Frames to send back collect in the outbox (``take_outbox``).

        The hot path: the common run (all new, in order: it starts where its known
        stream expects and nothing is held early) is taken whole, with two dict
        lookups and no further call."""
        where = (endpoint, route)
        msg.route = where
        if msg.recipient not in self.recipients:
            self._misdirected(msg, endpoint)
            return ()
        kind = msg.kind
        if kind == _BATCH:
            try:
                run = self._unbatch(msg, route)
            except Rejection:
                return ()
            if not run:         # refused from its first message on: a rate limit
                self.refused(msg.sender, msg.stream, msg.body[0][3])
                return ()
            if run[-1].route is not where:     # (``Codec.unbatch`` gives the batch's)
                for inner in run:
                    inner.route = where
        elif kind == _SEND or kind == _REQUEST:     # noqa: SIM109 (no tuple to build)
            if not msg.stream:
                return (msg,)
            run = [msg]
        else:
            return ()
        key = (msg.sender, msg.stream)
        count = len(run)
        entry = self.pending.get(key)
        if entry is None:
            self.pending[key] = [endpoint, route, msg.recipient, count]
        else:
            entry[0] = endpoint
            entry[1] = route
            entry[3] += count
        state = self._streams.get(key)
        if state is not None and not state.early and run[0].id == state.expected:
            state.expected += count                 # the common case: all new, in order
            return run
        return self._accept_each(run, endpoint, route)

    def _accept_each(self, run: list[Message], endpoint: Endpoint,
                     route: Hashable) -> list[Message]:
        """A run with duplicates or gaps: what may be delivered now; a repeated
        request is answered from the reply cache (or redirected while open)."""
        accept = self.accept
        ready: list[Message] = []
        for inner in run:
            now_ready = accept(inner)
            if now_ready:
                ready.extend(now_ready)
            elif inner.kind == _REQUEST:
                self._repeated(inner, endpoint, route)
        return ready

    def _repeated(self, msg: Message, endpoint: Endpoint, route: Hashable) -> None:
        """A request came again (its sender resent it, maybe by another way): answer
        from the reply cache, or, while it is still being handled, make the reply
        go where the requester waits now."""
        frame = self.requests.repeated(msg, (endpoint, route))
        if frame is not None:
            self.outbox.append((endpoint, route, frame))

    def _misdirected(self, msg: Message, endpoint: Endpoint) -> None:
        """A message for another name reached this address (a stale cache after the
        name moved and the address was reused): refuse it, so that its sender
        resolves the name again instead of believing it delivered."""
        self.rejections["misdirected"] = self.rejections.get("misdirected", 0) + 1
        if msg.kind == _REQUEST:
            endpoint_, route, frame, _ = self.answer(msg, _ERROR, error_body(NameNotFound(
                f"{msg.recipient!r} does not live at {endpoint.address}; look it up again")))
            self.outbox.append((endpoint_, route, frame))

    def open_request(self, msg: Message, now: float = 0.0) -> None:
        """The request ``msg`` goes to the application at ``now``: it is open (its
        reply goes where its latest copy came from) with its deadline."""
        self.requests.opened(msg, now)

    def duplicate(self, msg: Message) -> bool:
        """True if ``msg`` repeats an idempotency key (header ``key``) its sender
        used before: not to be delivered again (what a keyed request gets instead
        is in the outbox)."""
        answers = self.requests.duplicate(msg)
        if answers is None:
            return False
        self.outbox.extend(answer[:3] for answer in answers)
        return True

    def progress(self, now: float) -> list[Outgoing]:
        """Keep-alives (PROGRESS) for the requests being handled for a while."""
        return self.requests.progress(now)

    @property
    def replies(self) -> OrderedDict[Key, bytes]:
        return self.requests.replies

    @property
    def reply_bytes(self) -> int:
        return self.requests.reply_bytes

    @property
    def max_replies(self) -> int:
        return self.requests.max_replies

    def take_outbox(self) -> list[Outgoing]:
        """The frames to send back that ``receive`` produced, in order (cleared)."""
        out, self.outbox = self.outbox, []
        return out

    # -- acknowledging ---------------------------------------------------------
    def collect(self, now: float) -> list[Outgoing]:
        """The ACKs (each maybe followed by a MOVED notice) due at ``now``: every
        stream with ``ack_batch`` runs pending, or all of them once ``deadline``
        has passed. Arms ``deadline`` if ACKs remain pending."""
        pending = self.pending
        if not pending:
            self.deadline = None
            return []
        if self.deadline is not None and now >= self.deadline:
            return self.acknowledge_all()
        batch = self.ack_batch
        out = self.acknowledge([key for key, entry in pending.items() if entry[3] >= batch])
        if pending and self.deadline is None:
            self.deadline = now + self.ack_delay
        return out

    def acknowledge_all(self) -> list[Outgoing]:
        """An ACK for every pending stream, whatever the time (the timer fired, or
        the peer closes)."""
        self.deadline = None
        return self.acknowledge(list(self.pending))

    def acknowledge(self, keys: list[tuple[str, int]]) -> list[Outgoing]:
        """One cumulative ACK for each of these streams, on its latest route."""
        pack, acked, seal = self._pack_here, self.acked, self._seal
        pending = self.pending
        out: list[Outgoing] = []
        for key in keys:
            endpoint, route, me, _ = pending.pop(key)
            sender, stream = key
            out.append((endpoint, route, seal(pack(
                _ACK, stream, acked(sender, stream), me, sender, 0, _NO_HEADERS, None))))
            self._answered(endpoint, route, sender, out)
        if not pending:
            self.deadline = None
        return out

    def _answered(self, endpoint: Endpoint, route: Hashable, sender: str,
                  out: list[Outgoing]) -> None:
        """``sender`` was acknowledged on ``route``: tell it where this peer moved,
        and remember the route for a later move."""
        if endpoint.moved_to is not None and route not in endpoint.told:
            out.append(self._moved(endpoint, route, sender))
        routes = endpoint.routes
        if route not in routes:
            routes[route] = None
            if len(routes) > self.max_routes:
                del routes[next(iter(routes))]

    # -- answering -------------------------------------------------------------
    def answer(self, msg: Message, kind: int, body: Any
               ) -> tuple[Endpoint, Hashable, bytes, Key | None]:
        """The frame answering the request ``msg`` (REPLY or ERROR with ``body``),
        where it goes (the route the requester waits on now) and, for a REPLY in
        a stream, the request it settles (pass it to ``replied`` once sent).
        The frame is cached for a repeat of the request."""
        return self.requests.answer(msg, kind, body)[0]

    def replied(self, endpoint: Endpoint, route: Hashable, settles: Key) -> list[Outgoing]:
        """The REPLY to request ``settles`` went out on ``route``: where it
        acknowledges as much as the stream's pending ACK would (the request is the
        newest delivery) on the same route, that ACK is not sent. Returns what
        to send instead (a MOVED notice, if the peer moved)."""
        sender, stream, seq = settles
        key = (sender, stream)
        entry = self.pending.get(key)
        out: list[Outgoing] = []
        if entry is not None and entry[0] is endpoint and entry[1] == route:
            state = self._streams.get(key)      # ``acked``, inline
            if state is not None and state.expected - 1 == seq:
                del self.pending[key]
                self._answered(endpoint, route, sender, out)
        return out

    # -- moving ----------------------------------------------------------------
    def move(self, endpoint: Endpoint, address: str, epoch: int) -> list[Outgoing]:
        """The peer moved away from ``endpoint`` to ``address`` (registered with
        ``epoch``): a MOVED notice for every route seen there; later senders are
        told when they are acknowledged."""
        endpoint.moved_to = (address, epoch)
        return [self._moved(endpoint, route, "") for route in list(endpoint.routes)]

    def _moved(self, endpoint: Endpoint, route: Hashable, recipient: str) -> Outgoing:
        assert endpoint.moved_to is not None
        address, epoch = endpoint.moved_to
        endpoint.told.add(route)
        return (endpoint, route, self._seal(self._pack_here(
            _MOVED, 0, 0, self.name, recipient, 0, {}, {"address": address, "epoch": epoch})))
