"""The connection-hygiene policy without sockets (posa.transport.hygiene).

Table tests pin who is shed and when; a hypothesis test drives random openings,
reads and clock steps from a few sources and checks the invariants against a
model: the caps hold, a connection inside a frame is never evicted, a victim is
the oldest connection that never completed a frame while one exists, every
deadline is kept within a tick, and a good client among stalled connections from
its own address is never the one shed.
"""
from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from posa.transport.base import Options
from posa.transport.hygiene import EVICTABLE_IDLE, Hygiene, Limits


def test_stalled_connections_are_evicted_before_idle_ones_oldest_first() -> None:
    h = Hygiene(Limits(max_connections=3, max_connections_per_source=3))
    idle = h.open("idle", "a", 0.0)
    h.read(idle, 0.1, completed=True, partial=False)
    h.open("stalled-1", "b", 1.0)
    h.open("stalled-2", "b", 2.0)
    assert h.make_room("c", 5.0) == ([("stalled-1", "evicted-unframed")], None)
    h.open("new", "c", 5.0)
    assert h.make_room("c", 5.0) == ([("stalled-2", "evicted-unframed")], None)


def test_the_idlest_connection_is_evicted_when_none_is_stalled() -> None:
    h = Hygiene(Limits(max_connections=2, max_connections_per_source=2))
    for key, at in (("x", 0.0), ("y", 0.0)):
        h.read(h.open(key, "a", at), at, completed=True, partial=False)
    h.read(h._all["x"], 3.0, completed=True, partial=False)   # x spoke last
    assert h.make_room("b", 10.0) == ([("y", "evicted-idle")], None)


def test_busy_connections_are_not_evicted_and_the_new_one_is_refused() -> None:
    h = Hygiene(Limits(max_connections=2, max_connections_per_source=2))
    a = h.open("a", "s", 0.0)
    h.read(a, 0.0, completed=True, partial=True)      # inside a frame
    b = h.open("b", "s", 0.0)
    h.read(b, 9.9, completed=True, partial=False)     # active just now
    assert h.make_room("t", 10.0) == ([], "too-many-connections")


def test_a_source_over_its_cap_pays_with_its_own_connections() -> None:
    h = Hygiene(Limits(max_connections=10, max_connections_per_source=2))
    h.open("other-stalled", "b", 0.0)
    h.open("a1", "a", 1.0)
    h.read(h.open("a2", "a", 2.0), 2.0, completed=True, partial=False)
    assert h.make_room("a", 3.0) == ([("a1", "evicted-unframed")], None)
    h.read(h._all["a2"], 3.0, completed=False, partial=True)
    h.open("a3", "a", 3.0)
    assert h.make_room("a", 4.0) == ([("a3", "evicted-unframed")], None)
    h.read(h.open("a4", "a", 4.0), 4.0, completed=True, partial=True)
    assert h.make_room("a", 5.0) == ([], "too-many-from-source")


@pytest.mark.parametrize("events, due", [
    ([], [(10.0, "first-frame-timeout")]),
    ([(1.0, True, False)], [(301.0, "idle-timeout")]),
    ([(1.0, True, True)], [(61.0, "frame-timeout")]),
    ([(1.0, False, True)], [(10.0, "first-frame-timeout")]),
    ([(1.0, True, True), (50.0, False, True)], [(61.0, "frame-timeout")]),
    ([(1.0, True, True), (50.0, True, True)], [(110.0, "frame-timeout")]),
    ([(1.0, True, True), (50.0, True, False)], [(350.0, "idle-timeout")]),
])
def test_deadlines(events: list[tuple[float, bool, bool]], due: list[tuple[float, str]]) -> None:
    h = Hygiene(Limits())
    tracked = h.open("c", "a", 0.0)
    for at, completed, partial in events:
        h.read(tracked, at, completed, partial)
    when, cause = due[0]
    assert h.expired(when - 0.001) == []
    assert h.check_at <= max(when, when - 0.001 + h.limits.tick)
    assert h.expired(when) == [("c", cause)]
    assert len(h) == 0 and h.check_at == math.inf


def test_limits_follow_options_and_none_turns_a_deadline_off() -> None:
    limits = Limits.from_options(Options(first_frame_timeout=None, idle_timeout=None,
                                         max_connections=7, max_connections_per_source=3))
    assert (limits.max_connections, limits.max_connections_per_source) == (7, 3)
    h = Hygiene(limits)
    h.open("c", "a", 0.0)
    assert h.expired(1e9) == [] and h.check_at == math.inf
    with pytest.raises(ValueError, match="frame_timeout"):
        Options(frame_timeout=0)


_OPS = st.lists(st.one_of(
    st.tuples(st.just("open"), st.sampled_from("abc")),
    st.tuples(st.just("read"), st.integers(0, 40), st.booleans(), st.booleans()),
    st.tuples(st.just("tick"), st.floats(0.0, 30.0)),
    st.tuples(st.just("shed"), st.just(0)),
), max_size=120)


@settings(max_examples=150, deadline=None)
@given(_OPS)
def test_policy_invariants(ops: list[tuple[object, ...]]) -> None:
    limits = Limits(first_frame_timeout=5.0, frame_timeout=20.0, idle_timeout=60.0,
                    max_connections=6, max_connections_per_source=4)
    h = Hygiene(limits)
    now, keys = 0.0, 0
    opened: list[str] = []
    # the good client: from "a", completes a frame at every clock step
    good = h.open("good", "a", now)
    h.read(good, now, completed=True, partial=False)
    for op in ops:
        if op[0] == "open":
            source = str(op[1])
            before = {k: (t.framed, t.started) for k, t in h._all.items()}
            unframed = [k for k in h._unframed]
            shed, refused = h.make_room(source, now)
            for key, cause in shed:
                framed, started = before[key]
                assert key != "good"
                if cause == "evicted-unframed":     # never completed a frame: the
                    assert not framed               # first may be under way (slowloris)
                else:
                    assert cause == "evicted-idle" and framed
                    assert started is None, "a connection inside a frame was evicted"
            if shed and shed[-1][1] == "evicted-idle" and len(before) >= limits.max_connections:
                assert not [k for k in unframed if k not in dict(shed)], \
                    "an idle connection was evicted while a stalled one remained"
            if refused is None:
                keys += 1
                opened.append(f"k{keys}")
                h.open(f"k{keys}", source, now)
            assert len(h) <= limits.max_connections
            assert h.count(source) <= limits.max_connections_per_source
        elif op[0] == "read" and opened:
            key = opened[int(op[1]) % len(opened)]
            if key in h._all:
                h.read(h._all[key], now, bool(op[2]), bool(op[3]))
        elif op[0] == "tick":
            before, now = now, now + float(op[1])     # type: ignore[arg-type]
            if "good" in h._all:
                h.read(good, now, completed=True, partial=False)
            soonest = min((t.deadline(limits)[0] for t in h._all.values()), default=math.inf)
            if soonest <= now:
                assert h.check_at <= max(soonest, before + limits.tick) + 1e-9
            for key, _ in h.expired(now):
                assert key != "good"
            assert all(t.deadline(limits)[0] > now for t in h._all.values())
        elif op[0] == "shed":
            stalled = bool(h._unframed)
            victim = h.shed_one(now + EVICTABLE_IDLE)
            if victim is not None and victim[0] == "good":
                assert not stalled, "the good client was shed before a stalled one"
                return
