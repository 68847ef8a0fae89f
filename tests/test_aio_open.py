"""Making a peer from an event loop never blocks the loop: ``posa.aio.Peer.open``
and the gateway's peers register on a worker thread while the loop goes on.
The dispatcher is SIGSTOPped, so a registration cannot finish until SIGCONT;
the loop must keep turning meanwhile (with a blocking constructor it would
stand still until the registration gave up)."""
from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Iterator
from typing import Any

import pytest

import posa
import posa.aio
from posa.gateway.core import Gateway
from posa.gateway.tokens import Principal
from tests.support import Proc, sigstop, start_dispatcher

pytestmark = pytest.mark.timeout(120)
TURNS = 50


@pytest.fixture
def dispatcher_proc() -> Iterator[tuple[Proc, str]]:
    proc, address = start_dispatcher()
    try:
        yield proc, address
    finally:
        os.kill(proc.popen.pid, signal.SIGCONT)
        proc.close()


async def made_while_stopped(proc: Proc, making: asyncio.Future[Any]) -> Any:
    """Stop the dispatcher, let ``making`` start, turn the loop ``TURNS`` times
    (asserting ``making`` still waits: the loop was free), resume the dispatcher
    and return what ``making`` made."""
    turns = 0
    while turns < TURNS and not making.done():
        await asyncio.sleep(0.001)
        turns += 1
    assert not making.done(), f"finished while the dispatcher was stopped: {making}"
    assert turns == TURNS
    os.kill(proc.popen.pid, signal.SIGCONT)
    return await asyncio.wait_for(making, 60)


def test_aio_peer_open_registers_without_blocking_the_loop(
        dispatcher_proc: tuple[Proc, str]) -> None:
    proc, address = dispatcher_proc

    async def main() -> None:
        with posa.RegistryClient(address, timeout=60.0, cache=False) as registry:
            sigstop(proc.popen.pid)
            making = asyncio.ensure_future(posa.aio.Peer.open(
                "aio/opened", registry=registry, listen="tcp://127.0.0.1:0",
                handler=lambda msg: {"echo": msg.body}))
            peer = await made_while_stopped(proc, making)
            async with peer:
                assert registry.lookup("aio/opened").addresses == (peer.address,)
                with posa.Peer("aio/caller", registry=registry) as caller:
                    assert caller.request("aio/opened", 7, timeout=10) == {"echo": 7}
    asyncio.run(main())


def test_aio_peer_open_that_fails_leaves_no_thread() -> None:
    async def main() -> None:
        with posa.LocalRegistry() as registry:
            with posa.Peer("aio/taken", registry=registry):
                with pytest.raises(posa.PosaError):
                    await posa.aio.Peer.open("aio/taken", registry=registry)
    asyncio.run(main())         # the thread fixture fails the test if one is left


def test_the_gateway_makes_its_peers_without_blocking_the_loop(
        dispatcher_proc: tuple[Proc, str]) -> None:
    proc, address = dispatcher_proc

    async def main() -> None:
        with posa.RegistryClient(address, timeout=60.0, cache=False) as registry:
            gateway = Gateway(registry)     # its own peer, before the loop serves
            try:
                sigstop(proc.popen.pid)
                registering = asyncio.ensure_future(
                    gateway.hosting.register("app/hosted", "tester", None, 30.0))
                hosted = await made_while_stopped(proc, registering)
                assert hosted.peer is not None
                assert registry.lookup("app/hosted").addresses == (hosted.peer.address,)

                sigstop(proc.popen.pid)
                who = Principal("someone")
                first = asyncio.ensure_future(gateway.peer_for(who))
                second = asyncio.ensure_future(gateway.peer_for(who))
                peer = await made_while_stopped(proc, first)
                assert await second is peer         # one peer per identity
                assert peer.name.startswith("someone/gw-")
            finally:
                await gateway.close()
    asyncio.run(main())


def test_aio_server_open_registers_without_blocking_the_loop(
        dispatcher_proc: tuple[Proc, str]) -> None:
    proc, address = dispatcher_proc

    async def main() -> None:
        with posa.RegistryClient(address, timeout=60.0, cache=False) as registry:
            sigstop(proc.popen.pid)

            async def double(body: Any) -> Any:
                return body * 2

            making = asyncio.ensure_future(
                posa.aio.Server.open("svc/opened", double, registry=registry))
            server = await made_while_stopped(proc, making)
            async with server, posa.aio.Client(registry=registry) as client:
                assert await client.call("svc/opened", 21, timeout=10) == 42
    asyncio.run(main())
