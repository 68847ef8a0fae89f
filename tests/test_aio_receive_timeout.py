"""``posa.aio.Peer.receive(timeout)`` takes a timeout as ``posa.Peer.receive``
does (tests/test_peer_settings.py): None, or one longer than a thread can wait,
waits until a message comes; 0 or less does not wait, and a message already
there is taken; ``nan``, or what is not a number, is refused with a
``ValueError`` that says what is taken.

Before: ``receive(0)`` (or a negative timeout) raised ``Timeout`` even with a
message waiting (``asyncio.wait_for`` cancelled the read before it ran);
``receive(nan)`` raised ``Timeout`` at once instead of refusing ``nan``;
``receive("5")`` raised a bare ``TypeError``.
"""
from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable, Callable

import pytest

import posa
import posa.aio
from posa.delivery.budget import LONGEST

pytestmark = pytest.mark.timeout(60)

TCP = "tcp://127.0.0.1:0"
WAIT = 20.0
SAYS = r"receive's timeout must be a number of seconds or None \(wait until a message comes\)"


def with_peers(main: Callable[[posa.Peer, posa.aio.Peer], Awaitable[None]]) -> None:
    """Run ``main(sender, receiver)``: a ``posa.Peer`` and a ``posa.aio.Peer`` with
    no handler (what is sent to it waits for ``receive``)."""
    async def run(reg: posa.LocalRegistry, a: posa.Peer) -> None:
        async with posa.aio.Peer("aiorecv/b", registry=reg, listen=TCP) as b:
            await main(a, b)

    with posa.LocalRegistry() as reg, posa.Peer("aiorecv/a", registry=reg, listen=TCP) as a:
        asyncio.run(run(reg, a))


async def delivered(a: posa.Peer, body: object) -> None:
    """Send ``body`` to the receiver and wait until it is in its queue: acknowledged
    (``flush`` on the thread that sent), so handed over on the receiver's reactor thread,
    which put it on the loop before ``flush``'s answer comes to the loop."""
    def send() -> None:
        a.send("aiorecv/b", body, timeout=WAIT)
        a.flush(WAIT)

    await asyncio.to_thread(send)


@pytest.mark.parametrize("timeout", [0, 0.0, -1.0, -math.inf])
def test_no_wait_takes_a_message_already_there(timeout: float) -> None:
    async def main(a: posa.Peer, b: posa.aio.Peer) -> None:
        await delivered(a, "here")
        assert (await b.receive(timeout)).body == "here"
        with pytest.raises(posa.Timeout, match=r"no message for 'aiorecv/b'"):
            await b.receive(timeout)

    with_peers(main)


@pytest.mark.parametrize("timeout", [WAIT, LONGEST, 1e308, math.inf, None])
def test_a_wait_gets_the_message(timeout: float | None) -> None:
    async def main(a: posa.Peer, b: posa.aio.Peer) -> None:
        waiting = asyncio.ensure_future(b.receive(timeout))
        await delivered(a, "came")
        assert (await asyncio.wait_for(waiting, WAIT)).body == "came"

    with_peers(main)


@pytest.mark.parametrize("timeout", [math.nan, "5", b"5"], ids=["nan", "str", "bytes"])
def test_a_timeout_that_is_no_number_is_refused_saying_what_is_taken(
        timeout: object) -> None:
    async def main(a: posa.Peer, b: posa.aio.Peer) -> None:
        await delivered(a, "kept")
        with pytest.raises(ValueError, match=SAYS) as caught:
            await b.receive(timeout)  # type: ignore[arg-type]
        assert f"not {timeout!r}" in str(caught.value)
        assert (await b.receive(WAIT)).body == "kept"      # nothing taken

    with_peers(main)


@pytest.mark.parametrize("timeout", [math.nan, "5", b"5"], ids=["nan", "str", "bytes"])
def test_no_number_is_refused_in_the_same_words_as_by_a_peer(timeout: object) -> None:
    """The thread-blocking ``posa.Peer.receive`` and the awaitable one agree (the
    blocking one raised a bare ``TypeError`` for what is no number)."""
    async def main(a: posa.Peer, b: posa.aio.Peer) -> None:
        with pytest.raises(ValueError) as awaited:
            await b.receive(timeout)  # type: ignore[arg-type]
        with pytest.raises(ValueError) as blocking:
            a.receive(timeout)  # type: ignore[arg-type]
        assert str(awaited.value) == str(blocking.value)

    with_peers(main)
