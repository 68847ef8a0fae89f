"""The sans-IO Receiver, driven without sockets: tables of cases, then a state
machine that reorders, repeats, batches, resends by another route, answers
requests and moves, checking the delivery invariants after every step."""
from __future__ import annotations

from typing import Any

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from posa.delivery.receiver import ACK_BATCH, Endpoint, Outgoing, Receiver
from posa.errors import NameNotFound, RemoteError, code_of, from_wire
from posa.wire.codec import Codec, CodecLimits, Kind, Message, error_fields

CODEC = Codec()


def envelope(seq: int, *, sender: str = "a", stream: int = 7, kind: int = Kind.SEND,
             recipient: str = "b") -> Message:
    return CODEC.decode(CODEC.pack(kind, stream, seq, sender, recipient, 0, {}, seq))


def batch(first: int, count: int, *, sender: str = "a", stream: int = 7,
          kinds: list[int] | None = None) -> Message:
    kinds = kinds or [Kind.SEND] * count
    frames = [CODEC.pack(kinds[i], stream, first + i, sender, "b", 0, {}, first + i)
              for i in range(count)]
    return CODEC.decode(CODEC.pack_batch(stream, sender, "b", frames))


def new_receiver(**kwargs: Any) -> Receiver:
    return Receiver("b", ["b-alias"], codec=CODEC,
                    unbatch=lambda msg, route: CODEC.unbatch(msg), **kwargs)


def decoded(out: list[Outgoing]) -> list[tuple[str, Any, Message]]:
    return [(endpoint.address, route, CODEC.decode(frame)) for endpoint, route, frame in out]


def test_in_order_messages_are_delivered_and_acknowledged_once_per_batch() -> None:
    receiver = new_receiver()
    e1 = Endpoint(None, "inproc://e1")
    got = [m.id for seq in range(1, ACK_BATCH + 3)
           for m in receiver.receive(envelope(seq), e1, "r")]
    assert got == list(range(1, ACK_BATCH + 3))
    # each message a run: the batch count was passed, so the ACK is due at once
    (ack,) = decoded(receiver.collect(now=0.0))
    assert ack[1] == "r" and ack[2].kind == Kind.ACK and ack[2].id == ACK_BATCH + 2
    assert receiver.deadline is None and not receiver.pending


def test_a_few_messages_wait_for_the_deadline() -> None:
    receiver = new_receiver()
    e1 = Endpoint(None, "inproc://e1")
    receiver.receive(envelope(1), e1, "r")
    assert receiver.collect(now=10.0) == []
    assert receiver.deadline == 10.0 + receiver.ack_delay
    assert receiver.collect(now=10.001) == []
    (ack,) = decoded(receiver.collect(now=receiver.deadline))
    assert (ack[2].kind, ack[2].id, ack[2].sender, ack[2].recipient) == (Kind.ACK, 1, "b", "a")


def test_early_messages_wait_for_the_gap_and_duplicates_are_dropped() -> None:
    receiver = new_receiver()
    e1 = Endpoint(None, "inproc://e1")
    assert [m.id for m in receiver.receive(envelope(1), e1, "r")] == [1]
    assert list(receiver.receive(envelope(3), e1, "r")) == []
    assert [m.id for m in receiver.receive(batch(2, 3), e1, "r")] == [2, 3, 4]
    assert list(receiver.receive(envelope(2), e1, "r")) == []
    (ack,) = decoded(receiver.acknowledge_all())
    assert ack[2].id == 4


def test_a_run_is_taken_whole_only_where_its_stream_expects_it() -> None:
    receiver = new_receiver()
    e1 = Endpoint(None, "inproc://e1")

    def ids(msg: Message) -> list[int]:
        return [m.id for m in receiver.receive(msg, e1, "r")]
    assert ids(batch(1, 2)) == [1, 2]                  # an unknown stream: one by one
    assert ids(batch(3, 3)) == [3, 4, 5]               # where it expects: whole
    assert ids(batch(4, 3)) == [6]                     # overlaps: the new part
    assert ids(batch(9, 2)) == []                      # a gap: held early
    assert ids(batch(7, 1)) == [7]                     # something is held early
    assert ids(envelope(8)) == [8, 9, 10]
    assert receiver.acked("a", 7) == 10


