"""The channel's state machine (sans-IO): sequence, selection, buffers, replay, loops."""
from __future__ import annotations

from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from posa.channel.core import ChannelCore, Taken
from posa.channel.events import Event, Gap, SubscriberState
from posa.channel.predicate import InvalidFilter
from posa.channel.protocol import Publication, check_bodies, parse_delivery, parse_publish
from posa.channel.run import Run
from posa.errors import ProtocolError, Rejected

INC = 77


def pub(topics: list[str] | str, bodies: list[Any], vias: list[Any] | None = None
        ) -> Publication:
    return Publication(topics, blob=msgpack.packb(bodies), vias=vias)


def flat(taken: Taken | None) -> list[tuple[int, str, Any]]:
    assert taken is not None
    return [event for run in taken.runs
            for event in zip(run.seq_list(), run.topics, run.body_list())]


def core(**subs: dict[str, Any]) -> ChannelCore:
    c = ChannelCore("events/test", INC, history=100)
    for sub_id, options in subs.items():
        c.subscribe(sub_id, **options)
    return c


def wire(c: ChannelCore, taken: Taken) -> dict[str, Any]:
    """A delivery body for ``taken``, through msgpack, as a subscriber gets it."""
    body = {"ch": c.name, "inc": c.incarnation, "dropped": taken.dropped, "head": c.seq,
            "runs": [run.wire(run.blob if run.blob is not None
                              else msgpack.packb(run.body_list())) for run in taken.runs],
            "gaps": taken.gaps}
    return msgpack.unpackb(msgpack.packb(body))  # type: ignore[no-any-return]


def test_every_accepted_event_gets_the_next_seq() -> None:
    c = core()
    first = c.publish(pub(["a", "b"], [1, 2]))
    second = c.publish(pub("a", [3, 4, 5]))
    assert (first.first, first.last, second.first, second.last) == (1, 2, 3, 5)
    assert c.seq == 5 and c.published == 5


def test_topic_prefixes_and_filters_select_at_the_channel() -> None:
    c = core(links={"topics": ["link/"]},
             hot={"filter": {"field": "load", "op": ">", "value": 0.8}},
             hot_links={"topics": ["link/"], "filter": {"field": "load", "op": ">",
                                                        "value": 0.8}},
             everything={})
    c.publish(pub(["link/down", "cpu", "link/up", "cpu"],
                  [{"load": 0.9}, {"load": 0.95}, {"load": 0.1}, {"x": 1}]))
    assert [e[0] for e in flat(c.take("links", 10))] == [1, 3]
    assert [e[0] for e in flat(c.take("hot", 10))] == [1, 2]
    assert [e[0] for e in flat(c.take("hot_links", 10))] == [1]
    assert [e[0] for e in flat(c.take("everything", 10))] == [1, 2, 3, 4]


def test_a_run_taken_whole_passes_through_without_reencoding() -> None:
    c = core(a={}, b={}, part={"topics": ["x/1"]})
    blob = msgpack.packb([{"i": 1}, {"i": 2}])
    c.publish(Publication(["x/1", "x/2"], blob=blob))
    run_a = c.take("a", 10).runs[0]   # type: ignore[union-attr]
    run_b = c.take("b", 10).runs[0]   # type: ignore[union-attr]
    assert run_a is run_b and run_a.blob is blob and run_a.bodies is None
    part = c.take("part", 10).runs[0]  # type: ignore[union-attr]
    assert part.blob is None and part.seqs == [1] and part.bodies == [{"i": 1}]


def test_uniform_topic_runs_match_prefixes_once() -> None:
    c = core(x={"topics": ["x/"]}, y={"topics": ["y/"]})
    result = c.publish(pub("x/load", [1, 2, 3]))
    assert [s.id for s in result.woken] == ["x"]
    assert c.take("x", 10).runs[0].topic == "x/load"  # type: ignore[union-attr]
    assert not c.pending("y")


