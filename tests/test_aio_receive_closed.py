"""``posa.aio.Peer.receive`` ends with ``Closed`` once the peer is closed, as
``posa.Peer.receive`` does: a receive waiting when the peer closes, and every
receive after, after the messages that came before the close."""
from __future__ import annotations

import asyncio

import pytest

import posa
import posa.aio

WAIT = 20.0


def test_a_receive_waiting_at_close_and_every_later_one_raise_closed() -> None:
    async def main() -> None:
        peer = posa.aio.Peer("aio-receive-closed", registry=posa.LocalRegistry())
        waiting = asyncio.ensure_future(peer.receive())
        await asyncio.sleep(0)          # (the receive is waiting on the queue)
        await peer.close()
        with pytest.raises(posa.Closed):
            await asyncio.wait_for(waiting, WAIT)
        for timeout in (None, 1.0, 0):
            with pytest.raises(posa.Closed):
                await asyncio.wait_for(peer.receive(timeout), WAIT)
    asyncio.run(main())


def test_messages_that_came_before_the_close_are_received_first() -> None:
    async def main() -> None:
        registry = posa.LocalRegistry()
        async with posa.aio.Peer("aio-closed-sender", registry=registry) as sender:
            peer = posa.aio.Peer("aio-closed-receiver", registry=registry)
            for n in range(3):
                await sender.send("aio-closed-receiver", n)
            await sender.flush(WAIT)
            await peer.close()
            got = [(await asyncio.wait_for(peer.receive(), WAIT)).body for _ in range(3)]
            assert got == [0, 1, 2]
            with pytest.raises(posa.Closed):
                await asyncio.wait_for(peer.receive(), WAIT)
    asyncio.run(main())
