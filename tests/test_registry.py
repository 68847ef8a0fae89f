"""The registry: ownership, epochs, leases (fake clock), watchers, scale, state files."""
from __future__ import annotations

import gc
import sys
import threading
from collections.abc import Callable
from typing import Any

import msgpack
import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from posa.errors import (
    Closed,
    InvalidName,
    NameNotFound,
    ProtocolError,
    Rejected,
    StaleEpoch,
    Unauthorized,
)
from posa.naming.protocol import registration_to_wire
from posa.naming.registration import MAX_ADDRESSES, Registration, Registry
from posa.naming.registry import LocalRegistry
from posa.naming.table import RegistryTable

ADDR = ["tcp://127.0.0.1:7001"]


class FakeClock:
    """A clock that moves only when told to."""

    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def reg(clock: FakeClock) -> Any:
    with LocalRegistry(clock=clock) as registry:
        yield registry


def recorder(registry: LocalRegistry) -> list[tuple[str, int | None]]:
    """Subscribe and return the list that collects (name, epoch or None) events."""
    events: list[tuple[str, int | None]] = []
    registry.watch(lambda name, r: events.append((name, None if r is None else r.epoch)))
    return events


def test_local_registry_implements_the_interface(reg: LocalRegistry) -> None:
    assert isinstance(reg, Registry)


def test_register_and_lookup(reg: LocalRegistry) -> None:
    made = reg.register("net/a/agent-1", ["zmq+tcp://127.0.0.1:7002", "inproc://agent-1"],
                        credential="k", lease=5, meta={"service": "x", "weight": 2})
    assert made == Registration("net/a/agent-1", ("zmq+tcp://127.0.0.1:7002",
                                                  "inproc://agent-1"),
                                1, 5.0, 5.0, {"service": "x", "weight": 2})
    assert reg.lookup("net/a/agent-1") == made


def test_lookup_of_unknown_name_says_what_to_check(reg: LocalRegistry) -> None:
    with pytest.raises(NameNotFound) as info:
        reg.lookup("net/ghost")
    assert str(info.value) == ("no live registration for 'net/ghost'; is the peer running, "
                               "and registered with this registry?")


@pytest.mark.parametrize("call", [
    lambda r: r.lookup("net/*"),
    lambda r: r.lookup("net//a"),
    lambda r: r.register("net/*", ADDR, credential="k"),
    lambda r: r.register("", ADDR, credential="k"),
    lambda r: r.renew("a/../b", credential="k"),
    lambda r: r.unregister("/a", credential="k"),
    lambda r: r.names("net/**/a"),
    lambda r: r.lookup(["not", "a", "name"]),
])
def test_malformed_names_are_invalid(reg: LocalRegistry, call: Callable[[Any], Any]) -> None:
    with pytest.raises(InvalidName):
        call(reg)


@pytest.mark.parametrize("kwargs, error, says", [
    ({"addresses": "tcp://127.0.0.1:1"}, Rejected, "not a single string"),
    ({"addresses": []}, Rejected, f"1 to {MAX_ADDRESSES} addresses"),
    ({"addresses": ["x"] * (MAX_ADDRESSES + 1)}, Rejected, "addresses"),
    ({"addresses": ["127.0.0.1:7000"]}, Rejected, "SCHEME://WHERE"),
    ({"addresses": [7000]}, Rejected, "SCHEME://WHERE"),
    ({"addresses": ["tcp://" + "x" * 2000]}, Rejected, "at most 1024"),
    ({"lease": 0}, Rejected, "lease"),
    ({"lease": -1.0}, Rejected, "lease"),
    ({"lease": float("inf")}, Rejected, "lease"),
    ({"lease": float("nan")}, Rejected, "lease"),
    ({"lease": "10"}, Rejected, "lease"),
    ({"epoch": 0}, Rejected, "epoch"),
    ({"epoch": True}, Rejected, "epoch"),
    ({"epoch": 1.5}, Rejected, "epoch"),
    ({"meta": {1: "x"}}, Rejected, "str keys"),
    ({"meta": ["x"]}, Rejected, "str keys"),
    ({"meta": {"f": object()}}, Rejected, "not msgpack data"),
    ({"meta": {"big": b"x" * 70_000}}, Rejected, "keep bulky data out"),
    ({"credential": ""}, Unauthorized, "non-empty str"),
    ({"credential": None}, Unauthorized, "non-empty str"),
])
def test_malformed_registrations_are_refused(reg: LocalRegistry, kwargs: dict[str, Any],
                                             error: type[Exception], says: str) -> None:
    args: dict[str, Any] = {"addresses": ADDR, "credential": "k"}
    args.update(kwargs)
    with pytest.raises(error) as info:
        reg.register("net/a", **args)
    assert says in str(info.value)
    assert reg.names() == []


