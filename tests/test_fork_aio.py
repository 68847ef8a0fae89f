"""``posa.aio``'s Peer, Client and Server, and the gateway, closed in a forked child,
close the child's copies only: their worker threads, the pools' locks and the event
loop are the parent's. Each test holds the pools' locks (and those of the loop's
default executor) in threads of the parent at the fork; the child's close, in a
loop of its own, must return, and the parent's objects work on.

Before: the child's close handed the close to the parent's worker on the parent's
loop (it waited for ever for the pool's lock, or failed as attached to a different
loop); the gateway closed its registries on the parent's loop."""
from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from typing import Any

import pytest

import posa
import posa.aio
from posa.gateway.core import Gateway
from posa.gateway.tokens import ANONYMOUS
from tests.forking import Forked, held_by_a_thread

pytestmark = pytest.mark.timeout(60)

CLOSE_DEADLINE = 5.0    # s: far more than a child's close needs
WAIT = 20.0
TCP = "tcp://127.0.0.1:0"
ECHO = "lab/fork-aio-echo"
SERVICE = "lab/fork-aio-service"
HOSTED = "lab/fork-aio-hosted"


@pytest.fixture
def registry() -> Iterator[posa.LocalRegistry]:
    with posa.LocalRegistry() as reg, \
            posa.Peer(ECHO, registry=reg, listen=TCP, handler=lambda m: m.body), \
            posa.Server(SERVICE, lambda body: body, registry=reg, listen=TCP):
        yield reg


@contextlib.contextmanager
def all_held(*locks: Any) -> Iterator[None]:
    """Every one of ``locks`` held by a thread of its own for the block."""
    with contextlib.ExitStack() as stack:
        for lock in locks:
            stack.enter_context(held_by_a_thread(lock))
        yield


def closed_in_a_child(close: Any, *locks: Any) -> str:
    """What became of ``asyncio.run(close())`` in a child forked while ``locks``
    were held by threads of the parent."""
    with all_held(*locks), Forked(lambda: asyncio.run(close())) as child:
        return child.outcome(CLOSE_DEADLINE)


def test_a_child_closes_an_inherited_aio_peer(registry: posa.LocalRegistry) -> None:
    async def main() -> None:
        async with await posa.aio.Peer.open("lab/fork-aio-peer", registry=registry,
                                            listen=TCP) as peer:
            assert await peer.request(ECHO, "one", timeout=WAIT) == "one"
            await peer.send(ECHO, "sent", timeout=WAIT)
            worker: Any = peer._worker
            assert closed_in_a_child(peer.close, worker._shutdown_lock) == "ok"
            assert await peer.request(ECHO, "two", timeout=WAIT) == "two"
            assert peer._worker is worker and not worker._shutdown
            assert registry.lookup("lab/fork-aio-peer").name == "lab/fork-aio-peer"

    asyncio.run(main())


def test_a_child_closes_an_inherited_aio_client(registry: posa.LocalRegistry) -> None:
    async def main() -> None:
        async with posa.aio.Client(registry=registry, timeout=WAIT) as client:
            assert await client.call(SERVICE, "one") == "one"
            worker: Any = client._worker
            assert closed_in_a_child(client.close, worker._shutdown_lock) == "ok"
            assert await client.call(SERVICE, "two") == "two"
            assert client._worker is worker and not worker._shutdown

    asyncio.run(main())


def test_a_child_closes_an_inherited_aio_server(registry: posa.LocalRegistry) -> None:
    """A plain handler's workers, the peer's worker and the loop's executor."""
    async def main() -> None:
        server = await posa.aio.Server.open("lab/fork-aio-server", lambda body: body,
                                            registry=registry, workers=2)
        try:
            async with posa.aio.Client(registry=registry, timeout=WAIT) as client:
                assert await client.call("lab/fork-aio-server", "one") == "one"
                await asyncio.get_running_loop().run_in_executor(None, lambda: None)
                loop: Any = asyncio.get_running_loop()
                pool: Any = server._pool
                outcome = closed_in_a_child(
                    server.close, pool._shutdown_lock, server.peer._worker._shutdown_lock,
                    loop._default_executor._shutdown_lock)
                assert outcome == "ok"
                assert await client.call("lab/fork-aio-server", "two") == "two"
                assert server._pool is not None and server._pool is pool
                assert not pool._shutdown
        finally:
            await server.close()

    asyncio.run(main())


def test_a_child_closes_an_inherited_gateway(registry: posa.LocalRegistry) -> None:
    """Its hosted name, peers, client and registries: the child's copies, on the
    child's loop; the parent's gateway serves on."""
    async def main() -> None:
        gateway = Gateway(registry, listen=TCP)
        try:
            peer = await gateway.peer_for(ANONYMOUS)
            client = await gateway.client_for(ANONYMOUS)
            assert await peer.request(ECHO, "one", timeout=WAIT) == "one"
            assert await client.call(SERVICE, "one") == "one"
            hosted = await gateway.hosting.register(HOSTED, "owner", None, 30.0)
            gateway._registries["key"] = posa.LocalRegistry()     # (as keys make)
            await gateway.blocking(lambda: None)
            loop: Any = asyncio.get_running_loop()
            assert hosted.peer is not None
            workers: list[Any] = [peer._worker, client._worker, hosted.peer._worker,
                                  loop._default_executor]
            outcome = closed_in_a_child(gateway.close,
                                        *(w._shutdown_lock for w in workers))
            assert outcome == "ok"
            assert await peer.request(ECHO, "two", timeout=WAIT) == "two"
            assert await client.call(SERVICE, "two") == "two"
            assert registry.lookup(HOSTED).name == HOSTED
            assert not any(w._shutdown for w in workers)
        finally:
            await gateway.close()

    asyncio.run(main())
