"""The registry contract: one suite every registry passes.

``LocalRegistry`` (embedded), ``RegistryClient`` (a dispatcher's registry over
the network), ``NatsRegistry`` (a JetStream key-value bucket on a real
nats-server) and ``RegistryClient`` of a dispatcher keeping its registry in such
a bucket (``--store``) must answer alike: the same owners, epochs, leases, patterns,
watches and errors (``posa.naming.registration``). Time is real (leases of a
fraction of a second where expiry is the point), waits are on events or
conditions with deadlines. The table's own unit tests, on a fake clock, are in
tests/test_registry.py.
"""
from __future__ import annotations

import itertools
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import posa
from posa.naming.registration import Registration, Registry
from tests.natsserver import NatsCluster
from tests.support import wait_until

pytestmark = pytest.mark.timeout(120)

KINDS = ["local", "dispatcher", "nats", "dispatcher-on-nats"]
ADDR = ["tcp://127.0.0.1:7001"]
SHORT = 0.4         # a lease that runs out during the test
_buckets = itertools.count()


@pytest.fixture(scope="module")
def nats_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with NatsCluster(Path(tmp_path_factory.mktemp("nats")), size=1) as cluster:
        yield cluster.urls


def make_registry(kind: str, request: pytest.FixtureRequest) -> Iterator[Registry]:
    if kind == "local":
        with posa.LocalRegistry() as local:
            yield local
    elif kind == "dispatcher":
        from posa.dispatch.dispatcher import Dispatcher
        with Dispatcher("tcp://127.0.0.1:0") as dispatcher, \
                posa.RegistryClient(dispatcher.address) as client:
            yield client
    elif kind == "nats":
        url = request.getfixturevalue("nats_url")
        from posa.naming.nats.registry import NatsRegistry
        with NatsRegistry(url, bucket=f"contract-{next(_buckets)}") as nats:
            yield nats
    else:                   # a dispatcher keeping its registry in a NATS bucket
        url = request.getfixturevalue("nats_url")
        from posa.dispatch.dispatcher import Dispatcher
        from posa.naming.nats.registry import NatsRegistry
        with NatsRegistry(url, bucket=f"contract-{next(_buckets)}") as store, \
                Dispatcher("tcp://127.0.0.1:0", registry=store) as dispatcher, \
                posa.RegistryClient(dispatcher.address) as client:
            yield client


@pytest.fixture(params=KINDS)
def reg(request: pytest.FixtureRequest) -> Iterator[Registry]:
    yield from make_registry(request.param, request)


class Recorder:
    """A watcher that keeps (name, epoch or None) and wakes waiters."""

    def __init__(self) -> None:
        self.events: list[tuple[str, int | None]] = []
        self.changed = threading.Condition()

    def __call__(self, name: str, registration: Registration | None) -> None:
        with self.changed:
            self.events.append((name, None if registration is None else registration.epoch))
            self.changed.notify_all()

    def wait_for(self, event: tuple[str, int | None], timeout: float = 15.0) -> None:
        with self.changed:
            assert self.changed.wait_for(lambda: event in self.events, timeout), \
                f"{event} not reported within {timeout} s; got {self.events}"


def test_implements_the_interface(reg: Registry) -> None:
    assert isinstance(reg, Registry)


def test_register_and_lookup(reg: Registry) -> None:
    made = reg.register("shop/cart", ADDR, credential="k", lease=30, meta={"weight": 2})
    found = reg.lookup("shop/cart")
    assert (made.name, made.addresses, made.epoch, made.lease) == ("shop/cart", tuple(ADDR),
                                                                   1, 30.0)
    assert (found.addresses, found.epoch, dict(found.meta)) == (tuple(ADDR), 1, {"weight": 2})
    assert 0 < found.expires_in <= 30.0


