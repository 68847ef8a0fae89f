"""The dispatcher's registry under a greedy or hostile client: quotas, pages, reserved names.

A flood of registrations is refused with ``Rejected`` naming the quota, and
``posa names`` still lists what was accepted (real ``posa dispatcher``
processes); names per owner (a key, or a connection without one) and
registrations per second per connection are bounded; ``names`` comes a page at a
time, each page bounded in entries and bytes, and a walk lists every name that
lives through it once while others come and go; a group send lists its members
page by page; nobody but posa takes a ``posa/`` name, and a client that looks the
dispatcher up by name reaches the real one.
"""
from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import threading
from collections.abc import Iterator

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import posa
from posa import ops
from posa.delivery.sender import Sender
from posa.naming.index import SortedNames
from posa.naming.pages import PAGE_BYTES, PAGE_ENTRIES
from posa.naming.protocol import DISPATCHER, OPS, registration_to_wire
from posa.naming.registration import resolver
from posa.naming.table import RegistryTable
from posa.security import HmacAuthenticator, Keyring, Quotas, Rate
from tests.support import ROOT, start_dispatcher

pytestmark = pytest.mark.timeout(180)

FAKE = ["tcp://127.0.0.1:9"]        # an address nobody is asked to reach
BULK = {"blob": "x" * (60 * 1024)}  # 60 KiB of meta


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "posa", *args], capture_output=True,
                          text=True, cwd=ROOT, timeout=60,
                          env=dict(os.environ, PYTHONPATH=str(ROOT)))


def listed_by_cli(dispatcher: str, pattern: str) -> list[str]:
    """The names ``posa names PATTERN`` prints (it must exit 0)."""
    done = run_cli("names", pattern, "--dispatcher", dispatcher, "--timeout", "20")
    assert done.returncode == 0, done.stderr
    return [line.split("\t", 1)[0] for line in done.stdout.splitlines()]


def flood(reg: posa.RegistryClient, count: int) -> tuple[list[str], list[str]]:
    """Register ``count`` names with 60 KiB of meta each, anonymously, through one
    connection; return the names accepted and the texts of the refusals (every
    refusal must be a ``Rejected``)."""
    accepted, refused = [], []
    for i in range(count):
        name = f"flood/n-{i:04d}"
        try:
            reg.register(name, FAKE, credential=f"c-{i}", lease=600, meta=BULK)
        except posa.Rejected as exc:
            refused.append(str(exc))
        else:
            accepted.append(name)
    return accepted, refused


def test_a_registration_flood_is_refused_naming_the_quota_and_names_still_works() -> None:
    proc, address = start_dispatcher()      # the default quotas
    try:
        with posa.RegistryClient(address, cache=False, timeout=20) as reg:
            accepted, refused = flood(reg, 400)
        assert accepted == [] and len(refused) == 400
        assert "metadata quota" in refused[0] and "16384 bytes" in refused[0], refused[0]
        assert listed_by_cli(address, "flood/**") == []
        assert "posa/dispatcher" in listed_by_cli(address, "**")
    finally:
        proc.close()


def test_a_flood_within_the_meta_quota_meets_the_names_quota_and_all_is_listed() -> None:
    proc, address = start_dispatcher("--max-meta-bytes", "65536",
                                     "--max-names-per-owner", "100")
    try:
        with posa.RegistryClient(address, cache=False, timeout=20) as reg:
            accepted, refused = flood(reg, 400)
        assert accepted == [f"flood/n-{i:04d}" for i in range(100)]
        assert len(refused) == 300 and all("quota" in text for text in refused)
        assert refused[0].startswith("names-per-owner quota: this connection (it has no "
                                     "key) holds 100 names"), refused[0]
        # 100 × 60 KiB: one reply could carry it, but pages of 1 MiB carry it in seven
        assert listed_by_cli(address, "flood/**") == accepted
    finally:
        proc.close()


@pytest.fixture
def keyring() -> Keyring:
    return Keyring({name: secrets.token_bytes(32)
                    for name in ("posa/dispatcher", "alice", "bob", "svc")})