def test_misdirected_request_gets_name_not_found_and_a_send_is_only_counted() -> None:
    receiver = new_receiver()
    e1 = Endpoint(None, "inproc://e1")
    assert list(receiver.receive(envelope(1, recipient="c"), e1, "r")) == []
    assert not receiver.outbox
    assert list(receiver.receive(envelope(2, kind=Kind.REQUEST, recipient="c"), e1, "r")) == []
    (error,) = decoded(receiver.take_outbox())
    assert error[2].kind == Kind.ERROR and error[2].correlation == 2
    assert error[2].body[0] == code_of(NameNotFound("x"))
    assert receiver.rejections["misdirected"] == 2


def test_an_alias_is_a_recipient_and_answers_in_its_name() -> None:
    receiver = new_receiver()
    e1 = Endpoint(None, "inproc://e1")
    (msg,) = receiver.receive(envelope(1, kind=Kind.REQUEST, recipient="b-alias"), e1, "r")
    endpoint, route, frame, settles = receiver.answer(msg, Kind.REPLY, "ok")
    assert CODEC.decode(frame).sender == "b-alias" and settles == ("a", 7, 1)


def test_a_reply_to_the_newest_message_stands_for_the_ack() -> None:
    receiver = new_receiver()
    e1 = Endpoint(None, "inproc://e1")
    (msg,) = receiver.receive(envelope(1, kind=Kind.REQUEST), e1, "r")
    receiver.open_request(msg)
    endpoint, route, frame, settles = receiver.answer(msg, Kind.REPLY, "ok")
    assert (endpoint, route) == (e1, "r") and settles is not None
    assert receiver.replied(endpoint, route, settles) == []
    assert not receiver.pending and receiver.acknowledge_all() == []


def test_a_reply_does_not_stand_for_an_ack_of_later_messages() -> None:
    receiver = new_receiver()
    e1 = Endpoint(None, "inproc://e1")
    (msg,) = receiver.receive(envelope(1, kind=Kind.REQUEST), e1, "r")
    receiver.receive(envelope(2), e1, "r")
    endpoint, route, _, settles = receiver.answer(msg, Kind.REPLY, "ok")
    assert settles is not None
    receiver.replied(endpoint, route, settles)
    (ack,) = decoded(receiver.acknowledge_all())
    assert ack[2].id == 2


def test_a_repeated_request_goes_where_its_sender_waits_now() -> None:
    receiver = new_receiver()
    e1, e2 = Endpoint(None, "inproc://e1"), Endpoint(None, "inproc://e2")
    (msg,) = receiver.receive(envelope(1, kind=Kind.REQUEST), e1, "r1")
    receiver.open_request(msg)
    assert list(receiver.receive(envelope(1, kind=Kind.REQUEST), e2, "r2")) == []
    assert not receiver.outbox                          # still being handled
    endpoint, route, frame, _ = receiver.answer(msg, Kind.REPLY, "ok")
    assert (endpoint, route) == (e2, "r2")
    receiver.receive(envelope(1, kind=Kind.REQUEST), e1, "r3")
    assert receiver.take_outbox() == [(e1, "r3", frame)]   # from the cache


def test_the_reply_cache_is_bounded_in_bytes_as_well_as_in_count() -> None:
    receiver = new_receiver(max_reply_bytes=64 * 1024)
    e1 = Endpoint(None, "inproc://e1")
    big = b"x" * 20_000
    for seq in range(1, 11):
        (msg,) = receiver.receive(envelope(seq, kind=Kind.REQUEST), e1, "r")
        receiver.answer(msg, Kind.REPLY, big)
        assert receiver.reply_bytes == sum(len(f) for f in receiver.replies.values())
        assert receiver.reply_bytes <= 64 * 1024
    assert [key[2] for key in receiver.replies] == [8, 9, 10]   # the newest kept
    (msg,) = receiver.receive(envelope(11, kind=Kind.REQUEST), e1, "r")
    receiver.answer(msg, Kind.REPLY, b"y" * 70_000)           # larger than the budget
    assert (7, 11) not in {k[1:] for k in receiver.replies} and receiver.reply_bytes <= 65536


