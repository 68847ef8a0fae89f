"""A ``Peer`` refuses settings that mean nothing, and takes timeouts at their edges.

Before: ``window=0`` (or negative) was taken and the first send to a recipient
waited forever, whatever its timeout; ``inbox_size=0`` was taken and the peer
stopped reading at once, so nothing sent to it ever arrived; ``receive`` with a
timeout of 1e308 raised ``OverflowError`` and with ``nan`` a bare "Invalid value
NaN"; an inbox of one message, once full, was never read again; a small inbox
was never read again when a reader's stale wake-up stayed queued, or when the
reader emptied it as the peer paused;
``send(None, ...)`` raised ``TypeError`` about iterating ``NoneType``.
Peers here talk over real tcp sockets.
"""
from __future__ import annotations

import math
import threading
from collections.abc import Callable, Iterator

import pytest

import posa
from posa.errors import InvalidName
from tests.support import wait_until

pytestmark = pytest.mark.timeout(60)

TCP = "tcp://127.0.0.1:0"


@pytest.fixture
def pair() -> Iterator[tuple[posa.Peer, posa.Peer]]:
    with posa.Peer("settings/a", listen=TCP) as a, posa.Peer("settings/b", listen=TCP) as b:
        yield a, b


@pytest.mark.parametrize("window", [0, -5, 1.5, True])
def test_a_window_under_one_is_refused_saying_what_it_takes(window: object) -> None:
    with pytest.raises(ValueError, match=r"window must be a whole number >= 1"):
        posa.Peer("settings/w", listen=TCP, window=window)  # type: ignore[arg-type]


@pytest.mark.parametrize("size", [0, -1, 2.5])
def test_an_inbox_of_no_messages_is_refused_saying_what_it_takes(size: object) -> None:
    with pytest.raises(ValueError, match=r"inbox_size must be a whole number of messages"):
        posa.Peer("settings/i", listen=TCP, inbox_size=size)  # type: ignore[arg-type]


@pytest.mark.parametrize("linger", [-1.0, math.nan, math.inf])
def test_a_linger_that_is_no_wait_is_refused(linger: float) -> None:
    with pytest.raises(ValueError, match=r"linger must be a number of seconds >= 0"):
        posa.Peer("settings/l", listen=TCP, linger=linger)


@pytest.mark.parametrize(("window", "inbox_size"), [(1, 10), (4, 1), (1, 1)])
def test_the_smallest_window_and_inbox_still_deliver_in_order(window: int,
                                                             inbox_size: int) -> None:
    """An inbox of one message is read again once receive() emptied it (it waited
    for fewer than none, half of one rounded down, and never read again)."""
    with posa.Peer("settings/s", listen=TCP, window=window) as a, \
            posa.Peer("settings/r", listen=TCP, inbox_size=inbox_size) as b:
        got: list[object] = []
        done = threading.Event()

        def receive() -> None:
            try:
                got.extend(b.receive(timeout=10.0).body for _ in range(20))
            finally:
                done.set()
        reader = threading.Thread(target=receive, daemon=True)
        reader.start()
        for i in range(20):
            a.send("settings/r", i, timeout=10.0)
        assert done.wait(20.0)
        assert got == list(range(20))


class _FiredAsTheMessageCame:
    """A reader's wake-up timer (``Inbox``) that fires as the message it waited
    for comes, the first time once the peer has paused its listener (as after
    SIGSTOP and SIGCONT: the overdue timer and the full inbox in one turn of the
    reactor): cancelled too late, its wake-up is left queued, stale."""

    def __init__(self, peer: posa.Peer, fn: Callable[[], object], once: list[bool]) -> None:
        self.peer, self.fn, self.once = peer, fn, once

    def cancel(self) -> None:
        if not self.once:
            self.once.append(True)
            wait_until(lambda: self.peer._listening.paused, 10.0, "the listener paused")
            self.fn()