def test_meta_is_a_read_only_copy_of_msgpack_data(reg: LocalRegistry) -> None:
    meta = {"tags": ["a"], "nested": {"k": (1, 2)}}
    made = reg.register("net/a", ADDR, credential="k", meta=meta)
    meta["tags"].append("b")
    assert made.meta == {"tags": ["a"], "nested": {"k": [1, 2]}}   # as it travels
    with pytest.raises(TypeError):
        made.meta["x"] = 1  # type: ignore[index]


# -- ownership ----------------------------------------------------------------------

def test_a_name_belongs_to_its_first_credential(reg: LocalRegistry) -> None:
    reg.register("net/a", ADDR, credential="owner")
    for call in (lambda: reg.register("net/a", ["inproc://thief"], credential="thief"),
                 lambda: reg.renew("net/a", credential="thief"),
                 lambda: reg.unregister("net/a", credential="thief")):
        with pytest.raises(Unauthorized) as info:
            call()
        assert "'net/a'" in str(info.value)
    assert reg.lookup("net/a").addresses == tuple(ADDR)


def test_only_a_digest_of_the_credential_is_kept(clock: FakeClock) -> None:
    table = RegistryTable(now=clock)
    table.register("net/a", ADDR, credential="secret-token")
    assert b"secret-token" not in msgpack.packb(table.export_state())


def test_owner_may_unregister_and_anyone_may_then_take_the_name(reg: LocalRegistry) -> None:
    reg.register("net/a", ADDR, credential="owner")
    reg.unregister("net/a", credential="owner")
    with pytest.raises(NameNotFound):
        reg.lookup("net/a")
    assert reg.register("net/a", ADDR, credential="other").epoch == 2
    reg.unregister("net/a", credential="other")
    reg.unregister("net/a", credential="other")        # nothing live: nothing to do


def test_renew_of_a_missing_name_says_to_register_again(reg: LocalRegistry) -> None:
    with pytest.raises(NameNotFound, match="register it again"):
        reg.renew("net/a", credential="k")


# -- epochs -------------------------------------------------------------------------

def test_epochs(reg: LocalRegistry) -> None:
    events = recorder(reg)
    assert reg.register("n/a", ADDR, credential="k").epoch == 1
    assert reg.register("n/a", ["inproc://b"], credential="k").epoch == 2      # migration
    assert reg.register("n/a", ["inproc://c"], credential="k", epoch=7).epoch == 7
    with pytest.raises(StaleEpoch) as info:
        reg.register("n/a", ["inproc://old"], credential="k", epoch=6)
    assert "epoch 7 is in force" in str(info.value)
    assert reg.lookup("n/a").addresses == ("inproc://c",)
    assert events == [("n/a", 1), ("n/a", 2), ("n/a", 7)]


def test_equal_epoch_from_the_owner_is_an_idempotent_refresh(
        reg: LocalRegistry, clock: FakeClock) -> None:
    events = recorder(reg)
    reg.register("n/a", ADDR, credential="k", epoch=3, lease=10)
    clock.advance(8)
    again = reg.register("n/a", ADDR, credential="k", epoch=3, lease=10)
    assert (again.epoch, again.expires_in) == (3, 10.0)
    assert events == [("n/a", 3)]                       # nothing changed for watchers
    moved = reg.register("n/a", ["inproc://x"], credential="k", epoch=3)
    assert moved.addresses == ("inproc://x",)
    assert events == [("n/a", 3), ("n/a", 3)]
    with pytest.raises(Unauthorized):
        reg.register("n/a", ADDR, credential="other", epoch=3)