def test_drop_oldest_keeps_the_newest_and_counts_a_gap_at_the_front() -> None:
    c = core(s={"policy": "drop-oldest", "limit": 3})
    c.publish(pub("t", [1, 2]))
    c.publish(pub("t", [3, 4, 5]))
    taken = c.take("s", 10)
    assert [e[2] for e in flat(taken)] == [3, 4, 5]
    assert taken.gaps == [[0, 2, "dropped"]] and taken.dropped == 2  # type: ignore[union-attr]
    assert c.subscriptions["s"].size == 0


def test_drop_newest_keeps_the_oldest_and_marks_the_hole_where_it_was() -> None:
    c = core(s={"policy": "drop-newest", "limit": 3})
    c.publish(pub("t", [1, 2]))
    c.publish(pub("t", [3, 4, 5]))        # 3 fits, 4 and 5 are dropped
    c.publish(pub("t", [6]))              # dropped too: the same hole grows
    assert c.subscriptions["s"].size == 3
    taken = c.take("s", 10)
    assert [e[2] for e in flat(taken)] == [1, 2, 3]
    assert taken.gaps == [[3, 3, "dropped"]]  # type: ignore[union-attr]
    c.publish(pub("t", [7]))
    assert [e[2] for e in flat(c.take("s", 10))] == [7]


def test_block_accepts_whole_publications_or_none_and_hands_back_the_rest() -> None:
    c = core(slow={"policy": "block", "limit": 4}, fast={})
    assert c.publish(pub("t", [1, 2, 3])).accepted == 3
    refused = c.publish(pub("t", [4, 5]))       # 2 do not fit into the 1 free slot
    assert (refused.consumed, refused.accepted) == (0, 0)
    assert refused.rest is not None and refused.rest.topics == "t"
    assert c.seq == 3
    c.take("slow", 2)
    again = c.publish(refused.rest)              # type: ignore[arg-type]
    assert (again.accepted, again.first, again.last) == (2, 4, 5)
    assert c.subscriptions["slow"].dropped == 0


def test_block_splits_a_publication_larger_than_the_whole_buffer() -> None:
    c = core(slow={"policy": "block", "limit": 2})
    result = c.publish(pub("t", [1, 2, 3, 4, 5]))
    assert (result.consumed, result.accepted) == (2, 2)
    assert result.rest is not None and result.rest.bodies is None    # still encoded
    assert msgpack.unpackb(result.rest.blob) == [3, 4, 5]
    assert c.publish(result.rest).accepted == 0
    c.take("slow", 10)
    assert c.publish(result.rest).accepted == 2


def test_block_only_counts_what_the_subscription_selects() -> None:
    c = core(slow={"policy": "block", "limit": 1, "topics": ["a"]})
    assert c.publish(pub(["b", "b", "b", "a"], [1, 2, 3, 4])).accepted == 4
    assert c.publish(pub(["b", "a"], [5, 6])).accepted == 0


def test_history_is_bounded_and_replays_from_a_seq() -> None:
    c = ChannelCore("events/test", INC, history=5)
    for i in range(4):
        c.publish(pub("t", [i * 3, i * 3 + 1, i * 3 + 2]))   # seqs 1..12
    assert c.history_size == 5 and c.first_seq() == 8
    assert sum(len(run) for run in c.history) == 6       # one run is held in part
    c.subscribe("late", from_seq=10)
    assert [e[0] for e in flat(c.take("late", 100))] == [10, 11, 12]
    c.subscribe("early", from_seq=2)
    taken = c.take("early", 100)
    assert taken.gaps == [[0, None, "history"]]            # type: ignore[union-attr]
    assert [e[0] for e in flat(taken)] == [8, 9, 10, 11, 12]


def test_replay_turns_live_without_missing_or_repeating_an_event() -> None:
    c = ChannelCore("events/test", INC, history=1000)
    for i in range(10):
        c.publish(pub("t", [i]))
    c.subscribe("r", from_seq=1, filter={"field": [], "op": ">=", "value": 0})
    seen = [e[0] for e in flat(c.take("r", 4))]
    c.publish(pub("t", [10]))                               # during the replay
    while c.pending("r"):
        seen += [e[0] for e in flat(c.take("r", 4))]
        c.publish(pub("t", [99])) if len(seen) < 12 else None
    c.publish(pub("t", [100]))                              # live now
    seen += [e[0] for e in flat(c.take("r", 4))]
    assert seen == list(range(1, c.seq + 1))