@pytest.mark.parametrize("body, cause", [(object(), "msgpack"), (b"z" * 5000, "frame")])
def test_an_answer_that_cannot_be_encoded_becomes_a_remote_error(body: Any,
                                                                 cause: str) -> None:
    codec = Codec(CodecLimits(max_frame_size=4096))
    receiver = Receiver("b", [], codec=codec)
    e1 = Endpoint(None, "inproc://e1")
    (msg,) = receiver.receive(envelope(1, kind=Kind.REQUEST), e1, "r")
    endpoint, route, frame, settles = receiver.answer(msg, Kind.REPLY, body)
    answer = CODEC.decode(frame)
    assert (endpoint, route, settles, answer.kind) == (e1, "r", None, Kind.ERROR)
    error = from_wire(*error_fields(answer.body))
    assert isinstance(error, RemoteError) and cause in str(error).lower(), str(error)


def test_after_a_move_senders_are_told_once_per_route() -> None:
    receiver = new_receiver()
    e1 = Endpoint(None, "inproc://e1")
    receiver.receive(envelope(1), e1, "r1")
    receiver.acknowledge_all()
    (moved,) = decoded(receiver.move(e1, "tcp://127.0.0.1:9", 2))
    assert moved[1] == "r1" and moved[2].kind == Kind.MOVED
    assert moved[2].body == {"address": "tcp://127.0.0.1:9", "epoch": 2}
    receiver.receive(envelope(2), e1, "r1")
    receiver.receive(envelope(1, sender="z"), e1, "r2")
    kinds = [(route, m.kind) for _, route, m in decoded(receiver.acknowledge_all())]
    assert kinds == [("r1", Kind.ACK), ("r2", Kind.ACK), ("r2", Kind.MOVED)]


def test_unstreamed_messages_are_delivered_as_they_come_without_acks() -> None:
    receiver = new_receiver()
    e1 = Endpoint(None, "inproc://e1")
    assert [m.id for m in receiver.receive(envelope(0, stream=0), e1, "r")] == [0]
    assert not receiver.pending
    assert list(receiver.receive(envelope(1, kind=Kind.ACK), e1, "r")) == []


SENDERS = [("a", 1), ("a", 2), ("c", 1)]
ROUTES = ["r1", "r2", "r3"]