def test_epochs_never_go_back_after_a_name_dies(reg: LocalRegistry, clock: FakeClock) -> None:
    reg.register("n/a", ADDR, credential="k")
    reg.register("n/a", ADDR, credential="k")
    clock.advance(11)
    assert reg.register("n/a", ADDR, credential="other").epoch == 3
    reg.unregister("n/a", credential="other")
    assert reg.register("n/a", ADDR, credential="k").epoch == 4


# -- leases ---------------------------------------------------------------------------

def test_an_unrenewed_registration_disappears(reg: LocalRegistry, clock: FakeClock) -> None:
    events = recorder(reg)
    reg.register("n/short", ADDR, credential="k", lease=2)
    reg.register("n/long", ADDR, credential="k", lease=5)
    clock.advance(1.5)
    assert reg.lookup("n/short").expires_in == pytest.approx(0.5)
    clock.advance(0.5)                                 # exactly at the deadline: gone
    with pytest.raises(NameNotFound):
        reg.lookup("n/short")
    assert [r.name for r in reg.names("n/*")] == ["n/long"]
    assert events == [("n/short", 1), ("n/long", 1), ("n/short", None)]
    with pytest.raises(NameNotFound):
        reg.renew("n/short", credential="k")


def test_renew_restarts_the_lease(reg: LocalRegistry, clock: FakeClock) -> None:
    reg.register("n/a", ADDR, credential="k", lease=3)
    for _ in range(10):
        clock.advance(2)
        assert reg.renew("n/a", credential="k").expires_in == 3.0
    assert reg.lookup("n/a").epoch == 1
    clock.advance(3)
    assert reg.names() == []


def packed(registry: Any, name: str) -> bytes:
    """What ``lookup_packed`` must answer: ``lookup`` as the protocol packs it."""
    return msgpack.packb(registration_to_wire(registry.lookup(name)))


def test_a_packed_lookup_never_outlives_its_registration(reg: LocalRegistry,
                                                         clock: FakeClock) -> None:
    """The dispatcher's answer to a lookup, packed once per registration: the
    same bytes as the registration packed, whatever happened to it since."""
    reg.register("n/a", ADDR, credential="k", lease=4, meta={"service": "s", "w": [1]})
    first = reg.lookup_packed("n/a")
    assert first == packed(reg, "n/a")
    clock.advance(1.5)                                  # the seconds left move on
    assert reg.lookup_packed("n/a") == packed(reg, "n/a") != first
    reg.renew("n/a", credential="k")
    assert msgpack.unpackb(reg.lookup_packed("n/a"))["expires_in"] == 4.0
    for change in ({"addresses": ["tcp://127.0.0.1:7002"]}, {"meta": {"service": "t"}},
                   {"lease": 9.0}, {}):                 # {}: the next epoch
        reg.register("n/a", **{"addresses": ADDR, "meta": None, "lease": 4.0, **change},
                     credential="k", epoch=None)
        assert reg.lookup_packed("n/a") == packed(reg, "n/a")
    reg.register("n/a", ADDR, credential="k", epoch=9)
    assert msgpack.unpackb(reg.lookup_packed("n/a"))["epoch"] == 9
    reg.unregister("n/a", credential="k")
    with pytest.raises(NameNotFound):
        reg.lookup_packed("n/a")
    reg.register("n/a", ["tcp://127.0.0.1:7003"], credential="other", lease=2)
    assert reg.lookup_packed("n/a") == packed(reg, "n/a")
    clock.advance(2)                                    # its lease ran out
    with pytest.raises(NameNotFound):
        reg.lookup_packed("n/a")
    saved = reg.export_state()
    reg.register("n/a", ADDR, credential="k", lease=3)
    reg.lookup_packed("n/a")
    reg.load(RegistryTable.import_state(saved, now=clock))   # a state without it
    with pytest.raises(NameNotFound):
        reg.lookup_packed("n/a")
    with pytest.raises(InvalidName):
        reg.lookup_packed("bad name!")


