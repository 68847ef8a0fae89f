"""A peer closed while its sends and requests back off, trying to reach a name
that does not answer: they end with ``Closed`` and the close does not wait for
them (a send backing off held its forwarder's lock until its deadline: close()
took the whole timeout, and both calls ran to it and said ``Timeout``)."""
from __future__ import annotations

import socket
import threading
from typing import Any

import pytest

import posa

pytestmark = pytest.mark.timeout(120)

TIMEOUT = 60.0      # s the calls here may take: the close must end them long before


def _dead_address() -> str:
    """A loopback address nothing listens on (connections are refused)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return f"tcp://127.0.0.1:{probe.getsockname()[1]}"


@pytest.mark.parametrize("call", ["send", "request"])
def test_a_close_ends_a_call_backing_off_with_closed(registry: posa.LocalRegistry,
                                                     call: str) -> None:
    registry.register("svc/unreachable", (_dead_address(),), credential="owner")
    peer = posa.Peer("cli/closing", registry=registry, linger=0.5)
    outcome: list[Any] = []
    calling = threading.Event()

    def make_the_call() -> None:
        calling.set()
        try:
            getattr(peer, call)("svc/unreachable", 1, timeout=TIMEOUT)
            outcome.append("returned")
        except posa.PosaError as exc:
            outcome.append(exc)

    caller = threading.Thread(target=make_the_call, daemon=True)
    try:
        caller.start()
        assert calling.wait(30)
        closing = threading.Thread(target=peer.close, daemon=True)
        closing.start()
        closing.join(TIMEOUT / 4)
        assert not closing.is_alive(), "close() waited for a call backing off"
        caller.join(TIMEOUT / 4)
        assert not caller.is_alive(), "the call went on backing off after the close"
    finally:
        peer.close()
    assert len(outcome) == 1 and isinstance(outcome[0], posa.Closed), outcome
    assert "closed" in str(outcome[0])