def test_unknown_and_malformed_names(reg: Registry) -> None:
    with pytest.raises(posa.NameNotFound, match="no live registration for 'ghost'"):
        reg.lookup("ghost")
    for call in (lambda: reg.lookup("bad//name"), lambda: reg.names("a/**/b"),
                 lambda: reg.register("/x", ADDR, credential="k"),
                 lambda: reg.renew("x/", credential="k"),
                 lambda: reg.unregister("a b", credential="k")):
        with pytest.raises(posa.InvalidName):
            call()


@pytest.mark.parametrize("kwargs, says", [
    ({"addresses": "tcp://127.0.0.1:1"}, "not a single string"),
    ({"addresses": []}, "needs 1 to"),
    ({"addresses": ["nowhere"]}, "is not a transport URI"),
    ({"lease": 0}, "lease"),
    ({"lease": float("nan")}, "lease"),
    ({"meta": {"x": object()}}, "msgpack"),
    ({"meta": {"x": b"0" * 70_000}}, "bytes"),
    ({"epoch": 0}, "epoch"),
])
def test_malformed_registrations_are_rejected(reg: Registry, kwargs: dict[str, Any],
                                              says: str) -> None:
    args: dict[str, Any] = {"addresses": ADDR, "credential": "k", **kwargs}
    with pytest.raises(posa.Rejected, match=says):
        reg.register("shop/cart", **args)


def test_a_name_belongs_to_its_credential(reg: Registry) -> None:
    reg.register("shop/cart", ADDR, credential="owner", lease=30)
    with pytest.raises(posa.Unauthorized, match="another credential"):
        reg.register("shop/cart", ["tcp://127.0.0.1:9"], credential="thief")
    with pytest.raises(posa.Unauthorized):
        reg.renew("shop/cart", credential="thief")
    with pytest.raises(posa.Unauthorized):
        reg.unregister("shop/cart", credential="thief")
    with pytest.raises(posa.Unauthorized):
        reg.register("shop/other", ADDR, credential="")
    assert reg.lookup("shop/cart").addresses == tuple(ADDR)


def test_unregister_frees_the_name_and_epochs_go_on(reg: Registry) -> None:
    reg.register("shop/cart", ADDR, credential="a", lease=30)
    reg.unregister("shop/cart", credential="a")
    reg.unregister("shop/cart", credential="a")         # nothing there: no error
    with pytest.raises(posa.NameNotFound):
        reg.lookup("shop/cart")
    assert reg.register("shop/cart", ADDR, credential="b", lease=30).epoch == 2


def test_epochs(reg: Registry) -> None:
    assert reg.register("n/x", ADDR, credential="k", lease=30).epoch == 1
    assert reg.register("n/x", ADDR, credential="k", lease=30).epoch == 2
    assert reg.register("n/x", ADDR, credential="k", epoch=7, lease=30).epoch == 7
    with pytest.raises(posa.StaleEpoch, match="epoch 7 is in force"):
        reg.register("n/x", ADDR, credential="k", epoch=6)
    again = reg.register("n/x", ["tcp://127.0.0.1:2"], credential="k", epoch=7, lease=30)
    assert (again.epoch, reg.lookup("n/x").addresses) == (7, ("tcp://127.0.0.1:2",))


def test_renew(reg: Registry) -> None:
    with pytest.raises(posa.NameNotFound, match="register it again"):
        reg.renew("n/none", credential="k")
    reg.register("n/x", ADDR, credential="k", lease=30)
    renewed = reg.renew("n/x", credential="k")
    assert (renewed.epoch, renewed.lease) == (1, 30.0) and 0 < renewed.expires_in <= 30.0


def test_an_unrenewed_registration_dies_and_its_epoch_survives(reg: Registry) -> None:
    reg.register("n/short", ADDR, credential="a", lease=SHORT)
    reg.register("n/long", ADDR, credential="a", lease=30)

    def gone() -> bool:
        try:
            reg.lookup("n/short")
        except posa.NameNotFound:
            return True
        return False
    wait_until(gone, 15.0, "the short lease ran out")
    assert [r.name for r in reg.names("n/*")] == ["n/long"]
    with pytest.raises(posa.NameNotFound):
        reg.renew("n/short", credential="a")
    assert reg.register("n/short", ADDR, credential="b", lease=30).epoch == 2


