"""A channel's settings and a subscriber's counters mean what they say.

``EventChannel(send_timeout=...)`` takes a number of seconds above 0 (up to
``posa.delivery.budget.LONGEST``): ``nan``, 0, a negative or infinite value, or
one that is not a number is refused at construction with a ``ValueError`` naming
``send_timeout``, before the channel registers its name or opens its store (it
was taken, and every delivery's deadline meant nothing).

``Subscriber.dropped`` is a running total: the channel counts the drops of each
subscription from 0, and a subscriber that subscribes again (after a channel
restart, a reconnect, ``disconnect``) gets a new subscription there. The count
went down to the new subscription's; now the earlier ones' drops are kept in it.
``gaps`` and ``missed`` are running totals too.
"""
from __future__ import annotations

import math
from itertools import pairwise
from typing import Any

import msgpack
import pytest

import posa
from posa.channel.core import ChannelCore, Taken
from posa.channel.events import SubscriberState
from posa.channel.protocol import Publication, parse_delivery

pytestmark = pytest.mark.timeout(60)


@pytest.mark.parametrize("send_timeout", [math.nan, 0, -1.0, math.inf, "2", None, 1e308],
                         ids=["nan", "zero", "negative", "inf", "str", "None", "1e308"])
def test_a_send_timeout_that_is_no_wait_is_refused_at_construction(
        send_timeout: object) -> None:
    with posa.LocalRegistry() as reg:
        with pytest.raises(ValueError, match=r"^send_timeout (must be a finite number of "
                                             r"seconds above 0|of 1e\+308 s is too large)"):
            posa.EventChannel("checked/ch", registry=reg,
                              send_timeout=send_timeout)  # type: ignore[arg-type]
        with pytest.raises(posa.NameNotFound):
            reg.lookup("checked/ch")                  # nothing was registered
        with posa.EventChannel("checked/ch", registry=reg, send_timeout=0.5) as channel:
            assert channel.send_timeout == 0.5


def _delivery(c: ChannelCore, taken: Taken | None) -> tuple[Any, ...]:
    """A delivery of ``taken`` through msgpack, as a subscriber's state takes it."""
    assert taken is not None
    body = {"ch": c.name, "inc": c.incarnation, "dropped": taken.dropped, "head": c.seq,
            "runs": [run.wire(run.blob if run.blob is not None
                              else msgpack.packb(run.body_list())) for run in taken.runs],
            "gaps": taken.gaps}
    return parse_delivery(msgpack.unpackb(msgpack.packb(body)))   # type: ignore[arg-type]


def _publish(c: ChannelCore, n: int) -> None:
    c.publish(Publication("t", blob=msgpack.packb(list(range(n)))))


def test_dropped_is_a_running_total_across_resubscriptions_and_restarts() -> None:
    sub = {"policy": "drop-newest", "limit": 2}
    c = ChannelCore("checked/core", 1, history=100)
    c.subscribe("s", **sub)                           # type: ignore[arg-type]
    state = SubscriberState(c.name)
    state.subscribed({"inc": 1, "head": 0, "replay_from": None})
    _publish(c, 5)                                    # 3 of 5 dropped
    state.accept(*_delivery(c, c.take("s", 10)))
    assert state.dropped == 3
    seen = [(state.dropped, state.gaps, state.missed)]

    inc, seq = state.resume_point()                   # a reconnect: subscribed again
    c.subscribe("s", **sub, from_seq=seq, incarnation=inc)  # type: ignore[arg-type]
    _publish(c, 1)
    state.accept(*_delivery(c, c.take("s", 10)))
    assert state.dropped == 3                         # the new subscription dropped none
    _publish(c, 4)                                    # 2 of 4 dropped
    state.accept(*_delivery(c, c.take("s", 10)))
    assert state.dropped == 5
    seen.append((state.dropped, state.gaps, state.missed))

    restarted = ChannelCore("checked/core", 2, history=100)   # a new incarnation
    restarted.subscribe("s", **sub, incarnation=1)            # type: ignore[arg-type]
    _publish(restarted, 1)
    state.accept(*_delivery(restarted, restarted.take("s", 10)))
    assert state.dropped == 5
    _publish(restarted, 3)                            # 1 of 3 dropped
    state.accept(*_delivery(restarted, restarted.take("s", 10)))
    assert state.dropped == 6
    seen.append((state.dropped, state.gaps, state.missed))
    for before, after in pairwise(seen):              # no counter ever goes down
        assert all(b <= a for b, a in zip(before, after)), seen
