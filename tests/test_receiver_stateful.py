"""The sans-IO ``Receiver`` as a state machine against a model, driven through
its public methods only (``receive``, ``take_outbox``, ``collect``,
``acknowledge_all``, ``answer``, ``replied``, ``open_request``, ``move``).

Streams from two senders (one of them to an alias) reach the receiver through two
endpoints and three routes, as single messages or BATCH runs, in any order,
repeated, early or late; the application answers requests in any order; time
passes; the peer moves. Every frame the receiver returns is decoded and checked:

- per (sender, stream) deliveries are in order and at most once, exactly those the
  model expects (early arrivals held until the gap is filled);
- every run that arrives, new or duplicate, is acknowledged: at once after
  ``ack_batch`` messages, and by the time the ACK delay has passed; an ACK goes on
  the route of the stream's latest run, carries the highest number delivered in
  order (never more) and comes from the name the stream was sent to; a REPLY to
  the newest delivery sent on that route stands for it;
- an answer comes from the name the request was sent to, with its ``id`` as
  ``correlation``, on the route its latest copy came by; a repeated request is
  answered from the reply cache (exactly the frame sent before) while the cache
  holds it, and the cache keeps the latest replies within its count and byte bounds;
- after a move every route acknowledged on that endpoint, before or after the
  move, is told (MOVED) once.

The model's one assumption is the streams' own (tests/test_streams_stateful.py):
the first run of a stream that reaches the receiver starts at the stream's first
number. Frames of kinds the model does not know (a receiver may add notices) are
left alone.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Any

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from posa.delivery.receiver import Endpoint, Outgoing, Receiver
from posa.errors import NameNotFound, code_of
from posa.wire.codec import Codec, Kind, Message

CODEC = Codec()
ME, ALIAS = "b", "b-alias"
# (sender, stream id, the name it is sent to, its first number)
STREAMS = [("a", 11, ME, 1), ("a", 12, ALIAS, 1), ("c", 13, ME, 5)]
ROUTES = ["r1", "r2", "r3"]
ACK_BATCH = 3
ACK_DELAY = 0.002
MAX_REPLIES = 3
MAX_REPLY_BYTES = 256     # answers of up to 300 bytes: some are larger than the budget

Key = tuple[str, int]           # (sender, stream)
Request = tuple[str, int, int]  # (sender, stream, id)


class ReceiverMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.receiver = Receiver(ME, [ALIAS], codec=CODEC, ack_batch=ACK_BATCH,
                                 ack_delay=ACK_DELAY, max_replies=MAX_REPLIES,
                                 max_reply_bytes=MAX_REPLY_BYTES,
                                 unbatch=lambda msg, route: CODEC.unbatch(msg))
        self.endpoints = [Endpoint(None, "inproc://e1"), Endpoint(None, "inproc://e2")]
        self.now = 0.0
        self.kinds: dict[Request, int] = {}              # each message's kind, for good
        self.delivered: dict[Key, list[int]] = {s[:2]: [] for s in STREAMS}
        self.held: dict[Key, dict[int, tuple[int, str]]] = {s[:2]: {} for s in STREAMS}
        self.to: dict[Key, str] = {s[:2]: s[2] for s in STREAMS}
        self.first: dict[Key, int] = {s[:2]: s[3] for s in STREAMS}
        # streams owed an ACK: the route of their latest run, messages since the last
        self.owed: dict[Key, tuple[int, str, int]] = {}
        self.open: dict[Request, tuple[Message, int, str]] = {}  # and its latest route
        self.cache: OrderedDict[Request, bytes] = OrderedDict()
        self.known: list[set[str]] = [set(), set()]     # routes acknowledged, per endpoint
        self.told: list[set[str]] = [set(), set()]
        self.moved: list[tuple[str, int] | None] = [None, None]

    # -- the model's helpers --------------------------------------------------------
    def top(self, key: Key) -> int:
        """The highest number of ``key`` delivered in order (0: none yet)."""
        delivered = self.delivered[key]
        return delivered[-1] if delivered else 0

    def kind(self, request: Request, want: bool) -> int:
        return self.kinds.setdefault(request, Kind.REQUEST if want else Kind.SEND)

    def remember(self, request: Request, frame: bytes) -> None:
        """The reply cache's contract: the latest replies, at most ``max_replies``
        and ``max_reply_bytes`` of them, the oldest go first, a reply larger than
        the whole budget is not kept."""
        self.cache.pop(request, None)
        if len(frame) <= MAX_REPLY_BYTES:
            self.cache[request] = frame
        while len(self.cache) > MAX_REPLIES or \
                sum(map(len, self.cache.values())) > MAX_REPLY_BYTES:
            self.cache.popitem(last=False)

    def acknowledged(self, endpoint: int, route: str, out: list[Outgoing], at: int) -> int:
        """``route`` was acknowledged: if the endpoint moved and the route was not
        told yet, ``out[at]`` is its MOVED. Returns where the next frame is."""
        self.known[endpoint].add(route)
        if self.moved[endpoint] is None or route in self.told[endpoint]:
            return at
        self.check_moved(out[at], endpoint, route)
        self.told[endpoint].add(route)
        return at + 1

    def check_moved(self, outgoing: Outgoing, endpoint: int, route: str) -> None:
        where, sent_route, frame = outgoing
        msg = CODEC.decode(frame)
        address, epoch = self.moved[endpoint] or ("", 0)
        assert (where, sent_route, msg.kind, msg.sender) == (
            self.endpoints[endpoint], route, Kind.MOVED, ME)
        assert msg.body == {"address": address, "epoch": epoch}

    def check_acks(self, out: list[Outgoing], must: set[Key]) -> None:
        """``out`` holds ACKs of owed streams (each maybe followed by a MOVED), every
        stream of ``must`` among them; the model settles them."""
        out = [o for o in out if CODEC.decode(o[2]).kind in (Kind.ACK, Kind.MOVED)]
        at, acked = 0, set()
        while at < len(out):
            where, route, frame = out[at]
            msg = CODEC.decode(frame)
            key = (msg.recipient, msg.stream)
            assert msg.kind == Kind.ACK and key in self.owed and key not in acked, msg
            endpoint, latest, _ = self.owed.pop(key)
            assert (where, route) == (self.endpoints[endpoint], latest), "the latest route"
            # (a stream whose every delivery was refused: none of it acknowledged)
            assert (msg.id, msg.sender) == (self.top(key) or self.first[key] - 1,
                                            self.to[key]), msg
            acked.add(key)
            at = self.acknowledged(endpoint, route, out, at + 1)
        assert must <= acked, f"owed ACKs not sent: {must - acked}"

    # -- messages arrive -----------------------------------------------------------------
    @rule(stream=st.sampled_from(STREAMS), first=st.integers(1, 10), count=st.integers(1, 4),
          batch=st.booleans(), requests=st.lists(st.booleans(), min_size=4, max_size=4),
          endpoint=st.integers(0, 1), route=st.sampled_from(ROUTES),
          refuse=st.none() | st.integers(0, 4))
    def arrive(self, stream: tuple[str, int, str, int], first: int, count: int, batch: bool,
               requests: list[bool], endpoint: int, route: str,
               refuse: int | None = None) -> None:
        """A run arrives; with ``refuse`` the application refuses its deliveries
        from that place on (``forget``): neither delivered nor acknowledged, they
        are taken again when they come again."""
        sender, sid, to, start = stream
        key = (sender, sid)
        first = first + start - 1
        if not self.delivered[key] and not self.held[key]:
            first = start               # the assumption: a stream is first seen at its start
        seqs = list(range(first, first + count))
        kinds = [self.kind((sender, sid, seq), requests[i]) for i, seq in enumerate(seqs)]
        frames = [CODEC.pack(k, sid, seq, sender, to, 0, {}, seq) for k, seq in zip(kinds, seqs)]
        msg = CODEC.decode(CODEC.pack_batch(sid, sender, to, frames) if batch or count > 1
                           else frames[0])
        expected, replayed = self.expect(key, seqs, kinds, endpoint, route)
        where = self.endpoints[endpoint]
        ready = self.receiver.receive(msg, where, route)
        assert [(m.sender, m.stream, m.id) for m in ready] == [(*key, s) for s, _ in expected]
        if refuse is not None and refuse < len(ready):
            ready = self.receiver.forget(list(ready), ready[refuse:])
            assert len(ready) == refuse
            expected = expected[:refuse]
        for m, (seq, held_route) in zip(ready, expected):
            assert m.recipient == to and m.body == seq
            if m.kind == Kind.REQUEST:
                self.receiver.open_request(m)
                self.open[(sender, sid, seq)] = (m, *self.route_of(held_route, endpoint))
        self.delivered[key] += [seq for seq, _ in expected]
        _, _, runs = self.owed.get(key, (0, "", 0))
        self.owed[key] = (endpoint, route, runs + count)
        outbox = [o for o in self.receiver.take_outbox()
                  if CODEC.decode(o[2]).kind in (Kind.REPLY, Kind.ERROR, Kind.ACK)]
        assert outbox == [(where, route, frame) for frame in replayed], (
            "a repeated request gets its cached answer again, on the route it came by")

    @staticmethod
    def route_of(held: str, endpoint: int) -> tuple[int, str]:
        e, route = held.split(":")
        return int(e), route

    def expect(self, key: Key, seqs: list[int], kinds: list[int], endpoint: int,
               route: str) -> tuple[list[tuple[int, str]], list[bytes]]:
        """What the run delivers (number, "endpoint:route" it came by) and the cached
        answers it gets back; updates the early arrivals and the open requests."""
        held, top = self.held[key], self.top(key)
        ready: list[tuple[int, str]] = []
        replayed: list[bytes] = []
        for seq, kind in zip(seqs, kinds):
            nxt = top + 1 if top else self.first[key]
            if seq == nxt:
                ready.append((seq, f"{endpoint}:{route}"))
                top = seq
                while top + 1 in held:
                    top += 1
                    ready.append((top, held.pop(top)[1]))
                continue
            if seq > nxt and seq not in held:
                held[seq] = (kind, f"{endpoint}:{route}")
                continue
            request = (*key, seq)
            if kind == Kind.REQUEST and request in self.cache:
                replayed.append(self.cache[request])
            elif kind == Kind.REQUEST and request in self.open:
                self.open[request] = (self.open[request][0], endpoint, route)
        return ready, replayed

    @precondition(lambda self: any(self.delivered.values()))
    @rule(index=st.integers(0, 50), endpoint=st.integers(0, 1), route=st.sampled_from(ROUTES))
    def repeat(self, index: int, endpoint: int, route: str) -> None:
        """A delivered message comes again alone (its sender missed the ACK or the
        answer): a request is answered from the cache while it holds the answer."""
        streams = [s for s in STREAMS if self.delivered[s[:2]]]
        stream = streams[index % len(streams)]
        seqs = self.delivered[stream[:2]]
        seq = seqs[(index // len(streams)) % len(seqs)]
        request = self.kinds[(*stream[:2], seq)] == Kind.REQUEST
        self.arrive(stream, seq - stream[3] + 1, 1, False, [request] * 4, endpoint, route)

    @rule(seq=st.integers(1, 10), request=st.booleans(), endpoint=st.integers(0, 1),
          route=st.sampled_from(ROUTES))
    def misdirected(self, seq: int, request: bool, endpoint: int, route: str) -> None:
        """A message for a name that does not live here: a request is refused with
        NameNotFound (and that answer is cached like any), a send is dropped."""
        kind = Kind.REQUEST if request else Kind.SEND
        msg = CODEC.decode(CODEC.pack(kind, 99, seq, "a", "elsewhere", 0, {}, None))
        assert list(self.receiver.receive(msg, self.endpoints[endpoint], route)) == []
        out = [o for o in self.receiver.take_outbox()
               if CODEC.decode(o[2]).kind in (Kind.REPLY, Kind.ERROR, Kind.ACK)]
        if not request:
            assert out == []
            return
        ((where, sent_route, frame),) = out
        error = CODEC.decode(frame)
        assert (where, sent_route) == (self.endpoints[endpoint], route)
        assert (error.kind, error.correlation, error.recipient) == (Kind.ERROR, seq, "a")
        assert error.body[0] == code_of(NameNotFound(""))
        self.remember(("a", 99, seq), frame)

    # -- the application answers ---------------------------------------------------------
    @precondition(lambda self: bool(self.open))
    @rule(index=st.integers(0, 20), error=st.booleans(), size=st.integers(0, 300))
    def answer(self, index: int, error: bool, size: int) -> None:
        request = sorted(self.open)[index % len(self.open)]
        msg, endpoint, route = self.open.pop(request)
        kind = Kind.ERROR if error else Kind.REPLY
        body: Any = [7, "RemoteError", "x" * size] if error else b"x" * size
        where, sent_route, frame, settles = self.receiver.answer(msg, kind, body)
        assert (where, sent_route) == (self.endpoints[endpoint], route), (
            "the answer goes where the request's latest copy came by")
        answer = CODEC.decode(frame)
        assert (answer.kind, answer.sender, answer.recipient, answer.correlation,
                answer.stream, answer.id, answer.body) == (
            kind, msg.recipient, msg.sender, msg.id, 0, 0, body)
        self.remember(request, frame)
        assert settles == (None if error else request)
        if settles is None:
            return
        out = self.receiver.replied(where, sent_route, settles)
        key = request[:2]
        owed = self.owed.get(key)
        if owed is not None and owed[:2] == (endpoint, route) and self.top(key) == request[2]:
            del self.owed[key]          # the REPLY stands for the ACK
            assert self.acknowledged(endpoint, route, out, 0) == len(out)
        else:
            assert out == []

    # -- acknowledging -----------------------------------------------------------------------
    @rule(step=st.sampled_from([0.0, 0.0005, 0.001]))
    def time_passes(self, step: float) -> None:
        """Any ACK may be due now; one of ``ack_batch`` messages is."""
        self.now += step
        must = {key for key, (_, _, runs) in self.owed.items() if runs >= ACK_BATCH}
        self.check_acks(self.receiver.collect(self.now), must)

    @rule()
    def the_ack_delay_passes(self) -> None:
        """Once the delay has passed since a collect, every run is acknowledged."""
        self.check_acks(self.receiver.collect(self.now), set())
        self.now += ACK_DELAY
        self.check_acks(self.receiver.collect(self.now), set(self.owed))
        assert not self.owed

    @rule()
    def acknowledge_all(self) -> None:
        self.check_acks(self.receiver.acknowledge_all(), set(self.owed))
        assert not self.owed

    # -- moving ---------------------------------------------------------------------------
    @rule(endpoint=st.integers(0, 1))
    def move(self, endpoint: int) -> None:
        """Every route acknowledged on the endpoint is told where the peer went; a
        route acknowledged later is told when it is."""
        epoch = (self.moved[endpoint] or ("", 1))[1] + 1
        self.moved[endpoint] = (f"tcp://127.0.0.1:{9000 + epoch}", epoch)
        out = self.receiver.move(self.endpoints[endpoint], *self.moved[endpoint])
        assert sorted(route for _, route, _ in out) == sorted(self.known[endpoint])
        for outgoing in out:
            self.check_moved(outgoing, endpoint, outgoing[1])
        self.told[endpoint] |= self.known[endpoint]

    # -- after every step ------------------------------------------------------------------------
    @invariant()
    def delivered_in_order_at_most_once(self) -> None:
        for key, seqs in self.delivered.items():
            assert seqs == list(range(self.first[key], self.first[key] + len(seqs)))

    @invariant()
    def the_cache_model_is_within_its_bounds(self) -> None:
        assert len(self.cache) <= MAX_REPLIES
        assert sum(map(len, self.cache.values())) <= MAX_REPLY_BYTES


ReceiverMachine.TestCase.settings = settings(max_examples=300, stateful_step_count=40,
                                             deadline=None)
test_receiver_machine = ReceiverMachine.TestCase