def test_names_per_owner_count_a_key_across_connections_and_free_up(
        keyring: Keyring) -> None:
    quotas = Quotas(registry_names_per_owner=3)
    with posa.Dispatcher("tcp://127.0.0.1:0", quotas=quotas, authenticator=HmacAuthenticator(
            keyring, key_id="posa/dispatcher")) as dispatcher:
        address = dispatcher.address

        def client(key: str) -> posa.RegistryClient:
            return posa.RegistryClient(address, cache=False, authenticator=HmacAuthenticator(
                keyring, key_id=key))
        with client("alice") as one, client("alice") as two, client("bob") as bob:
            for i in range(2):
                one.register(f"a/{i}", FAKE, credential="a")
            two.register("a/2", FAKE, credential="a")   # another connection, the same key
            one.register("a/0", FAKE, credential="a")   # a refresh takes no new name
            with pytest.raises(posa.Rejected, match=r"^names-per-owner quota: key 'alice' "
                               r"holds 3 names.*--max-names-per-owner 3"):
                two.register("a/3", FAKE, credential="a")
            bob.register("b/0", FAKE, credential="b")   # another key: its own quota
            one.unregister("a/1", credential="a")       # a name gone frees its place
            two.register("a/3", FAKE, credential="a")
            assert [r.name for r in bob.names("a/**")] == ["a/0", "a/2", "a/3"]


def test_registrations_per_second_are_bounded_per_connection() -> None:
    rate = Rate(0.001, 5)       # five at once, then one in 1,000 s: no refill in a test
    with posa.Dispatcher("tcp://127.0.0.1:0",
                         quotas=Quotas(registry_rate=rate)) as dispatcher:
        with posa.RegistryClient(dispatcher.address, cache=False) as first, \
             posa.RegistryClient(dispatcher.address, cache=False) as second:
            for i in range(5):
                first.register(f"r/{i}", FAKE, credential="r")
            with pytest.raises(posa.Rejected, match=r"^registration rate quota: at most "
                               r"0.001 registrations per second per connection"):
                first.register("r/5", FAKE, credential="r")
            second.register("r/5", FAKE, credential="r")    # its own connection, own bucket
            first.renew("r/0", credential="r")              # renewals are not counted
            assert len(first.names("r/**")) == 6
        assert dispatcher.rejections["registry-rate"] == 1      # counted in /metrics:
        samples = list(ops.Monitor(dispatcher).samples())
        assert ("posa_rejections_total", {"name": dispatcher.name, "reason": "registry-rate"},
                1) in samples


def test_the_table_pages_every_pattern_as_names_lists_it() -> None:
    table = RegistryTable()
    for i in range(300):
        table.register(f"p/{i % 7}/n-{i:03d}", FAKE, credential="k",
                       meta={"pad": "y" * (i * 37 % 3000)})
    for pattern in ("**", "p/3/*", "p/**", "*/2/*", "p/1/n-001", "none/**"):
        for limit in (1, 7, 1000):
            walked, cursor, pages = [], None, 0
            while pages < 1000:
                page, cursor = table.page(pattern, cursor, limit=limit, max_bytes=20_000)
                pages += 1
                assert len(page) <= limit
                assert len(page) == 1 or len(msgpack.packb(
                    [registration_to_wire(r) for r in page])) <= 20_000
                walked += [r.name for r in page]
                if cursor is None:
                    break
            assert walked == [r.name for r in table.names(pattern)], (pattern, limit)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["add", "drop", "tick", "walk"]),
                          st.integers(0, 40)), max_size=300))
def test_pages_agree_with_names_through_any_changes(steps: list[tuple[str, int]]) -> None:
    clock = Clock()
    table = RegistryTable(now=clock)
    for op, i in steps:
        name = f"n/{i % 3}/x-{i}"
        if op == "add":         # short leases: some die by the clock, unreaped
            table.register(name, FAKE, credential="k", lease=1 + i % 4)
        elif op == "drop":
            table.unregister(name, credential="k")
        elif op == "tick":
            clock.now += 1
            if i % 2:
                table.expire()
        for pattern in ("**", "n/1/*") if op == "walk" else ():
            walked, cursor = [], None
            for _ in range(100):
                page, cursor = table.page(pattern, cursor, limit=1 + i % 4)
                walked += [r.name for r in page]
                if cursor is None:
                    break
            assert walked == [r.name for r in table.names(pattern)]