def test_a_restarted_channel_replays_its_whole_history_to_old_subscribers() -> None:
    c = core()
    c.publish(pub("t", [1, 2]))
    answer = c.subscribe("s", incarnation=INC + 1, from_seq=500)
    assert answer.restarted and answer.replay_from == 1
    assert [e[2] for e in flat(c.take("s", 10))] == [1, 2]


def test_events_that_passed_this_channel_are_refused_and_not_sent_back() -> None:
    c = core(downstream={"skip_via": ["events/other"]}, all={})
    result = c.publish(pub(["a", "b", "c"], [1, 2, 3],
                           vias=[None, ["events/test"], ["events/other"]]))
    assert (result.accepted, result.looped) == (2, 1)
    assert [e[2] for e in flat(c.take("downstream", 10))] == [1]
    taken = c.take("all", 10)
    assert [e[2] for e in flat(taken)] == [1, 3]
    assert taken.runs[0].vias == [None, ("events/other",)]  # type: ignore[union-attr]


@pytest.mark.parametrize("options, error", [
    ({"topics": "link/"}, "list of topic prefixes"),
    ({"topics": []}, "give 1 to"),
    ({"policy": "drop-all"}, "unknown"),
    ({"limit": 0}, "from 1 to"),
    ({"from_seq": "3"}, "from_seq"),
    ({"skip_via": "x"}, "skip_via"),
    ({"filter": {"field": "a"}}, "not a filter"),
])
def test_bad_subscriptions_are_rejected(options: dict[str, Any], error: str) -> None:
    with pytest.raises(Rejected, match=error):
        core().subscribe("s", **options)


def test_an_invalid_filter_is_rejected_as_invalid_filter() -> None:
    with pytest.raises(InvalidFilter):
        core().subscribe("s", filter={"field": "a", "op": "=~", "value": 1})


@pytest.mark.parametrize("publication, error", [
    (Publication([1, 2], blob=msgpack.packb([1, 2])), "list of str"),
    (Publication(["a"], blob=msgpack.packb([1, 2])), "one body per topic"),
    (Publication(["a"], blob=b"\x91"), "not valid msgpack"),
    (Publication(["a"], blob=msgpack.packb([1]) + b"\x00"), "after the array"),
    (Publication(["a" * 300], blob=msgpack.packb([1])), "longer than"),
    (Publication(["a"], blob=msgpack.packb([1]), vias=[[1]]), "via"),
])
def test_malformed_publications_are_rejected_whole(publication: Publication,
                                                   error: str) -> None:
    c = core(s={})
    with pytest.raises(Rejected, match=error):
        c.publish(publication)
    assert c.seq == 0 and not c.pending("s")


def test_check_bodies_counts_without_decoding() -> None:
    assert check_bodies(msgpack.packb([{"a": [1, 2]}, "x", None]), None) == 3
    with pytest.raises(Rejected):
        check_bodies("not bytes", 1)


@pytest.mark.parametrize("body", [
    None, {"op": "publish"}, {"op": "publish", "topics": "a", "bodies": [1]},
    {"op": "publish", "topics": 3, "bodies": b"\x90"},
])
def test_parse_publish_refuses_malformed_bodies(body: Any) -> None:
    with pytest.raises(Rejected):
        parse_publish(body if body is not None else {})


@pytest.mark.parametrize("body", [
    None, 3, {"inc": 1}, {"inc": "1", "runs": [], "dropped": 0, "head": 0},
    {"inc": 1, "runs": [[1, "t"]], "dropped": 0, "head": 0},
    {"inc": 1, "runs": [[1, 2, b"\x90"]], "dropped": 0, "head": 0},
    {"inc": 1, "runs": [["1", "t", b"\x90"]], "dropped": 0, "head": 0},
    {"inc": 1, "runs": [], "gaps": [[0, 1, "other"]], "dropped": 0, "head": 0},
])
def test_parse_delivery_refuses_malformed_bodies(body: Any) -> None:
    with pytest.raises(ProtocolError):
        parse_delivery(body)


