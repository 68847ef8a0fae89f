"""The ``Timeout`` of retries that ran out of time says what failed and no more:
it may end a group send's slice, which gives nothing up (the message stays
to be tried in the next round), or the message's deadline.

Before: it said "gave up at the message's deadline" at the end of a slice too.
"""
from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest

import posa
from posa import transport
from posa.errors import Timeout, TransportError
from posa.transport.base import Connection, Options

pytestmark = pytest.mark.timeout(60)

TCP = "tcp://127.0.0.1:0"
SLICE = 0.05        # s: the first slice of a group send (posa.delivery.group.SLICE)


@pytest.fixture
def refused(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[posa.Peer, posa.Peer]]:
    """A sender and a member every connect to which is refused."""
    with posa.LocalRegistry() as reg, \
            posa.Peer("retry/m", registry=reg, listen=TCP) as member, \
            posa.Peer("retry/sender", registry=reg, listen=TCP) as sender:
        real = transport.connect

        def connect(address: str, options: Options | None = None) -> Connection:
            if address == member.address:
                raise TransportError(f"cannot connect to {address}: refused (injected)")
            return real(address, options)

        monkeypatch.setattr(transport, "connect", connect)
        yield sender, member


def test_a_first_contact_that_ends_with_its_slice_says_nothing_was_given_up(
        refused: tuple[posa.Peer, posa.Peer]) -> None:
    sender, _ = refused
    fwd: Any = sender.sender.forwarder()
    start = time.monotonic()
    with pytest.raises(Timeout) as sliced:
        fwd.send_in_slice("retry/m", "x", None, start + 60.0, start + SLICE)
    said = str(sliced.value)
    assert "cannot deliver to 'retry/m'" in said and "refused (injected)" in said
    assert "gave up" not in said


def test_a_first_contact_that_ends_at_the_deadline_says_what_failed(
        refused: tuple[posa.Peer, posa.Peer]) -> None:
    sender, _ = refused
    with pytest.raises(Timeout) as timed_out:
        sender.send("retry/m", "x", timeout=SLICE)
    said = str(timed_out.value)
    assert "cannot deliver to 'retry/m'" in said and "refused (injected)" in said
