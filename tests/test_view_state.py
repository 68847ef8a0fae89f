"""The web view's state model (posa.gateway.view.state), without a socket or a clock:
names and where they live, services, channels, queues, and the log of migrations and
failovers, fed the way the registry's watch() and the ops numbers feed it."""
from __future__ import annotations

import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from posa import LocalRegistry
from posa.gateway.view import ViewState
from posa.naming.registration import Registration


def reg(name: str, address: str, epoch: int, *, service: str | None = None,
        expires_in: float = 10.0) -> Registration:
    meta = {"service": service} if service else {}
    return Registration(name, (address,), epoch, 10.0, expires_in, meta)


def kinds(updates: list[dict[str, Any]]) -> list[str]:
    return [u["event"]["kind"] for u in updates if u["type"] == "log"]


def test_names_there_at_the_first_resync_are_not_news_but_later_ones_are() -> None:
    state = ViewState()
    first = state.resync([reg("a/one", "tcp://h:1", 1)], now=0.0)
    assert [u["type"] for u in first] == ["name"] and not state.log
    later = state.changed("a/two", reg("a/two", "inproc://a/two", 1), now=1.0)
    assert kinds(later) == ["registered"]
    assert state.names["a/two"]["transport"] == "inproc"


def test_a_new_epoch_at_other_addresses_is_a_migration_and_a_renewal_is_silent() -> None:
    state = ViewState()
    state.resync([reg("a/one", "tcp://h:1", 1)], now=0.0)
    assert state.changed("a/one", reg("a/one", "tcp://h:1", 1, expires_in=9.0), 1.0) \
        == [{"type": "name", "name": "a/one", "entry": state.names["a/one"]}]
    moved = state.changed("a/one", reg("a/one", "zmq+tcp://h:2", 2), now=2.0)
    assert kinds(moved) == ["migrated"]
    event = state.log[-1]
    assert event["was"] == ["tcp://h:1"] and "zmq+tcp://h:2" in event["text"]
    assert state.names["a/one"]["transport"] == "zmq+tcp"
    assert kinds(state.changed("a/one", reg("a/one", "zmq+tcp://h:2", 3), 3.0)) \
        == ["restarted"]
    assert state.changed("a/one", reg("a/one", "tcp://h:1", 1), 4.0) == [], \
        "a late report of an older epoch is ignored"


def test_a_name_back_elsewhere_after_it_was_gone_is_a_failover() -> None:
    state = ViewState()
    state.resync([reg("a/one", "tcp://h:1", 1)], now=0.0)
    assert kinds(state.changed("a/one", None, 1.0)) == ["gone"]
    assert "a/one" not in state.names
    assert kinds(state.changed("a/one", reg("a/one", "tcp://other:1", 2), 2.0)) \
        == ["failover"]


def test_a_service_that_loses_one_server_of_two_is_a_failover() -> None:
    state = ViewState()
    state.resync([reg("lib/s1", "tcp://h:1", 1, service="lib"),
                  reg("lib/s2", "tcp://h:2", 1, service="lib")], now=0.0)
    assert state.services == {"lib": ["lib/s1", "lib/s2"]}
    updates = state.changed("lib/s1", None, 1.0)
    assert {"type": "service", "service": "lib", "servers": ["lib/s2"]} in updates
    assert kinds(updates) == ["gone", "failover"]
    state.changed("lib/s2", None, 2.0)
    assert state.services == {}


def test_a_resync_refreshes_leases_and_reports_what_a_watch_missed() -> None:
    state = ViewState()
    state.resync([reg("a/one", "tcp://h:1", 1, expires_in=10.0)], now=0.0)
    assert state.snapshot(now=4.0)["names"][0]["lease_left"] == 6.0
    renewed = state.resync([reg("a/one", "tcp://h:1", 1, expires_in=10.0),
                            reg("a/two", "tcp://h:2", 1)], now=5.0)
    assert state.snapshot(now=5.0)["names"][0]["lease_left"] == 10.0
    assert kinds(renewed) == ["registered"]
    assert kinds(state.resync([], now=6.0)) == ["gone", "gone"]


def test_channel_rates_and_drops_and_queue_depth_and_age() -> None:
    state = ViewState()
    stats = {"published": 100, "seq": 100, "drops": {"drop-oldest": 0},
             "subscriptions": {"s1": {"buffered": 3, "dropped": 0}}}
    state.channel("ev/x", stats, now=0.0)
    updates = state.channel("ev/x", {**stats, "published": 300,
                                     "drops": {"drop-oldest": 40}}, now=2.0)
    row = state.channels["ev/x"]
    assert (row["rate"], row["dropped"], row["drop_rate"]) == (100.0, 40, 20.0)
    assert kinds(updates) == ["drops"]
    state.queue("q", {"pending": 0, "in_flight": 0}, now=0.0)
    state.queue("q", {"pending": 5, "in_flight": 1}, now=1.0)
    state.queue("q", {"pending": 7, "in_flight": 0}, now=4.0)
    assert (state.queues["q"]["depth"], state.queues["q"]["age"]) == (7, 3.0)
    state.queue("q", {"pending": 0, "in_flight": 0}, now=5.0)
    assert state.queues["q"]["age"] == 0.0


def test_the_model_follows_a_real_registry_watch() -> None:
    """What LocalRegistry.watch() reports, in order, is what the model takes."""
    state, registry = ViewState(), LocalRegistry()
    state.resync([], now=0.0)
    unsubscribe = registry.watch(lambda name, r: state.changed(name, r, 0.0))
    registry.register("w/one", ["tcp://h:1"], credential="c", meta={"service": "w"})
    registry.register("w/one", ["zmq+tcp://h:2"], credential="c")
    registry.unregister("w/one", credential="c")
    unsubscribe()
    assert [e["kind"] for e in state.log] == ["registered", "migrated", "gone"]
    assert state.services == {}


# -- a model of many changes -------------------------------------------------------
NAMES = ["n/a", "n/b", "n/c"]
ADDRESSES = ["tcp://h:1", "tcp://h:2", "inproc://x"]
changes = st.lists(st.tuples(st.sampled_from(NAMES), st.one_of(
    st.none(), st.tuples(st.sampled_from(ADDRESSES), st.booleans(),
                         st.sampled_from([None, "svc"])))), max_size=40)


@settings(max_examples=200, deadline=None)
@given(changes)
def test_any_sequence_of_changes_leaves_the_last_state_and_one_event_per_move(
        steps: list[tuple[str, Any]]) -> None:
    state = ViewState()
    state.resync([], now=0.0)
    live: dict[str, Registration] = {}
    epochs = dict.fromkeys(NAMES, 0)
    migrations = 0
    for t, (name, change) in enumerate(steps, start=1):
        if change is None:
            live.pop(name, None)
            state.changed(name, None, float(t))
            continue
        address, new_epoch, service = change
        old = live.get(name)
        if new_epoch or old is None:
            epochs[name] += 1
        registration = reg(name, address, epochs[name], service=service)
        if old is not None and registration.epoch > old.epoch \
                and old.addresses != registration.addresses:
            migrations += 1
        live[name] = registration
        state.changed(name, registration, float(t))
    assert {n: (e["addresses"], e["epoch"]) for n, e in state.names.items()} \
        == {n: (list(r.addresses), r.epoch) for n, r in live.items()}
    assert state.services == ({"svc": sorted(n for n, r in live.items()
                                             if r.meta.get("service") == "svc")}
                              if any(r.meta.get("service") for r in live.values()) else {})
    assert sum(e["kind"] == "migrated" for e in state.log) == migrations
    json.dumps(state.snapshot(now=99.0))
