"""A subscriber's lane (``posa.channel.lane``, sans-IO) driven by hypothesis with the
core that feeds it and the reliable stream it sends on: random publications, takes,
sends, arrivals, broken connections that lose what is in transit, resends of the
unacknowledged backlog (duplicates when the first copies got through too),
streams that give their backlog up (the lane sends it again on the next) and
acknowledgements. A connection keeps order, as tcp and zmq do, and after a break the
forwarder sends nothing new before the backlog (its recovery); frames out of order
across connections are the stream tests' part (``test_streams_stateful.py``).

What must hold whatever the order: events arrive in channel order, each at most
once (a frame sent again after a loss is dropped by the stream once it was
delivered), none lost under ``block``; never more than ``window`` deliveries are
unacknowledged; the subscription's buffer stays within its limit and the lane
holds no more than one take beyond it.
"""
from __future__ import annotations

from typing import Any

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from posa.channel.core import ChannelCore
from posa.channel.lane import Lane
from posa.channel.protocol import Publication
from posa.delivery.streams import Inbound, Outbound
from posa.wire.codec import Kind, Message

SUB = "sub"
MAX_BATCH = 5


class LaneMachine(RuleBasedStateMachine):
    @initialize(policy=st.sampled_from(["block", "drop-oldest", "drop-newest"]),
                limit=st.integers(1, 12), window=st.integers(1, 4))
    def start(self, policy: str, limit: int, window: int) -> None:
        self.policy, self.limit = policy, limit
        self.core = ChannelCore("events/lane", 1, history=1000)
        self.core.subscribe(SUB, policy=policy, limit=limit)
        self.lane = Lane(SUB, window=window, lease=10.0, now=0.0)
        self.out = Outbound()
        self.inbound = Inbound()
        self.network: list[tuple[int, Any]] = []        # (stream seq, body) in transit, FIFO
        self.received: list[int] = []                   # event seqs, as delivered
        self.accepted: list[int] = []
        self.next_body = 0
        self.sent: dict[int, Any] = {}                  # what the stream keeps to resend
        self.broken = False                             # until the backlog is resent
        self.floor = 0                                  # last event seq before a give-up

    @rule(count=st.integers(1, 6))
    def publish(self, count: int) -> None:
        bodies = list(range(self.next_body, self.next_body + count))
        result = self.core.publish(Publication("t", bodies=bodies))
        self.next_body += result.consumed       # under block, the rest is offered later
        if result.accepted:
            self.accepted.extend(range(result.first, result.last + 1))

    @precondition(lambda self: self.lane.hungry(0.0))
    @rule()
    def take(self) -> None:
        taken = self.core.take(SUB, MAX_BATCH)
        assert taken is not None
        bodies = [{"seqs": run.seq_list()} for run in taken.runs]
        if taken.gaps and not bodies:
            bodies = [{"seqs": []}]
        self.lane.load(bodies)

    @precondition(lambda self: self.lane.ready() and not self.broken)
    @rule()
    def send(self) -> None:
        body = self.lane.next()
        seq = self.out.next_seq
        self.out.next_seq += 1
        self.out.unacked.append(b"frame")
        self.network.append((seq, body))
        self.sent[seq] = body

    @precondition(lambda self: self.network)
    @rule(count=st.integers(1, 3))
    def arrive(self, count: int) -> None:
        for seq, body in self.network[:count]:
            self.deliver(seq, body)
        del self.network[:count]

    def deliver(self, seq: int, body: Any) -> None:
        msg = Message(Kind.SEND, "events/lane", SUB, body, id=seq, stream=7)
        for ready in self.inbound.accept(msg):  # (what the subscriber had before a
            # give-up may come again on the next stream: it drops those events)
            self.received.extend(seq for seq in ready.body["seqs"] if seq > self.floor)

    @precondition(lambda self: self.network)
    @rule(data=st.data())
    def break_connection(self, data: st.DataObject) -> None:
        """Some of what is in transit got through, the rest is lost."""
        through = data.draw(st.integers(0, len(self.network) - 1))
        for seq, body in self.network[:through]:
            self.deliver(seq, body)
        self.network.clear()
        self.broken = True

    @rule()
    def acknowledge(self) -> None:
        self.out.ack(self.inbound.acked("events/lane", 7))
        self.lane.settle(len(self.out.unacked))

    @precondition(lambda self: len(self.out.unacked) > 0 or self.broken)
    @rule()
    def resend(self) -> None:
        """A recovery: the stream's unacknowledged backlog goes out again, in order."""
        first = self.out.first_unacked()
        self.network.extend((seq, self.sent[seq]) for seq in range(first, self.out.next_seq))
        self.broken = False

    @precondition(lambda self: self.lane.in_flight > 0)
    @rule(data=st.data())
    def give_up(self, data: st.DataObject) -> None:
        """The stream gives up what is unacknowledged (its ``send_timeout``): some
        of what is in transit still arrives, and the next stream starts afresh;
        the lane sends what was in flight again first (``Lane.given_up``)."""
        through = data.draw(st.integers(0, len(self.network)))
        for seq, body in self.network[:through]:
            self.deliver(seq, body)
        self.network.clear()
        self.floor = self.received[-1] if self.received else 0
        self.out, self.inbound, self.sent, self.broken = Outbound(), Inbound(), {}, False
        self.lane.given_up()

    @invariant()
    def in_order_each_once(self) -> None:
        assert all(a < b for a, b in zip(self.received, self.received[1:]))
        assert set(self.received) <= set(self.accepted)
        if self.policy == "block":     # nothing lost: a prefix of what was accepted
            assert self.received == self.accepted[:len(self.received)]

    @invariant()
    def bounded(self) -> None:
        assert len(self.out.unacked) <= self.lane.window
        sub = self.core.subscriptions[SUB]
        assert sub.size <= self.limit
        assert len(self.lane.outbox) <= MAX_BATCH + 1


TestLane = LaneMachine.TestCase
TestLane.settings = settings(max_examples=150, stateful_step_count=60, deadline=None)


def test_a_stopped_lane_drains_until_its_time_and_an_ended_one_is_final() -> None:
    lane = Lane(SUB, window=2, lease=1.0, now=0.0)
    lane.load([{"n": 1}, {"n": 2}, {"n": 3}])
    lane.stop(drain_until=5.0)
    assert not lane.finished(1.0)
    assert [lane.next(), lane.next()] == [{"n": 1}, {"n": 2}]
    assert not lane.ready()                       # the window is full
    lane.settle(0)
    assert lane.next() == {"n": 3} and lane.finished(1.0)
    ended = Lane(SUB, window=2, lease=1.0, now=0.0)
    ended.load([{"end": "failed"}], last=True)
    assert not ended.hungry(0.0)
    ended.next()
    assert ended.finished(0.0)