def test_the_sorted_index_drops_removed_names_and_takes_them_back() -> None:
    index, held = SortedNames(), set()
    for turn in range(4):       # turns 2 and 3 remove most: compaction, then names back
        for i in range(300):
            index.add(f"s/{i:03d}")
            held.add(f"s/{i:03d}")
        for i in range(0, 300, 10 if turn < 2 else 1):
            if i % 7:
                held.discard(f"s/{i:03d}")
                index.discard(f"s/{i:03d}")
        assert list(index.after(None, "s/", held)) == sorted(held)
        assert list(index.after("s/150", "s/", held)) == sorted(n for n in held
                                                                 if n > "s/150")


@pytest.fixture
def dispatcher_with_10k() -> Iterator[posa.Dispatcher]:
    with posa.Dispatcher("tcp://127.0.0.1:0") as dispatcher:
        for i in range(10_000):     # 10k names, 2 to 6 KiB of meta each: ~40 MB in all
            dispatcher.registry.register(f"walk/{i:05d}", FAKE, credential="owner",
                                         lease=600, meta={"pad": "m" * (2048 + i % 4096)})
        yield dispatcher


def test_a_walk_of_10k_names_lists_each_once_while_others_come_and_go(
        dispatcher_with_10k: posa.Dispatcher) -> None:
    dispatcher = dispatcher_with_10k
    stop, churning = threading.Event(), threading.Event()
    churned = [0]

    def churn() -> None:        # names between the walked ones, registered and removed
        registry = dispatcher.registry
        for turn in range(1_000_000):
            if stop.is_set():
                return
            name = f"walk/{turn * 7919 % 10_000:05d}-churn"
            registry.register(name, FAKE, credential="churn", lease=600)
            if turn % 2:
                registry.unregister(name, credential="churn")
            churned[0] += 1
            if turn == 100:
                churning.set()
    sender = Sender("", resolve=resolver(None, pins={DISPATCHER: dispatcher.address}))
    worker = threading.Thread(target=churn, daemon=True)
    worker.start()
    assert churning.wait(60), "the churning thread did not start"
    before = churned[0]
    try:
        walked: list[str] = []
        cursor, pages = None, 0
        while pages < 10_000:
            body = sender.request(DISPATCHER, OPS.request("names", pattern="walk/**",
                                                          after=cursor), timeout=30).body
            pages += 1
            assert len(msgpack.packb(body["page"])) <= PAGE_BYTES
            assert len(body["page"]) <= PAGE_ENTRIES
            walked += [r["name"] for r in body["page"]]
            cursor = body["next"]
            if cursor is None:
                break
    finally:
        stop.set()
        worker.join(30)
        sender.close()
    assert churned[0] > before and pages > 30   # churn while ~40 MB of names went by
    assert walked == sorted(set(walked))        # in order, none twice
    stable = [name for name in walked if not name.endswith("-churn")]
    assert stable == [f"walk/{i:05d}" for i in range(10_000)]   # none lost


def test_a_group_of_many_members_is_listed_page_by_page() -> None:
    members = [f"grp/m-{i:03d}" for i in range(300)]    # 300 × 60 KiB: over the frame limit
    with posa.Dispatcher("tcp://127.0.0.1:0") as dispatcher, \
         posa.RegistryClient(dispatcher.address) as reg, \
         posa.Peer("grp/receiver", registry=reg, listen="tcp://127.0.0.1:0",
                   aliases=members) as receiver, \
         posa.Peer("sender/one", registry=reg, listen="tcp://127.0.0.1:0") as sender:
        for name in members:
            dispatcher.registry.register(name, [receiver.address], credential="grp",
                                         lease=600, meta=BULK)
        assert sender.send("grp/**", "to all", timeout=60) == 301
        got = sorted(receiver.receive(timeout=30).recipient for _ in range(301))
        assert got == sorted([*members, "grp/receiver"])
        with posa.Client(registry=reg) as client:      # a service listing walks pages too
            assert client.servers("grp") == []