@pytest.mark.parametrize("runs", [
    [[1, ["a", "b"], msgpack.packb([1])]],            # fewer bodies than topics
    [[[1], "a", msgpack.packb([1, 2])]],              # fewer seqs than bodies
    [[1, "a", msgpack.packb(3)]],                     # bodies not an array
    [[1, "a", b"\xc1"]],                              # not msgpack
])
def test_a_subscriber_refuses_runs_that_do_not_add_up(runs: list[Any]) -> None:
    state = SubscriberState("events/test")
    with pytest.raises(ProtocolError):
        state.accept(*parse_delivery({"inc": 1, "runs": runs, "dropped": 0, "head": 0}))


def test_subscriber_state_attaches_each_gap_to_the_event_after_it() -> None:
    c = core(s={"policy": "drop-newest", "limit": 2})
    state = SubscriberState(c.name)
    state.subscribed({"inc": INC, "head": 0, "replay_from": None})
    c.publish(pub("t", [1, 2, 3, 4]))
    events = state.accept(*parse_delivery(wire(c, c.take("s", 10))))  # type: ignore[arg-type]
    assert [e.body for e in events] == [1, 2] and state.gaps == 1 and state.missed == 2
    c.publish(pub("t", [5]))
    later = state.accept(*parse_delivery(wire(c, c.take("s", 10))))  # type: ignore[arg-type]
    assert later == [Event(5, "t", 5, c.name, (), Gap("dropped", 2, 2))]


def test_subscriber_state_notices_a_restart_and_drops_duplicates() -> None:
    state = SubscriberState("events/test")
    state.subscribed({"inc": 1, "head": 0, "replay_from": None})
    delivery = {"inc": 1, "runs": [[1, "t", msgpack.packb([10, 11])]], "dropped": 0,
                "head": 2}
    assert [e.seq for e in state.accept(*parse_delivery(delivery))] == [1, 2]
    assert state.accept(*parse_delivery(delivery)) == []          # both again
    assert state.duplicates == 2
    assert state.resume_point() == (1, 3)
    restarted = dict(delivery, inc=2)
    events = state.accept(*parse_delivery(restarted))
    assert events[0].gap == Gap("restart", 2, None) and events[1].gap is None
    assert state.incarnation == 2 and state.gaps == 1 and state.missed == 0


def test_runs_slice_and_pick_keep_seqs_topics_and_vias() -> None:
    run = Run(10, ["a", "b", "c"], blob=msgpack.packb([1, 2, 3]), vias=[None, ("x",), None])
    assert run.slice(0, 3) is run
    part = run.slice(1, 3)
    assert (list(part.seq_list()), part.topics, part.bodies, part.vias) == \
        ([11, 12], ["b", "c"], [2, 3], [("x",), None])
    assert run.bodies is None           # slicing does not keep the decoded bodies
    picked = run.pick([0, 2])           # picking does, for the next pick of this run
    assert (picked.seqs, picked.topics, picked.bodies) == ([10, 12], ["a", "c"], [1, 3])
    run.compact()
    assert run.bodies is None and run.blob is not None


# -- a property: whatever the interleaving, nothing is lost silently -------------
SUBSCRIBERS = {
    "block-all": {"policy": "block", "limit": 5},
    "block-a": {"policy": "block", "limit": 3, "topics": ["a/"]},
    "oldest-hot": {"policy": "drop-oldest", "limit": 4,
                   "filter": {"field": "v", "op": ">", "value": 3}},
    "newest-all": {"policy": "drop-newest", "limit": 4},
}
publications = st.lists(st.tuples(st.sampled_from(["a/x", "b/y"]), st.integers(0, 9)),
                        min_size=1, max_size=7)
operations = st.lists(st.one_of(
    st.tuples(st.just("publish"), publications),
    st.tuples(st.just("take"), st.tuples(st.sampled_from(sorted(SUBSCRIBERS)),
                                         st.integers(1, 6)))), max_size=40)


