"""Token buckets, requests in flight, quotas, and the gatekeeper that applies them."""
from __future__ import annotations

import threading

import pytest

import posa
from posa import Kind, Message
from posa.admission.gatekeeper import Gatekeeper, Rejection
from posa.admission.quotas import InFlight, Quotas, Rate, RateLimiter
from posa.transport.base import Options
from posa.wire.codec import Codec

CODEC = Codec()


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def msg(sender: str = "net/a", kind: int = Kind.SEND, seq: int = 1) -> Message:
    return Message(kind, sender, "net/b", None, stream=5, id=seq)


def admitted(limiter: RateLimiter, source: object, sender: str, n: int) -> int:
    return sum(limiter.admit(source, msg(sender)) for _ in range(n))


def test_rate_must_make_sense() -> None:
    for bad in [(0, 1), (-1, 5), (10, 0.5)]:
        with pytest.raises(ValueError, match="per_second > 0 and burst >= 1"):
            Rate(*bad)


def test_bucket_allows_a_burst_then_the_rate() -> None:
    clock = Clock()
    limiter = RateLimiter(per_source=Rate(100, 10), per_sender=None, clock=clock)
    assert admitted(limiter, "conn-1", "net/a", 15) == 10
    clock.now += 0.0625                    # 6.25 tokens come back
    assert admitted(limiter, "conn-1", "net/a", 15) == 6
    clock.now += 10                        # refills to the burst, not beyond
    assert admitted(limiter, "conn-1", "net/a", 15) == 10
    assert limiter.refused == {"source": 5 + 9 + 5, "sender": 0}


def test_sources_and_senders_have_buckets_of_their_own() -> None:
    clock = Clock()
    limiter = RateLimiter(per_source=Rate(1, 3), per_sender=Rate(1, 5), clock=clock)
    assert admitted(limiter, "conn-1", "net/a", 10) == 3     # the connection's bucket
    assert admitted(limiter, "conn-2", "net/a", 10) == 2     # the name's bucket holds 2 more
    assert admitted(limiter, "conn-3", "net/b", 10) == 3     # another name, another source
    assert limiter.refused == {"source": 14, "sender": 8}


def test_a_refused_message_takes_no_token_from_the_other_bucket() -> None:
    clock = Clock()
    limiter = RateLimiter(per_source=Rate(1, 2), per_sender=Rate(1, 4), clock=clock)
    assert admitted(limiter, "conn-1", "net/a", 10) == 2
    assert admitted(limiter, "conn-2", "net/a", 10) == 2     # 4 - 2: nothing taken on refusal


def test_tracked_buckets_are_bounded() -> None:
    limiter = RateLimiter(per_source=Rate(1, 1), per_sender=Rate(1, 1), max_tracked=100,
                          clock=Clock())
    for i in range(1000):
        limiter.admit(("conn", i), msg(f"net/n{i}"))
    assert len(limiter._sources.buckets) == 100          # type: ignore[union-attr]
    assert len(limiter._senders.buckets) == 100          # type: ignore[union-attr]


def test_quotas_defaults_and_transport_options() -> None:
    quotas = Quotas()
    assert quotas.options().max_connections == 1024
    tight = Quotas(max_connections=8, per_source=None)
    options = tight.options(Options(max_frame_size=4096))
    assert (options.max_connections, options.max_frame_size) == (8, 4096)
    limiter = tight.limiter(Clock())
    assert limiter._sources is None
    assert tight.in_flight().max_per_sender == 1024
    with pytest.raises(ValueError, match="positive"):
        Quotas(max_in_flight=0)


def test_in_flight_per_sender_and_in_all() -> None:
    tracker = InFlight(max_per_sender=2, max_total=3)
    a1, a2, a3 = (msg("net/a", Kind.REQUEST, i) for i in (1, 2, 3))
    b1, b2 = (msg("net/b", Kind.REQUEST, i) for i in (1, 2))
    assert tracker.enter(a1) and tracker.enter(a2) and not tracker.enter(a3)
    assert tracker.enter(a1)                       # the same request again: still one
    assert tracker.enter(b1) and not tracker.enter(b2)   # 3 in all
    assert tracker.enter(msg("net/c", Kind.SEND))        # one-way messages are not counted
    assert len(tracker) == 3
    tracker.leave(a1)
    tracker.leave(a1)                              # twice, or never entered: nothing
    tracker.leave(a3)
    assert len(tracker) == 2 and tracker.enter(a3)