def test_expire_reaps_and_tells_when_to_call_again(reg: LocalRegistry,
                                                   clock: FakeClock) -> None:
    events = recorder(reg)
    assert reg.expire() is None
    reg.register("n/a", ADDR, credential="k", lease=2)
    reg.register("n/b", ADDR, credential="k", lease=5)
    assert reg.expire() == 2.0
    clock.advance(1)
    reg.renew("n/a", credential="k")
    assert reg.expire() == 2.0                       # the renewal counts, not the old lease
    clock.advance(2)
    assert reg.expire() == 2.0
    assert events[-1] == ("n/a", None)
    clock.advance(2)
    assert reg.expire() is None
    assert events[-1] == ("n/b", None)


def test_a_dead_name_may_be_taken_by_another_credential(reg: LocalRegistry,
                                                        clock: FakeClock) -> None:
    reg.register("n/a", ADDR, credential="old", lease=1)
    clock.advance(1)
    taken = reg.register("n/a", ["inproc://new"], credential="new")
    assert taken.addresses == ("inproc://new",)
    with pytest.raises(Unauthorized):
        reg.renew("n/a", credential="old")


def test_table_skips_dead_entries_before_they_are_reaped(clock: FakeClock) -> None:
    table = RegistryTable(now=clock)
    table.register("n/a", ADDR, credential="k", lease=1)
    clock.advance(1)
    assert len(table) == 1                             # held until expire()
    assert table.names() == []
    with pytest.raises(NameNotFound):
        table.lookup("n/a")
    assert table.unregister("n/a", credential="other") == []
    assert table.expire() == [("n/a", None)]
    assert len(table) == 0 and table.next_expiry() is None


def test_the_expiry_heap_stays_bounded_under_renewals(clock: FakeClock) -> None:
    table = RegistryTable(now=clock)
    for i in range(10):
        table.register(f"n/{i}", ADDR, credential="k", lease=100)
    for _ in range(1000):
        for i in range(10):
            table.renew(f"n/{i}", credential="k")
    assert len(table._heap) <= 2 * len(table) + 65
    clock.advance(100)
    assert len(table.expire()) == 10


# -- names(pattern) -------------------------------------------------------------------

def test_names_by_pattern(reg: LocalRegistry) -> None:
    for name in ["net", "net/a", "net/a/r1", "net/a/r2", "net/b/r1", "net/b/x/r1",
                 "other/a", "network/a"]:
        reg.register(name, ADDR, credential="k")
    cases = {
        "**": ["net", "net/a", "net/a/r1", "net/a/r2", "net/b/r1", "net/b/x/r1",
               "network/a", "other/a"],
        "*": ["net"],
        "net/*": ["net/a"],
        "net/a/*": ["net/a/r1", "net/a/r2"],
        "net/*/r1": ["net/a/r1", "net/b/r1"],
        "net/**": ["net/a", "net/a/r1", "net/a/r2", "net/b/r1", "net/b/x/r1"],
        "net/b/**": ["net/b/r1", "net/b/x/r1"],
        "*/a": ["net/a", "network/a", "other/a"],
        "*/*/*/r1": ["net/b/x/r1"],
        "net/a": ["net/a"],
        "net/b": [],
        "nothing/**": [],
    }
    for pattern, expected in cases.items():
        assert [r.name for r in reg.names(pattern)] == expected, pattern


def test_index_forgets_intermediate_nodes(clock: FakeClock) -> None:
    table = RegistryTable(now=clock)
    table.register("a/b/c/d", ADDR, credential="k")
    table.register("a", ADDR, credential="k")
    table.unregister("a/b/c/d", credential="k")
    assert table._tree._children == {"": {"a"}}
    table.unregister("a", credential="k")
    assert table._tree._children == {}
    assert table.names("**") == []


# -- watchers -------------------------------------------------------------------------

def test_watch_reports_every_change_until_unsubscribed(reg: LocalRegistry) -> None:
    seen: list[tuple[str, Registration | None]] = []
    stop = reg.watch(lambda name, r: seen.append((name, r)))
    made = reg.register("n/a", ADDR, credential="k")
    reg.renew("n/a", credential="k")                    # not a change
    reg.unregister("n/a", credential="k")
    assert seen == [("n/a", made), ("n/a", None)]
    stop()
    stop()
    reg.register("n/b", ADDR, credential="k")
    assert len(seen) == 2


