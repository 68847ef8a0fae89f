"""``posa.Server`` and ``posa.Client`` refuse settings that mean nothing, saying what to pass.

Before: ``Server(weight=0)`` or ``weight=-1`` registered (the dispatcher took it as
1); ``Client(attempt_timeout=0)`` failed every call with "no live server provides
... besides the ones that failed" though a server was there; ``attempt_timeout=-1``
raised ``ValueError: Timeout value out of range`` from a socket and ``nan`` "Invalid
value NaN" on the first call. Real dispatcher over tcp.
"""
from __future__ import annotations

import asyncio
import math
from collections.abc import Iterator

import pytest

import posa
import posa.aio

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(scope="module")
def dispatcher() -> Iterator[str]:
    from tests.support import start_dispatcher
    proc, address = start_dispatcher()
    try:
        yield address
    finally:
        proc.close()


@pytest.mark.parametrize("weight", [0, -1, 1001, 2.5, "2", True])
def test_a_server_weight_out_of_range_is_refused(dispatcher: str, weight: object) -> None:
    with pytest.raises(ValueError, match=r"weight must be a whole number from 1 to 1000"):
        posa.Server("settings/svc", lambda body: body, dispatcher=dispatcher,
                    weight=weight)  # type: ignore[arg-type]


def test_an_asyncio_server_weight_out_of_range_is_refused(dispatcher: str) -> None:
    async def main() -> None:
        with pytest.raises(ValueError, match=r"weight must be a whole number"):
            await posa.aio.Server.open("settings/svc", lambda body: body,
                                       dispatcher=dispatcher, weight=0)
    asyncio.run(main())


@pytest.mark.parametrize("setting", [{"timeout": 0}, {"timeout": -1}, {"timeout": math.nan},
                                     {"timeout": math.inf}, {"attempt_timeout": 0},
                                     {"attempt_timeout": -1}, {"attempt_timeout": math.nan}])
def test_a_client_timeout_that_is_no_wait_is_refused(dispatcher: str,
                                                     setting: dict[str, float]) -> None:
    label = next(iter(setting))
    with pytest.raises(ValueError, match=rf"Client's {label} must be a number of seconds"):
        posa.Client(dispatcher=dispatcher, **setting)


def test_the_edge_settings_serve(dispatcher: str) -> None:
    with posa.Server("settings/edge", lambda body: body, dispatcher=dispatcher,
                     weight=1000), \
            posa.Client(dispatcher=dispatcher, timeout=10.0, attempt_timeout=0.5) as client:
        assert client.call("settings/edge", "x") == "x"