def test_wait_idle_wakes_when_the_last_request_is_answered() -> None:
    tracker = InFlight()
    request = msg("net/a", Kind.REQUEST)
    tracker.enter(request)
    assert not tracker.wait_idle(0.01)
    answer = threading.Timer(0.05, tracker.leave, args=(request,))
    answer.start()
    try:
        assert tracker.wait_idle(10)
    finally:
        answer.join()


def test_gatekeeper_rate_limits_and_counts() -> None:
    clock = Clock()
    gatekeeper = Gatekeeper(CODEC, limiter=RateLimiter(per_source=Rate(1, 2), per_sender=None,
                                                       clock=clock))
    frame = CODEC.pack(Kind.REQUEST, 1, 1, "net/a", "net/b", 0, {}, None)
    gatekeeper.admit(frame, "conn")
    gatekeeper.admit(frame, "conn")
    with pytest.raises(Rejection) as caught:
        gatekeeper.admit(frame, "conn")
    assert caught.value.reason == "rate-limited" and caught.value.answerable
    assert isinstance(caught.value.error, posa.Rejected)
    assert "faster than this peer admits" in str(caught.value.error)
    gatekeeper.admit(frame, "another-conn")
    assert gatekeeper.rejections == {"rate-limited": 1}


def test_gatekeeper_in_flight_hooks() -> None:
    gatekeeper = Gatekeeper(CODEC, in_flight=InFlight(max_per_sender=1, max_total=10))
    first, second = msg("net/a", Kind.REQUEST, 1), msg("net/a", Kind.REQUEST, 2)
    assert gatekeeper.enter(first) is None
    error = gatekeeper.enter(second)
    assert isinstance(error, posa.Rejected) and "too many requests" in str(error)
    assert gatekeeper.rejections == {"busy": 1}
    gatekeeper.leave(first)
    assert gatekeeper.enter(second) is None
    plain = Gatekeeper(CODEC)
    assert plain.enter(first) is None
    plain.leave(first)


def test_peer_under_a_rate_limit_still_gets_everything() -> None:
    """Refused frames are not acknowledged: the sender resends them when it next
    sends or flushes, and nothing is lost."""
    limiter = RateLimiter(per_source=None, per_sender=Rate(2000, 200))
    with posa.LocalRegistry() as reg, \
            posa.Peer("net/b", registry=reg, listen="tcp://127.0.0.1:0",
                      gatekeeper=Gatekeeper(Codec(), limiter=limiter)) as b, \
            posa.Peer("net/a", registry=reg, listen="tcp://127.0.0.1:0") as a:
        for i in range(1000):
            a.send("net/b", i, timeout=30)
        a.flush(30)             # the sending thread drives resends: flush before receiving
        got = [b.receive(timeout=30).body for _ in range(1000)]
        assert got == list(range(1000))
        assert b.gatekeeper.rejections["rate-limited"] > 0


class _RefuseFirst:
    """A limiter that refuses message 1 of every stream once, and says so."""

    def __init__(self) -> None:
        self.refused = threading.Event()

    def admit(self, source: object, msg: Message) -> bool:
        if msg.id == 1 and msg.stream and not self.refused.is_set():
            self.refused.set()
            return False
        return True


def test_a_refused_first_frame_of_a_stream_is_delivered_before_the_second() -> None:
    """A rate limit refuses the first frame of a new stream and the second arrives
    alone: it waits for the first (resent from the sender's backlog) instead of
    being taken for the start, which acknowledged the first undelivered."""
    limiter = _RefuseFirst()
    with posa.LocalRegistry() as reg, \
            posa.Peer("net/b", registry=reg, listen="tcp://127.0.0.1:0",
                      gatekeeper=Gatekeeper(Codec(), limiter=limiter)) as b, \
            posa.Peer("net/a", registry=reg, listen="tcp://127.0.0.1:0") as a:
        a.send("net/b", "first", timeout=30)
        assert limiter.refused.wait(30)
        a.send("net/b", "second", timeout=30)
        a.flush(30)
        assert [b.receive(timeout=30).body for _ in range(2)] == ["first", "second"]
        assert b.gatekeeper.rejections["rate-limited"] == 1