def test_an_inbox_paused_with_a_stale_wake_up_queued_is_read_again() -> None:
    """Before: with a stale wake-up in the inbox, a reader that took the last
    message saw it not below half, dropped the wake-up, waited, and the peer never
    read its listener again: nothing more arrived, without a word (a subscriber
    stopped and resumed lost every event after)."""
    with posa.Peer("settings/ws", listen=TCP) as a, \
            posa.Peer("settings/wr", listen=TCP, inbox_size=2) as b:
        once: list[bool] = []
        b._inbox._later = lambda delay, fn: _FiredAsTheMessageCame(b, fn, once)
        got: list[object] = []
        half, done = threading.Event(), threading.Event()

        def receive() -> None:
            try:
                got.extend(b.receive(timeout=10.0).body for _ in range(20))
                half.set()
                got.extend(b.receive(timeout=10.0).body for _ in range(20))
            finally:
                done.set()
        reader = threading.Thread(target=receive, daemon=True)
        reader.start()
        for i in range(20):
            a.send("settings/wr", i, timeout=10.0)
        assert half.wait(20.0) and once, "no stale wake-up was made"
        for i in range(20, 40):     # after it: the listener is paused, the inbox empty
            a.send("settings/wr", i, timeout=10.0)
        assert done.wait(30.0)
        assert got == list(range(40))


def test_receive_with_a_timeout_longer_than_a_thread_can_wait_gets_the_message(
        pair: tuple[posa.Peer, posa.Peer]) -> None:
    a, b = pair
    got: list[object] = []
    done = threading.Event()

    def receive() -> None:
        try:
            got.append(b.receive(timeout=1e308).body)
        except Exception as exc:    # what the old code raised, to be shown
            got.append(exc)
        done.set()
    reader = threading.Thread(target=receive, daemon=True)
    reader.start()
    a.send("settings/b", "hello")
    assert done.wait(20.0)
    assert got == ["hello"]


def test_receive_with_a_nan_timeout_says_what_it_takes(
        pair: tuple[posa.Peer, posa.Peer]) -> None:
    _, b = pair
    with pytest.raises(ValueError, match=r"receive's timeout must be a number of seconds"):
        b.receive(timeout=math.nan)


@pytest.mark.parametrize("name", [None, b"settings/b", 7])
def test_a_send_to_what_is_not_a_name_raises_invalid_name(
        pair: tuple[posa.Peer, posa.Peer], name: object) -> None:
    a, b = pair
    with pytest.raises(InvalidName, match=r"a name must be a str"):
        a.send(name, 1)  # type: ignore[arg-type]
    a.send("settings/b", "after")
    assert b.receive(timeout=10.0).body == "after"


NAN_SEND = """
import math, posa
TCP = "tcp://127.0.0.1:0"
with posa.Peer("settings/nan-a", listen=TCP, window=1) as a, \\
        posa.Peer("settings/nan-b", listen=TCP, inbox_size=1):
    a.send("settings/nan-b", 0, timeout=10.0)      # in the inbox: reading pauses
    print("ready", flush=True)
    try:
        for i in (1, 2):                           # the second finds the window full
            a.send("settings/nan-b", i, timeout=math.nan)
    except (ValueError, posa.PosaError) as exc:
        print("told", type(exc).__name__, flush=True)
"""


def test_a_send_with_a_nan_timeout_into_a_full_window_is_told() -> None:
    """(It blocked for ever: a nan deadline is never passed; test_send_timeout.py.)"""
    from tests.support import Proc
    sender = Proc.python(NAN_SEND)
    try:
        sender.expect("ready")
        sender.expect("told", timeout=10.0)
    finally:
        sender.close()


def test_an_inbox_taken_below_half_as_the_peer_pauses_is_read_again() -> None:
    """Before: the reactor saw the inbox full; before it paused its listener, the
    reader took every message and, seeing no pause yet, resumed nothing; then the
    pause came, and a reader waiting with no time limit waited for ever (nothing
    more read, without a word)."""
    with posa.Peer("settings/ps", listen=TCP) as a, \
            posa.Peer("settings/pr", listen=TCP, inbox_size=2) as b:
        got: list[object] = []
        raced: list[int] = []
        qsize = b._inbox.qsize

        def seen_full_then_taken() -> int:     # the reactor's look at the inbox
            n = qsize()
            if n >= b._inbox.size and not raced:
                raced.append(n)     # the reader takes them all before the pause is made
                wait_until(lambda: len(got) >= n and not qsize(), 10.0, "the inbox taken")
            return n
        b._inbox.qsize = seen_full_then_taken
        done = threading.Event()

        def receive() -> None:
            try:
                for _ in range(40):
                    got.append(b.receive().body)
            finally:
                done.set()
        threading.Thread(target=receive, daemon=True).start()
        for i in range(20):
            a.send("settings/pr", i, timeout=10.0)
        wait_until(lambda: raced, 20.0, "the race staged")
        for i in range(20, 40):     # after it: the listener is paused, the inbox empty
            a.send("settings/pr", i, timeout=10.0)
        assert done.wait(30.0), f"stalled after {len(got)} messages (raced at {raced})"
        assert got == list(range(40))
