"""Reliable streams (sans-IO): exactly once and in order, whatever the network does."""
from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from posa.delivery.streams import Inbound, Outbound
from posa.wire.codec import Kind, Message


def msg(seq: int, sender: str = "a", stream: int = 7) -> Message:
    return Message(Kind.SEND, sender, "b", seq, id=seq, stream=stream)


@given(st.integers(min_value=1, max_value=60), st.data())
def test_any_arrival_order_with_duplicates_delivers_each_once_in_order(
        n: int, data: st.DataObject) -> None:
    # every message arrives at least once, in any order, some of them again
    arrivals = list(range(1, n + 1)) + data.draw(
        st.lists(st.integers(min_value=1, max_value=n), max_size=2 * n))
    arrivals = data.draw(st.permutations(arrivals))
    inbound = Inbound()
    first = [1] + [s for s in arrivals]   # the stream starts where the forwarder starts
    delivered = [m.id for seq in first for m in inbound.accept(msg(seq))]
    assert delivered == list(range(1, n + 1))
    assert inbound.acked("a", 7) == n


def test_streams_are_independent_per_sender_and_stream_id() -> None:
    inbound = Inbound()
    assert [m.id for m in inbound.accept(msg(1, "a", 1))] == [1]
    assert [m.id for m in inbound.accept(msg(1, "a", 2))] == [1]
    assert [m.id for m in inbound.accept(msg(1, "c", 1))] == [1]
    assert inbound.accept(msg(1, "a", 1)) == ()
    assert inbound.duplicates == 1


def test_early_arrivals_are_bounded() -> None:
    inbound = Inbound(max_early=3)
    inbound.accept(msg(1))
    for seq in range(3, 10):
        assert inbound.accept(msg(seq)) == ()
    assert inbound.dropped_early == 4
    assert [m.id for m in inbound.accept(msg(2))] == [2, 3, 4, 5]


def test_remembered_streams_are_bounded() -> None:
    inbound = Inbound(max_streams=2)
    for stream in range(5):
        inbound.accept(msg(1, stream=stream))
    assert len(inbound) == 2


def test_outbound_keeps_frames_until_acknowledged() -> None:
    out = Outbound(first_seq=11)
    for _ in range(5):              # what the forwarder does per message
        seq = out.next_seq
        out.next_seq = seq + 1
        out.unacked.append(b"f%d" % seq)
    assert out.ack(13) == 3
    assert list(out.backlog()) == [b"f14", b"f15"]
    assert out.ack(12) == 0         # an old acknowledgement changes nothing
    assert out.ack(15) == 2 and len(out) == 0
    out.unacked.append(b"f16")
    out.next_seq = 17
    assert out.ack(99) == 1 and out.acked == 16     # not sent yet: not taken as acked
    assert out.first_unacked() == 17