def test_a_failing_watcher_is_logged_and_does_not_stop_the_others(
        reg: LocalRegistry, caplog: pytest.LogCaptureFixture) -> None:
    def broken(name: str, r: Registration | None) -> None:
        raise RuntimeError("watcher bug")
    reg.watch(broken)
    events = recorder(reg)
    reg.register("n/a", ADDR, credential="k")
    reg.register("n/b", ADDR, credential="k")
    assert events == [("n/a", 1), ("n/b", 1)]
    assert "watcher bug" in caplog.text


def test_watchers_may_call_the_registry_and_see_changes_in_order(
        reg: LocalRegistry) -> None:
    order: list[str] = []

    def chain(name: str, r: Registration | None) -> None:
        order.append(name)
        assert reg.lookup(name) == r                    # the lock is not held here
        if name == "n/a":
            reg.register("n/b", ADDR, credential="k")   # delivered after n/a's turn
    reg.watch(chain)
    events = recorder(reg)
    reg.register("n/a", ADDR, credential="k")
    assert order == ["n/a", "n/b"]
    assert events == [("n/a", 1), ("n/b", 1)]


def test_concurrent_registrations_are_all_seen_once(reg: LocalRegistry) -> None:
    events = recorder(reg)
    errors: list[BaseException] = []

    def worker(w: int) -> None:
        try:
            for i in range(200):
                reg.register(f"w{w}/n{i}", ADDR, credential=f"k{w}")
                reg.lookup(f"w{w}/n{i}")
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)
    threads = [threading.Thread(target=worker, args=(w,)) for w in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
        assert not t.is_alive()
    assert errors == []
    assert len(reg.names()) == 800
    assert sorted(events) == sorted((f"w{w}/n{i}", 1) for w in range(4) for i in range(200))


def test_closed_registry_refuses_calls(clock: FakeClock) -> None:
    registry = LocalRegistry(clock=clock)
    registry.register("n/a", ADDR, credential="k")
    registry.close()
    registry.close()
    for call in (lambda: registry.lookup("n/a"), lambda: registry.names(),
                 lambda: registry.watch(print), lambda: registry.expire()):
        with pytest.raises(Closed, match="create a new one"):
            call()


# -- scale ----------------------------------------------------------------------------

def _calls(fn: Callable[[], Any]) -> tuple[Any, int]:
    """Run ``fn`` and count every function call it makes (Python and C)."""
    count = 0

    def profile(frame: Any, event: str, arg: Any) -> None:
        nonlocal count
        if event in ("call", "c_call"):
            count += 1
    gc.disable()                                       # no finalizers in the count
    sys.setprofile(profile)
    try:
        result = fn()
    finally:
        sys.setprofile(None)
        gc.enable()
    return result, count


def _site(i: int) -> str:
    return f"net/site-{i % 100}/agent-{i}"


def test_100k_names_lookup_and_prefix_patterns_do_not_scan(clock: FakeClock) -> None:
    big = RegistryTable(now=clock)
    for i in range(100_000):
        big.register(_site(i), [f"inproc://a{i}"], credential="k")
    small = RegistryTable(now=clock)
    for i in range(7, 100_000, 100):                   # exactly site-7's names
        small.register(_site(i), [f"inproc://a{i}"], credential="k")

    assert big.lookup(_site(12_345)).addresses == ("inproc://a12345",)
    site7 = big.names("net/site-7/*")
    assert [r.name for r in site7] == sorted(_site(i) for i in range(7, 100_000, 100))
    assert len(big.names("**")) == 100_000
    assert len(big.names("net/*/agent-99999")) == 1

    # the work a query does is independent of the names it does not return
    for query in (lambda t: t.lookup(_site(12_307)),
                  lambda t: t.names("net/site-7/*"),
                  lambda t: t.names("net/site-7/**"),
                  lambda t: t.names("net/site-7/agent-507")):
        query(small)                                    # warm the pattern cache
        in_big, big_calls = _calls(lambda q=query: q(big))
        in_small, small_calls = _calls(lambda q=query: q(small))
        assert in_big == in_small
        assert big_calls == small_calls


# -- state file ------------------------------------------------------------------------

def test_export_import_round_trip(clock: FakeClock) -> None:
    table = RegistryTable(now=clock)
    table.register("net/a", ["tcp://127.0.0.1:1", "inproc://a"], credential="ka", lease=30,
                   meta={"service": "library/catalog", "weight": 1, "raw": b"\x00"})
    table.register("net/a", ["tcp://127.0.0.1:2"], credential="ka", lease=30)
    table.register("net/b", ADDR, credential="kb", epoch=5, lease=10)
    table.register("net/gone", ADDR, credential="kg")
    table.unregister("net/gone", credential="kg")
    table.register("net/dead", ADDR, credential="kd", lease=1)
    clock.advance(4)
    data = msgpack.unpackb(msgpack.packb(table.export_state()))

    later = FakeClock()
    later.t = 5.0                                      # another process, another clock
    loaded = RegistryTable.import_state(data, now=later, elapsed=2.0)
    assert [(r.name, r.addresses, r.epoch, r.lease, r.expires_in, dict(r.meta))
            for r in loaded.names()] == [
        ("net/a", ("tcp://127.0.0.1:2",), 2, 30.0, 24.0, {}),
        ("net/b", ("tcp://127.0.0.1:7001",), 5, 10.0, 4.0, {}),
    ]
    with pytest.raises(Unauthorized):
        loaded.renew("net/a", credential="kb")
    assert loaded.renew("net/a", credential="ka").expires_in == 30.0
    assert loaded.register("net/gone", ADDR, credential="x")[0].epoch == 2
    assert loaded.register("net/dead", ADDR, credential="x")[0].epoch == 2
    later.advance(4)
    assert loaded.expire() == [("net/b", None)]


def test_local_registry_exports_and_loads_a_state(reg: LocalRegistry,
                                                  clock: FakeClock) -> None:
    reg.register("net/kept", ADDR, credential="k", lease=20)
    reg.register("net/moved", ADDR, credential="k", lease=20)
    saved = msgpack.unpackb(msgpack.packb(reg.export_state()))
    reg.unregister("net/moved", credential="k")
    reg.register("net/new", ADDR, credential="k")
    events = recorder(reg)
    clock.advance(5)
    reg.load(RegistryTable.import_state(saved, now=clock, elapsed=5))
    assert [(r.name, r.expires_in) for r in reg.names()] == [("net/kept", 15.0),
                                                            ("net/moved", 15.0)]
    assert events == [("net/new", None), ("net/kept", 1), ("net/moved", 1)]
    clock.advance(15)
    assert reg.expire() is None
    assert events[-2:] == [("net/kept", None), ("net/moved", None)]


@pytest.mark.parametrize("state", [
    {},
    {"version": 2, "entries": [], "epochs": {}},
    {"version": 1, "entries": [{"name": "a"}], "epochs": {}},
    {"version": 1, "entries": [], "epochs": {"a//b": 1}},
    {"version": 1, "entries": [], "epochs": {"a": 0}},
    {"version": 1, "entries": "nope", "epochs": {}},
    {"version": 1, "epochs": {}, "entries": [
        {"name": "a", "addresses": ADDR, "epoch": 1, "lease": 1.0, "expires_in": 1.0,
         "meta": {}, "owner": b"short"}]},
    {"version": 1, "epochs": {}, "entries": [
        {"name": "a", "addresses": "tcp://x:1", "epoch": 1, "lease": 1.0,
         "expires_in": 1.0, "meta": {}, "owner": b"\x00" * 32}]},
    {"version": 1, "epochs": {}, "entries": [
        {"name": "a", "addresses": ADDR, "epoch": 1, "lease": 1.0, "expires_in": 1.0,
         "meta": {}, "owner": b"\x00" * 32}] * 2},
])
def test_malformed_state_is_a_protocol_error(state: dict[str, Any]) -> None:
    with pytest.raises(ProtocolError, match="restore a good copy"):
        RegistryTable.import_state(state)


# -- model-based: the table against a plain model ------------------------------------

NAMES = ["a", "a/b", "a/c", "a/b/c", "d"]
CREDS = ["k1", "k2"]


class TableMachine(RuleBasedStateMachine):
    """Random operations on a table, checked against the rules written out plainly."""

    @initialize()
    def setup(self) -> None:
        self.clock = FakeClock()
        self.table = RegistryTable(now=self.clock)
        self.live: dict[str, tuple[str, int, float]] = {}    # name -> owner, epoch, deadline
        self.last_epoch: dict[str, int] = {}

    def _reap(self) -> None:
        for name, (_, epoch, deadline) in list(self.live.items()):
            if deadline <= self.clock.t:
                del self.live[name]
                self.last_epoch[name] = epoch

    @rule(name=st.sampled_from(NAMES), cred=st.sampled_from(CREDS),
          epoch=st.none() | st.integers(1, 6), lease=st.sampled_from([1.0, 2.5, 4.0]),
          addresses=st.sampled_from([ADDR, ["tcp://127.0.0.1:7002"]]),
          meta=st.sampled_from([None, {"service": "s"}]))
    def register(self, name: str, cred: str, epoch: int | None, lease: float,
                 addresses: list[str], meta: dict[str, Any] | None) -> None:
        self._reap()
        current = self.live.get(name)
        if current is not None and current[0] != cred:
            with pytest.raises(Unauthorized):
                self.table.register(name, ADDR, credential=cred, epoch=epoch, lease=lease)
            return
        if current is not None and epoch is not None and epoch < current[1]:
            with pytest.raises(StaleEpoch):
                self.table.register(name, ADDR, credential=cred, epoch=epoch, lease=lease)
            return
        base = current[1] if current else self.last_epoch.get(name, 0)
        expected = epoch if epoch is not None else base + 1
        made, _ = self.table.register(name, addresses, credential=cred, epoch=epoch,
                                      lease=lease, meta=meta)
        assert made.epoch == expected
        self.live[name] = (cred, expected, self.clock.t + lease)

    @rule(name=st.sampled_from(NAMES), cred=st.sampled_from(CREDS))
    def renew(self, name: str, cred: str) -> None:
        self._reap()
        current = self.live.get(name)
        if current is None:
            with pytest.raises(NameNotFound):
                self.table.renew(name, credential=cred)
        elif current[0] != cred:
            with pytest.raises(Unauthorized):
                self.table.renew(name, credential=cred)
        else:
            made = self.table.renew(name, credential=cred)
            self.live[name] = (cred, current[1], self.clock.t + made.lease)

    @rule(name=st.sampled_from(NAMES), cred=st.sampled_from(CREDS))
    def unregister(self, name: str, cred: str) -> None:
        self._reap()
        current = self.live.get(name)
        if current is not None and current[0] != cred:
            with pytest.raises(Unauthorized):
                self.table.unregister(name, credential=cred)
            return
        changes = self.table.unregister(name, credential=cred)
        assert changes == ([(name, None)] if current else [])
        if current:
            del self.live[name]
            self.last_epoch[name] = current[1]

    @rule(seconds=st.sampled_from([0.5, 1.0, 3.0]))
    def advance(self, seconds: float) -> None:
        self.clock.advance(seconds)

    @rule()
    def expire(self) -> None:
        self._reap()
        reaped = {name for name, r in self.table.expire()}
        assert reaped.isdisjoint(self.live)
        assert len(self.table) == len(self.live)

    @precondition(lambda self: hasattr(self, "table"))
    @invariant()
    def agrees_with_the_model(self) -> None:
        self._reap()
        assert {r.name: r.epoch for r in self.table.names()} == {
            n: e for n, (_, e, _) in self.live.items()}
        for pattern in ("a/*", "a/**", "*"):
            assert [r.name for r in self.table.names(pattern)] == sorted(
                n for n in self.live if _model_match(pattern, n))
        for name in NAMES:      # a packed lookup is the registration packed, or none
            if name in self.live:
                assert self.table.lookup_packed(name) == packed(self.table, name)
            else:
                with pytest.raises(NameNotFound):
                    self.table.lookup_packed(name)
        copy = RegistryTable.import_state(
            msgpack.unpackb(msgpack.packb(self.table.export_state())), now=self.clock)
        assert copy.names() == self.table.names()


def _model_match(pattern: str, name: str) -> bool:
    return {"a/*": name.count("/") == 1 and name.startswith("a/"),
            "a/**": name.startswith("a/"),
            "*": "/" not in name}[pattern]


TableMachine.TestCase.settings = settings(max_examples=60, stateful_step_count=30,
                                          deadline=None)
test_table_against_model = TableMachine.TestCase