@pytest.mark.parametrize("name", ["posa/dispatcher", "posa/dispatcher/x", "posa"])
def test_posa_names_cannot_be_squatted(name: str) -> None:
    proc, address = start_dispatcher()
    try:
        pinned = Sender("", resolve=resolver(None, pins={DISPATCHER: address}))
        try:
            node = pinned.request(DISPATCHER, OPS.request("ping"), timeout=20).body["node"]
        finally:
            pinned.close()
        with posa.RegistryClient(address, cache=False) as reg:
            with pytest.raises(posa.Unauthorized, match=rf"^'{name}' is reserved: names "
                               r"under 'posa/' are taken only by posa's own services"):
                reg.register(name, FAKE, credential="squatter")
            assert reg.lookup(DISPATCHER).addresses == (address,)   # the real one holds it
        # looked up by name, not pinned: the real dispatcher answers
        done = run_cli("request", DISPATCHER, '{"op": "ping"}', "--dispatcher", address,
                       "--json")
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout)["node"] == node
    finally:
        proc.close()


def test_a_posa_service_registers_a_posa_name_with_a_reserved_key(keyring: Keyring) -> None:
    with posa.Dispatcher("tcp://127.0.0.1:0", reserved_keys=["svc"],
                         authenticator=HmacAuthenticator(
                             keyring, key_id="posa/dispatcher")) as dispatcher:
        def client(key: str) -> posa.RegistryClient:
            return posa.RegistryClient(dispatcher.address, cache=False,
                                       authenticator=HmacAuthenticator(keyring, key_id=key))
        with client("svc") as svc, client("alice") as alice:
            assert svc.register("posa/queues/q1", FAKE, credential="q").epoch == 1
            with pytest.raises(posa.Unauthorized, match="key 'alice' is not one the "
                               "dispatcher was started with"):
                alice.register("posa/queues/q2", FAKE, credential="q")
            with pytest.raises(posa.Unauthorized, match="registered with another credential"):
                svc.register(DISPATCHER, FAKE, credential="q")  # held by the dispatcher


def test_pages_gather_a_federation_each_name_once_in_order() -> None:
    with posa.Dispatcher("tcp://127.0.0.1:0", node="b") as b, \
         posa.Dispatcher("tcp://127.0.0.1:0", node="a", peers=[b.address]) as a:
        for i in range(40):         # interleaved: even names at a, odd ones at b
            (a if i % 2 == 0 else b).registry.register(f"fed/{i:02d}", FAKE,
                                                       credential="f", lease=600)
        b.registry.register("fed/00", ["tcp://127.0.0.1:8"], credential="f", lease=600)
        with posa.RegistryClient(a.address, cache=False) as reg:
            pages = list(reg.pages("fed/**", limit=3))
            assert all(len(page) <= 3 for page in pages) and len(pages) >= 14
            walked = [r for page in pages for r in page]
            assert [r.name for r in walked] == [f"fed/{i:02d}" for i in range(40)]
            assert walked[0].addresses == tuple(FAKE)      # the nearest one's wins
            assert [r.addresses for r in reg.names(DISPATCHER)] == [a.addresses]


def test_services_are_listed_page_by_page() -> None:
    with posa.Dispatcher("tcp://127.0.0.1:0") as dispatcher:
        for i in range(2500):       # three services, and names that serve none
            meta = {"service": f"svc/{i % 3}"} if i % 5 else {"note": "not a server"}
            dispatcher.registry.register(f"svc/{i % 3}/srv-{i:04d}", FAKE, credential="s",
                                         lease=600, meta=meta)
        sender = Sender("", resolve=resolver(None, pins={DISPATCHER: dispatcher.address}))
        try:
            first = sender.request(DISPATCHER, OPS.request("services"), timeout=20).body
        finally:
            sender.close()
        assert sum(len(names) for names in first["services"].values()) == PAGE_ENTRIES
        assert isinstance(first["next"], str)
        with posa.RegistryClient(dispatcher.address, cache=False) as reg:
            services = reg.services()
        assert sorted(services) == ["svc/0", "svc/1", "svc/2"]
        assert sorted(n for names in services.values() for n in names) == sorted(
            f"svc/{i % 3}/srv-{i:04d}" for i in range(2500) if i % 5)
