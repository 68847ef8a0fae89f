"""``posa.aio.Peer``'s timeouts go through the one check of the delivery layer
(``posa.delivery.budget.seconds``), as ``posa.Peer``'s do
(tests/test_timeouts_checked.py): ``nan``, a negative or infinite timeout, or one
that is not a number is refused with a ``ValueError`` that says what is taken;
one over ``LONGEST`` is refused as *too large*. Nothing is sent, and the next
good call goes through.

Before: ``send`` and ``flush`` made their own deadlines: a negative or ``nan``
send timeout was taken (the message sent), ``send(timeout="5")`` raised a bare
``TypeError``, ``flush`` took any timeout."""
from __future__ import annotations

import asyncio
import math
from typing import Any

import pytest

import posa
import posa.aio
from posa.delivery.budget import LONGEST
from posa.wire.codec import Message

pytestmark = pytest.mark.timeout(60)

TCP = "tcp://127.0.0.1:0"
WAIT = 20.0
NO_WAITS = [math.nan, -1.0, -math.inf, math.inf, "5", None]
NO_WAIT_IDS = ["nan", "negative", "-inf", "inf", "str", "None"]
CALLS = ["send", "flush", "request", "group"]


def refused(call: str, timeout: Any) -> tuple[str, list[object]]:
    """The error of ``call`` with ``timeout`` on a ``posa.aio.Peer`` whose stream to
    the receiver is open, once the next good request went through; and what the
    receiver got."""
    seen: list[object] = []

    def echo(msg: Message) -> object:
        seen.append(msg.body)
        return msg.body

    async def main(reg: posa.LocalRegistry) -> str:
        async with posa.aio.Peer("checked/a", registry=reg, listen=TCP) as a:
            assert await a.request("checked/b", "known", timeout=WAIT) == "known"
            calls: dict[str, Any] = {
                "send": lambda: a.send("checked/b", "refused", timeout=timeout),
                "flush": lambda: a.flush(timeout=timeout),
                "request": lambda: a.request("checked/b", "refused", timeout=timeout),
                "group": lambda: a.send("checked/*", "refused", timeout=timeout),
            }
            with pytest.raises(ValueError) as caught:
                await calls[call]()
            assert await a.request("checked/b", "next", timeout=WAIT) == "next"
            return str(caught.value)

    with posa.LocalRegistry() as reg, \
            posa.Peer("checked/b", registry=reg, listen=TCP, handler=echo):
        return asyncio.run(main(reg)), seen


@pytest.mark.parametrize("timeout", NO_WAITS, ids=NO_WAIT_IDS)
@pytest.mark.parametrize("call", CALLS)
def test_a_timeout_that_is_no_wait_is_refused_saying_what_is_taken(
        call: str, timeout: object) -> None:
    said, seen = refused(call, timeout)
    assert "timeout must be a finite number of seconds from 0 to" in said
    assert f"not {timeout!r}" in said
    assert "refused" not in seen and seen[-1] == "next"


@pytest.mark.parametrize("call", CALLS)
def test_a_timeout_longer_than_any_wait_is_refused_as_too_large(call: str) -> None:
    said, seen = refused(call, 1e308)
    assert f"timeout of 1e+308 s is too large: at most {LONGEST:.0f} s" in said
    assert "finite" not in said
    assert "refused" not in seen


def test_the_edges_are_taken() -> None:
    """0 (no wait: tried once) and ``LONGEST`` itself are timeouts."""
    async def main(reg: posa.LocalRegistry) -> None:
        async with posa.aio.Peer("checked/c", registry=reg, listen=TCP) as c:
            assert await c.request("checked/d", "long", timeout=LONGEST) == "long"
            assert await c.send("checked/d", "sent", timeout=WAIT) == 1
            await c.flush(timeout=LONGEST)
            assert await c.send("checked/d", "once", timeout=0) == 1
            await c.flush(timeout=WAIT)

    with posa.LocalRegistry() as reg, \
            posa.Peer("checked/d", registry=reg, listen=TCP, handler=lambda m: m.body):
        asyncio.run(main(reg))
