"""Reliable streams (``Outbound`` at the senders, ``Inbound`` at the receiver) as a
state machine against a model, over a network that reorders, repeats and loses
frames and acknowledgements, with senders that resend their backlog and open new
streams numbered above the old ones.

What must hold after every step: each stream is delivered in order and at most
once; an acknowledgement is the highest number delivered in order, never more; a
sender releases only frames that were delivered, and keeps the others, in order;
and after a lossless round of resends everything sent is delivered and released.

The model's one assumption is the streams' own: the first frame of a stream that
reaches the receiver is the stream's first (``Inbound`` takes the first number it
sees of an unknown stream as the stream's start; posa's forwarder numbers a new
stream above its old ones). ``test_a_lost_first_frame_*`` shows what happens when
that does not hold.
"""
from __future__ import annotations

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from posa.delivery.streams import Inbound, Outbound
from posa.wire.codec import Kind, Message

SENDERS = ["a", "c"]
MAX_EARLY = 3       # small, so that early arrivals are dropped too (they come again)

Key = tuple[str, int]       # (sender, stream)


def body(key: Key, seq: int) -> bytes:
    return f"{key[0]}/{key[1]}/{seq}".encode()


class StreamsMachine(RuleBasedStateMachine):
    """Two senders, each with a current stream (reopened at will), one receiver."""

    def __init__(self) -> None:
        super().__init__()
        self.inbound = Inbound(max_early=MAX_EARLY)
        self.out: dict[Key, Outbound] = {}          # every stream ever opened
        self.current: dict[str, Key] = {}           # each sender's stream now
        self.first: dict[Key, int] = {}             # each stream's first number
        self.seen: set[Key] = set()                 # streams the receiver knows
        self.delivered: dict[Key, list[int]] = {}
        self.held: dict[Key, set[int]] = {}         # early arrivals the receiver holds
        self.duplicates = self.dropped_early = 0    # what the receiver should count
        self.wire: list[tuple[Key, int]] = []       # frames in flight, any order
        self.acks: list[tuple[Key, int]] = []       # acknowledgements in flight
        self.next_stream = 1

    def open(self, sender: str, first: int) -> None:
        key = (sender, self.next_stream)
        self.next_stream += 1
        self.out[key] = Outbound(first_seq=first)
        self.current[sender] = key
        self.first[key] = first
        self.delivered[key] = []
        self.held[key] = set()

    @initialize(firsts=st.lists(st.integers(1, 40), min_size=2, max_size=2))
    def start(self, firsts: list[int]) -> None:
        for sender, first in zip(SENDERS, firsts):
            self.open(sender, first)

    # -- the senders -------------------------------------------------------------
    @rule(sender=st.sampled_from(SENDERS), count=st.integers(1, 4))
    def send(self, sender: str, count: int) -> None:
        key = self.current[sender]
        out = self.out[key]
        for _ in range(count):          # what the forwarder does per message
            seq = out.next_seq
            out.next_seq = seq + 1
            out.unacked.append(body(key, seq))
            self.wire.append((key, seq))

    @rule(sender=st.sampled_from(SENDERS))
    def resend(self, sender: str) -> None:
        """A broken connection or an overdue acknowledgement: the backlog again."""
        key = self.current[sender]
        out = self.out[key]
        for offset, frame in enumerate(out.backlog()):
            seq = out.first_unacked() + offset
            assert frame == body(key, seq), "the backlog is the unacknowledged tail, in order"
            self.wire.append((key, seq))

    @rule(sender=st.sampled_from(SENDERS))
    def reopen(self, sender: str) -> None:
        """The forwarder forgets the recipient (its backlog is given up) and reaches
        it again: a new stream, numbered above everything the old one used."""
        self.open(sender, self.out[self.current[sender]].next_seq)

    # -- the network ---------------------------------------------------------------
    @precondition(lambda self: bool(self.wire))
    @rule(index=st.integers(0, 50), keep=st.booleans())
    def arrive(self, index: int, keep: bool) -> None:
        """A frame in flight arrives (``keep``: a copy of it stays in flight)."""
        key, seq = self.wire[index % len(self.wire)] if keep else \
            self.wire.pop(index % len(self.wire))
        if key not in self.seen and seq != self.first[key]:
            return      # the model's assumption: a stream is first seen at its start
        self.accept(key, seq)
        # every arrival, a duplicate too, is acknowledged: the highest in order
        self.acks.append((key, self.inbound.acked(*key)))

    def accept(self, key: Key, seq: int) -> list[Message]:
        """Frame ``seq`` of ``key`` reaches the receiver: what it delivers is what
        the model expects, and early arrivals are held up to ``MAX_EARLY``."""
        self.seen.add(key)
        delivered, held = self.delivered[key], self.held[key]
        expected = delivered[-1] + 1 if delivered else self.first[key]
        ready = []
        if seq < expected or seq in held:
            self.duplicates += 1
        elif seq == expected:
            ready.append(seq)
            while ready[-1] + 1 in held:
                held.remove(ready[-1] + 1)
                ready.append(ready[-1] + 1)
        elif len(held) >= MAX_EARLY:
            self.dropped_early += 1         # it comes again from the backlog
        else:
            held.add(seq)
        msg = Message(Kind.SEND, key[0], "b", body(key, seq), id=seq, stream=key[1])
        got = self.inbound.accept(msg)
        assert [m.id for m in got] == ready
        assert all(m.body == body(key, m.id) for m in got)
        delivered += ready
        return list(got)

    @precondition(lambda self: bool(self.wire))
    @rule(indices=st.lists(st.integers(0, 50), min_size=1, max_size=6),
          refuse=st.sets(st.integers(0, 12), max_size=4))
    def turn_refused(self, indices: list[int], refuse: set[int]) -> None:
        """A few frames arrive in one turn (acknowledged only at its end) and the
        application refuses some of what was delivered (``refuse``: places in the
        turn's deliveries): of each stream, from the first refused one on, the
        turn is forgotten; the rest is delivered, and the acknowledgements say
        only that."""
        run: list[Message] = []
        before = {key: list(seqs) for key, seqs in self.delivered.items()}
        for index in indices:
            if not self.wire:
                break
            key, seq = self.wire.pop(index % len(self.wire))
            if key not in self.seen and seq != self.first[key]:
                continue    # the model's assumption: a stream is first seen at its start
            run += self.accept(key, seq)
        refused = [msg for place, msg in enumerate(run) if place in refuse]
        cut: dict[Key, int] = {}
        for msg in refused:
            cut.setdefault((msg.sender, msg.stream), msg.id)
        rest = self.inbound.forget(run, refused)
        assert [(m.sender, m.stream, m.id) for m in rest] == [
            (m.sender, m.stream, m.id) for m in run
            if (m.sender, m.stream) not in cut or m.id < cut[(m.sender, m.stream)]]
        for key, seq in cut.items():        # forgotten: as if they never came
            self.delivered[key] = [s for s in self.delivered[key] if s < seq]
            assert self.delivered[key][:len(before[key])] == before[key]
        for key in {(m.sender, m.stream) for m in run}:
            self.acks.append((key, self.inbound.acked(*key)))

    @precondition(lambda self: bool(self.wire))
    @rule(index=st.integers(0, 50))
    def refused(self, index: int) -> None:
        """A frame in flight reaches the receiver and a rate limit refuses it: not
        delivered, not acknowledged; a stream not seen yet starts there."""
        key, seq = self.wire.pop(index % len(self.wire))
        if key not in self.seen and seq != self.first[key]:
            return      # the model's assumption: a stream is first seen at its start
        self.inbound.refused(*key, seq)
        self.seen.add(key)

    @precondition(lambda self: bool(self.wire))
    @rule(index=st.integers(0, 50))
    def lose(self, index: int) -> None:
        del self.wire[index % len(self.wire)]

    @precondition(lambda self: bool(self.acks))
    @rule(index=st.integers(0, 50), keep=st.booleans())
    def acknowledgement_arrives(self, index: int, keep: bool) -> None:
        key, upto = self.acks[index % len(self.acks)] if keep else \
            self.acks.pop(index % len(self.acks))
        out = self.out[key]
        before = out.acked
        released = out.ack(upto)
        assert released == max(0, min(upto, out.next_seq - 1) - before)

    @rule(sender=st.sampled_from(SENDERS), beyond=st.integers(1, 5))
    def acknowledgement_beyond_what_was_sent(self, sender: str, beyond: int) -> None:
        """An acknowledgement of numbers not sent yet (a receiver that had them
        from a stream numbered alike) releases what was sent, and no more."""
        key = self.current[sender]
        out = self.out[key]
        delivered = self.delivered[key]
        if out.next_seq - 1 != (delivered[-1] if delivered else self.first[key] - 1):
            return      # only when every frame sent was delivered
        pending = len(out)
        assert out.ack(out.next_seq - 1 + beyond) == pending
        assert len(out) == 0 and out.acked == out.next_seq - 1

    @precondition(lambda self: bool(self.acks))
    @rule(index=st.integers(0, 50))
    def acknowledgement_lost(self, index: int) -> None:
        del self.acks[index % len(self.acks)]

    @rule()
    def lossless_round(self) -> None:
        """Liveness: the current streams' backlogs resent, arriving in order, with
        their acknowledgements: everything they sent is delivered and released."""
        for sender in SENDERS:
            key = self.current[sender]
            out = self.out[key]
            for offset, _ in enumerate(list(out.backlog())):
                seq = out.first_unacked() + offset
                if key in self.seen or seq == self.first[key]:
                    self.accept(key, seq)
            out.ack(self.inbound.acked(*key))
            assert len(out) == 0 and out.acked == out.next_seq - 1
            sent = list(range(self.first[key], out.next_seq))
            assert self.delivered[key] == sent, "everything sent was delivered once"

    # -- what must hold after every step ---------------------------------------------
    @invariant()
    def delivered_in_order_at_most_once(self) -> None:
        for key, seqs in self.delivered.items():
            assert seqs == list(range(self.first[key], self.first[key] + len(seqs)))

    @invariant()
    def the_receiver_counts_duplicates_and_early_drops(self) -> None:
        assert (self.inbound.duplicates, self.inbound.dropped_early) == (
            self.duplicates, self.dropped_early)
        assert all(len(held) <= MAX_EARLY for held in self.held.values())

    @invariant()
    def acknowledgement_is_what_was_delivered(self) -> None:
        for key, seqs in self.delivered.items():
            nothing = self.first[key] - 1 if key in self.seen else 0
            assert self.inbound.acked(*key) == (seqs[-1] if seqs else nothing)

    @invariant()
    def senders_release_only_what_was_delivered(self) -> None:
        for key, out in self.out.items():
            delivered = self.delivered[key]
            assert out.acked <= (delivered[-1] if delivered else self.first[key] - 1)
            assert out.next_seq == out.acked + 1 + len(out)
            assert list(out.unacked) == [body(key, s) for s in range(out.acked + 1,
                                                                     out.next_seq)]


StreamsMachine.TestCase.settings = settings(max_examples=200, stateful_step_count=40,
                                            deadline=None)
test_streams_machine = StreamsMachine.TestCase


def test_a_refused_first_frame_is_not_acknowledged_as_delivered() -> None:
    """The first frame of a stream the receiver has not seen is refused by a rate
    limit and the second arrives: the stream starts at the refused one, so the
    second waits for it instead of being taken for the start (which acknowledged
    the first without delivering it)."""
    out, inbound = Outbound(first_seq=1), Inbound()
    for seq in (1, 2):
        out.next_seq = seq + 1
        out.unacked.append(body(("a", 7), seq))
    inbound.refused("a", 7, 1)          # the gatekeeper refused frame 1 (rate-limited)
    second = Message(Kind.SEND, "a", "b", None, id=2, stream=7)
    assert inbound.accept(second) == ()
    out.ack(inbound.acked("a", 7))
    assert out.acked == 0 and len(out) == 2
    first = Message(Kind.SEND, "a", "b", None, id=1, stream=7)
    assert [m.id for m in inbound.accept(first)] == [1, 2]
    inbound.refused("a", 7, 5)          # a known stream is not moved by a refusal
    assert inbound.acked("a", 7) == 2