class ReceiverMachine(RuleBasedStateMachine):
    """Senders' streams reach one receiver through two endpoints and three routes,
    in any order, repeated, batched or alone; the application answers requests
    in any order; the peer moves. ``kinds`` fixes each message's kind forever."""

    def __init__(self) -> None:
        super().__init__()
        self.receiver = new_receiver(max_replies=4)
        self.endpoints = [Endpoint(None, "inproc://e1"), Endpoint(None, "inproc://e2")]
        self.delivered: dict[tuple[str, int], list[int]] = {key: [] for key in SENDERS}
        self.kinds: dict[tuple[str, int, int], int] = {}
        self.open: list[Message] = []
        self.now = 0.0

    def kind(self, sender: str, stream: int, seq: int, request: bool) -> int:
        return self.kinds.setdefault((sender, stream, seq),
                                     Kind.REQUEST if request else Kind.SEND)

    def check_out(self, out: list[Outgoing]) -> None:
        for _, _, frame in out:
            msg = CODEC.decode(frame)
            if msg.kind == Kind.ACK:    # never more than was delivered
                delivered = self.delivered[(msg.recipient, msg.stream)]
                assert msg.id <= (delivered[-1] if delivered else 0)

    def feed(self, msg: Message, endpoint: int, route: str) -> None:
        replies = dict(self.receiver.replies)
        for ready in self.receiver.receive(msg, self.endpoints[endpoint], route):
            self.delivered[(ready.sender, ready.stream)].append(ready.id)
            if ready.kind == Kind.REQUEST:
                self.receiver.open_request(ready)
                self.open.append(ready)
        # every run counts towards an ACK, a repeated one too (its sender resent it)
        assert (msg.sender, msg.stream) in self.receiver.pending
        out = self.receiver.take_outbox()
        self.check_out(out)
        cached = [frame for (sender, stream, seq), frame in replies.items()
                  if sender == msg.sender and stream == msg.stream]
        for _, sent_route, frame in out:   # a repeated request gets the cached reply again
            assert sent_route == route and frame in cached

    @rule(who=st.sampled_from(SENDERS), seq=st.integers(1, 12), request=st.booleans(),
          endpoint=st.integers(0, 1), route=st.sampled_from(ROUTES))
    def one(self, who: tuple[str, int], seq: int, request: bool, endpoint: int,
            route: str) -> None:
        sender, stream = who
        self.feed(envelope(seq, sender=sender, stream=stream,
                           kind=self.kind(sender, stream, seq, request)), endpoint, route)

    @rule(who=st.sampled_from(SENDERS), first=st.integers(1, 12), count=st.integers(1, 5),
          requests=st.lists(st.booleans(), min_size=5, max_size=5),
          endpoint=st.integers(0, 1), route=st.sampled_from(ROUTES))
    def several(self, who: tuple[str, int], first: int, count: int, requests: list[bool],
                endpoint: int, route: str) -> None:
        sender, stream = who
        kinds = [self.kind(sender, stream, first + i, requests[i]) for i in range(count)]
        self.feed(batch(first, count, sender=sender, stream=stream, kinds=kinds),
                  endpoint, route)

    @precondition(lambda self: bool(self.open))
    @rule(index=st.integers(0, 20), error=st.booleans())
    def answer(self, index: int, error: bool) -> None:
        msg = self.open.pop(index % len(self.open))
        endpoint, route, frame, settles = self.receiver.answer(
            msg, Kind.ERROR if error else Kind.REPLY, "answer")
        assert CODEC.decode(frame).correlation == msg.id
        if settles is not None:
            self.check_out(self.receiver.replied(endpoint, route, settles))

    @rule(step=st.sampled_from([0.0, 0.001, 0.003]))
    def time_passes(self, step: float) -> None:
        self.now += step
        pending = set(self.receiver.pending)
        out = self.receiver.collect(self.now)
        self.check_out(out)
        acked = {(m.recipient, m.stream) for _, _, m in decoded(out) if m.kind == Kind.ACK}
        assert acked <= pending
        if not self.receiver.pending:
            assert pending <= acked      # everything pending was acknowledged

    @rule()
    def close(self) -> None:
        pending = set(self.receiver.pending)
        out = self.receiver.acknowledge_all()
        self.check_out(out)
        assert {(m.recipient, m.stream) for _, _, m in decoded(out)
                if m.kind == Kind.ACK} == pending
        assert not self.receiver.pending

    @precondition(lambda self: self.endpoints[0].moved_to is None)
    @rule()
    def move(self) -> None:
        out = self.receiver.move(self.endpoints[0], "inproc://e2", 2)
        assert {route for _, route, _ in out} == set(self.endpoints[0].routes)

    @invariant()
    def delivered_once_in_order(self) -> None:
        # a stream starts where its first message is (a forwarder may number a new
        # stream above 1); from there each number once, consecutively
        for seqs in self.delivered.values():
            assert seqs == list(range(seqs[0], seqs[0] + len(seqs))) if seqs else True

    @invariant()
    def reply_cache_is_bounded(self) -> None:
        assert len(self.receiver.replies) <= self.receiver.max_replies


ReceiverMachine.TestCase.settings = settings(max_examples=150, stateful_step_count=40,
                                             deadline=None)
test_receiver_machine = ReceiverMachine.TestCase