def wanted(sub_id: str, topic: str, value: int) -> bool:
    options = SUBSCRIBERS[sub_id]
    prefixes = options.get("topics", [""])
    return topic.startswith(tuple(prefixes)) and ("filter" not in options or value > 3)


@settings(max_examples=200, deadline=None)
@given(operations)
def test_every_event_is_delivered_in_order_or_reported_lost(ops: list[Any]) -> None:
    c = ChannelCore("events/test", INC, history=10)
    states = {}
    for sub_id, options in SUBSCRIBERS.items():
        c.subscribe(sub_id, **options)
        states[sub_id] = SubscriberState(c.name)
        states[sub_id].subscribed({"inc": INC, "head": 0, "replay_from": None})
    parked: list[Publication] = []
    accepted: list[tuple[int, str, int]] = []
    received: dict[str, list[Event]] = {sub_id: [] for sub_id in SUBSCRIBERS}

    def offer(publication: Publication) -> None:
        result = c.publish(publication)
        bodies = publication.bodies if publication.bodies is not None \
            else msgpack.unpackb(publication.blob)
        topics = publication.topics if isinstance(publication.topics, list) \
            else [publication.topics] * len(bodies)
        accepted.extend(zip(range(result.first, result.last + 1), topics,
                            [b["v"] for b in bodies[:result.accepted]]))
        if result.rest is not None:
            parked.insert(0, result.rest)

    def take(sub_id: str, count: int) -> None:
        taken = c.take(sub_id, count)
        assert taken is not None
        received[sub_id] += states[sub_id].accept(*parse_delivery(wire(c, taken)))
        while parked and taken.freed:
            before = len(parked)
            offer(parked.pop(0))
            if len(parked) >= before:
                break

    for op, argument in ops:
        if op == "publish":
            publication = pub([t for t, _ in argument], [{"v": v} for _, v in argument])
            if parked:
                parked.append(publication)
            else:
                offer(publication)
        else:
            take(*argument)
        for sub in c.subscriptions.values():
            assert sub.size <= sub.limit
    for _ in range(100):                # drain everything, parked publications too
        busy = [sub_id for sub_id in SUBSCRIBERS if c.pending(sub_id)]
        if not busy and not parked:
            break
        for sub_id in busy:
            take(sub_id, 50)
        if not busy:
            offer(parked.pop(0))
    assert not parked and not any(c.pending(sub_id) for sub_id in SUBSCRIBERS)
    assert [seq for seq, _, _ in accepted] == list(range(1, c.seq + 1))
    for sub_id, events in received.items():
        expected = [e for e in accepted if wanted(sub_id, e[1], e[2])]
        got = [(e.seq, e.topic, e.body["v"]) for e in events]
        assert got == sorted(got) and set(got) <= set(expected)
        state = states[sub_id]
        assert len(got) + state.missed == len(expected), sub_id
        assert state.missed == c.subscriptions[sub_id].dropped
        if SUBSCRIBERS[sub_id]["policy"] == "block":
            assert got == expected


def test_an_ended_subscriptions_counts_stay_in_the_channels_totals() -> None:
    """``stats()["subscriptions"]`` holds the live subscriptions only; what the
    ended ones dropped and delivered stays in the channel's totals, which never
    go down (nor do ``drops``, per policy)."""
    c = core(slow={"limit": 2}, gone={"limit": 2, "policy": "drop-newest"},
             cut={"limit": 2, "policy": "disconnect"})
    c.publish(pub("a", [1, 2, 3, 4, 5]))       # cut overflows and ends at once
    assert len(flat(c.take("slow", 10))) == 2
    before = c.stats()
    assert set(before["subscriptions"]) == {"slow", "gone"}
    assert (before["dropped"], before["delivered"]) == (3 + 3 + 5, 2)
    c.unsubscribe("gone")
    c.subscribe("slow")                         # the same subscriber again: a new one
    after = c.stats()
    assert after["subscriptions"]["slow"]["dropped"] == 0
    assert (after["dropped"], after["delivered"]) == (11, 2)
    assert after["closed_subscriptions"] == {"count": 3, "dropped": 11, "delivered": 2}
    assert sum(c.drops.values()) == after["dropped"]
