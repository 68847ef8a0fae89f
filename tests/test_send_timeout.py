"""A send's timeout must be a finite number of seconds: ``nan`` or an infinity
is refused with a ``ValueError`` that says so, before anything is sent (a nan
deadline was never passed by the wait for room in a full window: the send
blocked for ever), and the sends around it arrive as if it had not been tried.

Every wait has a deadline; nothing sleeps to synchronise.
"""
from __future__ import annotations

import asyncio
import math

import pytest

import posa
import posa.aio
from tests.support import Proc

pytestmark = pytest.mark.timeout(120)

TCP = "tcp://127.0.0.1:0"
WAIT = 20.0
NOT_TIMES = [math.nan, math.inf, -math.inf]


@pytest.mark.parametrize("timeout", NOT_TIMES, ids=["nan", "inf", "-inf"])
def test_a_send_without_a_finite_timeout_to_a_new_name_is_refused_before_it_is_sent(
        timeout: float) -> None:
    with posa.Peer("sendtimeout/c", listen=TCP) as c, \
            posa.Peer("sendtimeout/d", listen=TCP) as d:
        with pytest.raises(ValueError, match="finite number of seconds"):
            c.send("sendtimeout/d", "refused", timeout=timeout)
        c.send("sendtimeout/d", "after")
        c.flush(timeout=WAIT)           # acknowledged: in d's inbox
        assert d.receive(timeout=WAIT).body == "after"
        with pytest.raises(posa.Timeout):
            d.receive(timeout=0)        # nothing else came


FULL_WINDOW = """
import math, sys, posa
timeout = float(sys.argv[1])
TCP = "tcp://127.0.0.1:0"
with posa.Peer("sendtimeout/nan-a", listen=TCP, window=1) as a, \\
        posa.Peer("sendtimeout/nan-b", listen=TCP, inbox_size=1):
    a.send("sendtimeout/nan-b", 0, timeout=10.0)      # in the inbox: reading pauses
    print("ready", flush=True)
    try:
        for i in (1, 2):                           # the second found the window full
            a.send("sendtimeout/nan-b", i, timeout=timeout)
    except (ValueError, posa.PosaError) as exc:
        print("told", type(exc).__name__, flush=True)
"""


@pytest.mark.parametrize("timeout", ["nan", "inf"])
def test_a_send_without_a_finite_timeout_into_a_full_window_is_told(timeout: str) -> None:
    """Told ``ValueError`` instead of waiting for room for ever (the message it
    took stays in the window). Run in a child process (killed at the end):
    without the check it blocks."""
    sender = Proc.python(FULL_WINDOW, timeout)
    try:
        sender.expect("ready")
        assert sender.expect("told", timeout=WAIT) == "ValueError"
    finally:
        sender.close()


def test_an_aio_send_without_a_finite_timeout_is_refused() -> None:
    async def scenario() -> list[object]:
        async with posa.aio.Peer("sendtimeout/aio-a", listen=TCP) as a, \
                posa.aio.Peer("sendtimeout/aio-b", listen=TCP) as b:
            with pytest.raises(ValueError, match="finite number of seconds"):
                await a.send("sendtimeout/aio-b", "refused", timeout=math.nan)
            await a.send("sendtimeout/aio-b", "after")
            return [(await b.receive(timeout=WAIT)).body]
    assert asyncio.run(scenario()) == ["after"]