def test_names_by_pattern(reg: Registry) -> None:
    for name in ["site/a/r1", "site/a/r2", "site/b/r1", "site/b/deep/r9", "other/x",
                 "v1.2/ver.sion", "site/a.b/r1"]:
        reg.register(name, ADDR, credential="k", lease=30)
    listed: Callable[[str], list[str]] = lambda p: [r.name for r in reg.names(p)]
    assert listed("site/a/*") == ["site/a/r1", "site/a/r2"]
    assert listed("site/*/r1") == ["site/a.b/r1", "site/a/r1", "site/b/r1"]
    assert listed("site/b/**") == ["site/b/deep/r9", "site/b/r1"]
    assert listed("v1.2/**") == ["v1.2/ver.sion"]
    assert listed("site/a") == []
    assert len([n for n in listed("**") if not n.startswith("posa/")]) == 7  # a dispatcher's own
    assert reg.lookup("v1.2/ver.sion").name == "v1.2/ver.sion"


def test_pages_walk_every_name_once_in_order(reg: Registry) -> None:
    names = [f"p/{i:03d}" for i in range(25)]
    for name in names:
        reg.register(name, ADDR, credential="k", lease=30)
    pages = getattr(reg, "pages", None)
    assert pages is not None
    walked = [r.name for page in pages("p/*", limit=7) for r in page]
    assert walked == names


def test_watch_reports_changes_until_unsubscribed(reg: Registry) -> None:
    seen = Recorder()
    stop = reg.watch(seen)
    reg.register("w/a", ADDR, credential="k", lease=30)
    seen.wait_for(("w/a", 1))
    reg.register("w/a", ADDR, credential="k", lease=30)
    seen.wait_for(("w/a", 2))
    reg.unregister("w/a", credential="k")
    seen.wait_for(("w/a", None))
    reg.register("w/short", ADDR, credential="k", lease=SHORT)
    expire = getattr(reg, "expire", None)   # LocalRegistry reaps when asked (a timer's call)

    def reported() -> bool:
        if expire is not None:
            expire()
        with seen.changed:
            return ("w/short", None) in seen.events
    wait_until(reported, 15.0, "the death of w/short reported")
    stop()
    stop()
    reg.register("w/after", ADDR, credential="k", lease=30)
    marker = Recorder()
    stop_marker = reg.watch(marker)
    reg.register("w/marker", ADDR, credential="k", lease=30)
    marker.wait_for(("w/marker", 1))        # a later change arrived: w/after was not told
    stop_marker()
    assert all(name != "w/after" for name, _ in seen.events)
    assert seen.events.index(("w/a", 1)) < seen.events.index(("w/a", 2)) \
        < seen.events.index(("w/a", None))


def test_one_of_many_credentials_wins_a_name(reg: Registry) -> None:
    won, refused = [], []
    barrier = threading.Barrier(6)

    def claim(i: int) -> None:
        barrier.wait(10)
        try:
            won.append(reg.register("race/x", [f"tcp://127.0.0.1:{7000 + i}"],
                                    credential=f"c{i}", lease=30))
        except posa.Unauthorized:
            refused.append(i)
    threads = [threading.Thread(target=claim, args=(i,)) for i in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert (len(won), len(refused)) == (1, 5)
    assert reg.lookup("race/x").addresses == won[0].addresses


def test_a_closed_registry_refuses_calls(request: pytest.FixtureRequest) -> None:
    for kind in KINDS:
        made = make_registry(kind, request)
        registry = next(made)
        registry.close()
        with pytest.raises(posa.Closed):
            registry.register("x/y", ADDR, credential="k")
        with pytest.raises(posa.Closed):
            registry.lookup("x/y")
        registry.close()                    # idempotent
        made.close()
