"""Every public timeout of the delivery layer goes through one check
(``posa.delivery.budget.seconds``): a number of seconds from 0 to ``LONGEST``
(``threading.TIMEOUT_MAX``). ``nan``, a negative or infinite timeout, or one that
is not a number is refused with a ``ValueError`` that says what is taken; one
over ``LONGEST`` is refused as *too large*, naming the limit. Nothing is sent,
and the next good call goes through as if the bad one had not been tried.

Before: a group send with a ``nan`` timeout waited in ``flush(nan)``; a negative
send timeout was taken (the message sent); ``flush(nan)`` was taken;
``request(timeout=1e308)`` was refused as "not a finite number" (it is finite);
``send(timeout="5")`` raised a bare ``TypeError``.
"""
from __future__ import annotations

import math
import threading
import time
from collections.abc import Iterator

import pytest

import posa
from posa.delivery.budget import LONGEST, seconds
from posa.delivery.group import send_to_group
from posa.errors import Closed

pytestmark = pytest.mark.timeout(60)

TCP = "tcp://127.0.0.1:0"
WAIT = 20.0
NO_WAITS = [math.nan, -1.0, -math.inf, math.inf, "5", None]
NO_WAIT_IDS = ["nan", "negative", "-inf", "inf", "str", "None"]


@pytest.fixture
def pair() -> Iterator[tuple[posa.Peer, posa.Peer]]:
    with posa.LocalRegistry() as reg, \
            posa.Peer("checked/a", registry=reg, listen=TCP) as a, \
            posa.Peer("checked/b", registry=reg, listen=TCP,
                      handler=lambda m: m.body) as b:
        yield a, b


@pytest.mark.parametrize("timeout", NO_WAITS, ids=NO_WAIT_IDS)
@pytest.mark.parametrize("call", ["Peer.send", "Sender.send", "Peer.flush", "Sender.flush",
                                  "Peer.request", "Sender.request", "group"])
def test_a_timeout_that_is_no_wait_is_refused_saying_what_is_taken(
        pair: tuple[posa.Peer, posa.Peer], call: str, timeout: object) -> None:
    a, b = pair
    seen: list[object] = []
    b.serve(lambda m: seen.append(m.body) or m.body)
    assert a.request("checked/b", "known", timeout=WAIT) == "known"  # a stream to b
    calls = {
        "Peer.send": lambda: a.send("checked/b", "refused", timeout=timeout),
        "Sender.send": lambda: a.sender.send("checked/b", "refused", timeout=timeout),
        "Peer.flush": lambda: a.flush(timeout=timeout),
        "Sender.flush": lambda: a.sender.flush(timeout=timeout),
        "Peer.request": lambda: a.request("checked/b", "refused", timeout=timeout),
        "Sender.request": lambda: a.sender.request("checked/b", "refused", timeout=timeout),
        "group": lambda: a.send("checked/*", "refused", timeout=timeout),
    }
    with pytest.raises(ValueError, match=r"timeout must be a finite number of seconds "
                                         r"from 0 to \d+, not "):
        calls[call]()   # type: ignore[no-untyped-call]
    assert a.request("checked/b", "next", timeout=WAIT) == "next"
    assert "refused" not in seen and seen[-1] == "next"


@pytest.mark.parametrize("call", ["Peer.send", "Peer.request", "Peer.flush", "group"])
def test_a_timeout_longer_than_any_wait_is_refused_as_too_large(
        pair: tuple[posa.Peer, posa.Peer], call: str) -> None:
    """1e308 is finite: the error says it is too large, and what the limit is."""
    a, _ = pair
    calls = {
        "Peer.send": lambda: a.send("checked/b", "refused", timeout=1e308),
        "Peer.request": lambda: a.request("checked/b", "refused", timeout=1e308),
        "Peer.flush": lambda: a.flush(timeout=1e308),
        "group": lambda: a.send("checked/*", "refused", timeout=1e308),
    }
    with pytest.raises(ValueError, match=rf"timeout of 1e\+308 s is too large: at most "
                                         rf"{LONGEST:.0f} s") as caught:
        calls[call]()   # type: ignore[no-untyped-call]
    assert "finite" not in str(caught.value)
    assert a.request("checked/b", "next", timeout=WAIT) == "next"


def test_the_edges_are_taken(pair: tuple[posa.Peer, posa.Peer]) -> None:
    """0 (no wait: tried once) and ``LONGEST`` itself are timeouts."""
    a, b = pair
    assert seconds(0, "t") == 0.0 and seconds(LONGEST, "t") == LONGEST
    assert a.request("checked/b", "long", timeout=LONGEST) == "long"
    a.send("checked/b", "zero", timeout=WAIT)
    a.flush(timeout=LONGEST)
    assert a.send("checked/b", "once", timeout=0) == 1


def test_a_group_send_with_a_deadline_that_is_no_time_is_refused_before_it_sends(
        pair: tuple[posa.Peer, posa.Peer]) -> None:
    """(It waited in ``flush(nan)`` for an acknowledgement that did not come.)"""
    a, _ = pair
    fwd = a.sender.forwarder()
    for deadline in (math.nan, math.inf):
        with pytest.raises(ValueError, match="finite number of seconds"):
            send_to_group(fwd, "checked/*", ["checked/b"], "refused", None, deadline)
    with pytest.raises(ValueError, match="finite number of seconds"):
        fwd.flush(math.nan)
    assert a.send("checked/*", "all", timeout=WAIT) == 1


def test_a_forwarder_held_across_a_fork_says_what_to_send_through_instead(
        pair: tuple[posa.Peer, posa.Peer]) -> None:
    """The child's Peer, Sender and Client send on forwarders of their own; only a
    forwarder kept by hand from before the fork is the parent's. (The message said
    to "create peers after fork", which is no longer needed.)"""
    a, _ = pair
    fwd = a.sender.forwarder()
    fwd._pid = -1       # as in a forked child
    try:
        with pytest.raises(Closed, match=r"made before a fork.*send through the Peer, "
                                         r"Sender or Client") as caught:
            fwd.send("checked/other", "x", deadline=time.monotonic() + WAIT)
        assert "create peers after fork" not in str(caught.value)
    finally:
        fwd._pid = a.sender._pid


def test_a_thread_of_the_peer_refused_a_bad_timeout_sends_on() -> None:
    """A refused timeout costs its thread nothing: the forwarder goes on."""
    got: list[object] = []
    with posa.LocalRegistry() as reg, \
            posa.Peer("checked/t", registry=reg, listen=TCP) as a, \
            posa.Peer("checked/u", registry=reg, listen=TCP) as b:
        def sender() -> None:
            for timeout in (math.nan, -1.0):
                try:
                    a.send("checked/u", "refused", timeout=timeout)
                except ValueError as exc:
                    got.append(type(exc).__name__)
            a.send("checked/u", "after", timeout=WAIT)
        thread = threading.Thread(target=sender)
        thread.start()
        thread.join(WAIT)
        assert got == ["ValueError", "ValueError"]
        assert b.receive(timeout=WAIT).body == "after"
