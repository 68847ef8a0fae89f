"""Objects with a thread pool, closed in a forked child, leave the pool to the
parent: its threads are not in the child, and its lock may have been held at
the fork by a thread of the parent handing work to the pool (the asyncio
proxies, a ``Gatherer``, a ``Dispatcher``, a ``Slave``, the gateway's event
streams). Each test holds the pool's lock in a thread of the parent at the
fork; the child's close must return, and the parent's object works on."""
from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import Any

import pytest

import posa
from posa.channel.aio import AsyncPublisher
from posa.channel.service import EventChannel
from posa.channel.subscriber import Subscriber
from posa.delivery.gather import Gatherer
from posa.gateway.streams import _Adopted
from posa.naming.registration import resolver
from posa.runtime.pools import Pool
from posa.work.masterslave import Master
from posa.work.slave import Slave
from tests.forking import Forked, held_by_a_thread

pytestmark = pytest.mark.timeout(60)

CLOSE_DEADLINE = 5.0    # s: far more than a child's close needs
CHANNEL = "events/fork-pool"
MEMBERS = ("lab/fork-gather/a", "lab/fork-gather/b")


def test_a_pool_shut_down_in_a_forked_child_is_left_to_the_parent() -> None:
    pool = Pool(1, thread_name_prefix="posa-test")

    def shut_down_in_child() -> None:
        assert pool.inherited
        pool.shutdown()

    try:
        assert pool.submit(lambda: 1).result(10.0) == 1
        assert not pool.inherited
        with held_by_a_thread(pool._shutdown_lock), Forked(shut_down_in_child) as child:
            assert child.outcome(CLOSE_DEADLINE) == "ok"
        assert pool.submit(lambda: 2).result(10.0) == 2
    finally:
        pool.shutdown()
    assert pool._shutdown


def test_a_child_closes_an_inherited_async_publisher(registry: posa.LocalRegistry) -> None:
    """The proxy's close runs on a thread of the child's own, in the child's loop."""
    async def main() -> str:
        async with AsyncPublisher(CHANNEL, registry=registry) as pub:
            await pub.publish("t", 1)
            await pub.flush(10)
            with held_by_a_thread(pub._worker._shutdown_lock), \
                    Forked(lambda: asyncio.run(pub.close())) as child:
                outcome = child.outcome(CLOSE_DEADLINE)
            await pub.flush(10)                 # the parent's worker goes on
            await pub.publish("t", 2)
            await pub.flush(10)
            return outcome

    with EventChannel(CHANNEL, registry=registry):
        assert asyncio.run(main()) == "ok"


def test_a_child_closes_an_inherited_event_stream(registry: posa.LocalRegistry) -> None:
    """The gateway's subscriber of an SSE stream (``close_now``)."""
    async def main() -> str:
        sub = _Adopted(Subscriber(CHANNEL, registry=registry))
        try:
            with held_by_a_thread(sub._worker._shutdown_lock), \
                    Forked(lambda: asyncio.run(sub.close_now())) as child:
                outcome = child.outcome(CLOSE_DEADLINE)
            with posa.channel.publisher.Publisher(CHANNEL, registry=registry) as pub:
                pub.publish("t", 1)
                pub.flush(10)
            event = await sub.receive(timeout=10)   # on the parent's worker
            assert event.body == 1
            return outcome
        finally:
            await sub.close_now()

    with EventChannel(CHANNEL, registry=registry):
        assert asyncio.run(main()) == "ok"


def test_a_child_closes_an_inherited_gatherer(registry: posa.LocalRegistry) -> None:
    members = [posa.Peer(name, registry=registry, listen="tcp://127.0.0.1:0")
               for name in MEMBERS]
    try:
        for member in members:
            member.serve(lambda msg: msg.body)
        with Gatherer(resolver(registry), threads=2) as gatherer:
            assert gatherer.gather(MEMBERS, "one", timeout=10.0).complete
            pool: Any = gatherer._pool
            with held_by_a_thread(pool._shutdown_lock), Forked(gatherer.close) as child:
                assert child.outcome(CLOSE_DEADLINE) == "ok"
            gathered = gatherer.gather(MEMBERS, "two", timeout=10.0)
            assert gathered.answers == {name: "two" for name in MEMBERS}
    finally:
        for member in members:
            member.close()


@pytest.mark.parametrize("state", [False, True], ids=["memory", "state-file"])
def test_a_child_closes_an_inherited_dispatcher(tmp_path: Path, state: bool) -> None:
    """No snapshot from the child (the state file and the reactor are the parent's)."""
    path = str(tmp_path / "dispatcher.state") if state else None
    with posa.Dispatcher("tcp://127.0.0.1:0", state=path) as dispatcher, \
            posa.RegistryClient(dispatcher.address, cache=False) as reg:
        reg.register("lab/fork-dispatcher", ["tcp://127.0.0.1:9"], credential="c" * 16,
                     lease=60.0)
        pool: Any = dispatcher._workers
        with held_by_a_thread(pool._shutdown_lock), Forked(dispatcher.close) as child:
            assert child.outcome(CLOSE_DEADLINE) == "ok"
        assert reg.lookup("lab/fork-dispatcher").addresses == ("tcp://127.0.0.1:9",)
        assert not pool._shutdown                   # (the parent's to shut down)


def test_a_child_closes_an_inherited_slave(registry: posa.LocalRegistry) -> None:
    with Slave("work/fork-pool", lambda part: [x * 2 for x in part], registry=registry,
               listen="tcp://127.0.0.1:0") as slave, \
            Master("work/*", registry=registry) as master:
        assert master.run([1, 2]) == [2, 4]
        pool: Any = slave._pool
        with held_by_a_thread(pool._shutdown_lock), Forked(slave.close) as child:
            assert child.outcome(CLOSE_DEADLINE) == "ok"
        assert master.run([3]) == [6]               # the parent's workers serve on


@pytest.mark.parametrize("held", [False, True], ids=["idle", "lock-held"])
def test_work_submitted_in_a_forked_child_runs_on_threads_of_the_childs_own(
        held: bool) -> None:
    """The parent's workers are not in the child (an idle one, counted as idle,
    would be handed the work there, which then never runs) and a thread of the
    parent may hold the pool's lock at the fork: the child's work runs on a pool
    of its own, which the child's shutdown waits for; the parent's pool goes on."""
    pool = Pool(1, thread_name_prefix="posa-test")

    def work_in_child() -> None:
        futures = [pool.submit(pow, n, 2) for n in range(3)]
        assert [future.result(CLOSE_DEADLINE) for future in futures] == [0, 1, 4]
        assert list(pool.map(str, [1, 2])) == ["1", "2"]
        pool.shutdown()
        assert pool.here()._shutdown

    try:
        assert pool.submit(lambda: 1).result(10.0) == 1
        with (held_by_a_thread(pool._shutdown_lock) if held else contextlib.nullcontext()), \
                Forked(work_in_child) as child:
            assert child.outcome(CLOSE_DEADLINE) == "ok"
        assert pool.submit(lambda: 2).result(10.0) == 2
        assert not pool._shutdown
    finally:
        pool.shutdown()
