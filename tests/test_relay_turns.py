"""``posa.delivery.relay`` alone: who polls, who is woken, with what, and who writes
what was queued, driven with steps over socket pairs (no peer, no forwarder)."""
from __future__ import annotations

import socket
import threading
from collections.abc import Iterator

import pytest

from posa.delivery.relay import Awaited, Relay, Steps

WAIT = 30.0
Key = tuple[str, int]


class Pipe:
    """A connection for the relay: readable when bytes were written to ``feed``;
    each byte read is the key ``("x", byte)`` of an answer."""

    def __init__(self) -> None:
        self.sock, self.feed = socket.socketpair()
        self.sock.setblocking(False)

    def fileno(self) -> int:
        return self.sock.fileno()

    def pending(self) -> bool:
        return False

    def close(self) -> None:
        self.sock.close()
        self.feed.close()


class Turns:
    """A relay, the answers read so far and what each waiter's steps were told."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.relay = Relay(self.lock, lambda conn: None, self.write_open)
        self.read: set[Key] = set()
        self.told: dict[int, list[bool]] = {}
        self.writes = 0
        self.threads: list[threading.Thread] = []

    def write_open(self) -> None:
        self.writes += 1

    def steps(self, me: int, pipes: list[Pipe], awaited: Awaited,
              waiting: threading.Event) -> Steps[int]:
        """Wait for the answer ``("x", me)`` as ``Forwarder.reply_steps`` would: on
        ``pipes[0]`` first, on the last pipe after anything happened (as if a
        connection was replaced); read what came and tell the relay its keys."""
        key = ("x", me)
        awaited.key = key
        told = self.told[me] = []
        conn = pipes[0]
        while key not in self.read:
            waiting.set()
            ready = yield conn, WAIT
            told.append(ready)
            if not ready:
                conn = pipes[-1]
                continue
            try:
                data = conn.sock.recv(64)
            except BlockingIOError:
                continue
            conn = pipes[-1]        # (a recovery after a read that was not its answer)
            for byte in data:
                self.read.add(("x", byte))
                self.relay.answered(("x", byte))
        return me

    def start(self, me: int, pipes: list[Pipe]) -> None:
        """A thread driving ``steps(me)``; returns once it waits (as leader or
        follower: either way the relay holds it, with the lock released)."""
        waiting = threading.Event()
        awaited = Awaited()
        thread = threading.Thread(
            target=lambda: self.relay.drive(self.steps(me, pipes, awaited, waiting), awaited))
        thread.start()
        self.threads.append(thread)
        assert waiting.wait(WAIT)
        with self.lock:     # it made its first wait, under the lock, and let go
            pass

    def join(self) -> None:
        for thread in self.threads:
            thread.join(WAIT)
        assert not any(thread.is_alive() for thread in self.threads)


@pytest.fixture
def pipes() -> Iterator[list[Pipe]]:
    made = [Pipe(), Pipe()]
    yield made
    for pipe in made:
        pipe.close()


def test_a_follower_is_woken_by_its_answer_read_by_the_leader(pipes: list[Pipe]) -> None:
    turns = Turns()
    turns.start(1, pipes[:1])       # the leader: it polls
    turns.start(2, pipes[:1])       # a follower: it waits for its answer
    pipes[0].feed.send(bytes([2]))
    turns.threads[1].join(WAIT)
    assert turns.told[2] == [True]          # woken by its answer, not its timeout
    assert turns.relay.stats["woken"] == 1 and turns.relay.stats["led"] == 1
    pipes[0].feed.send(bytes([1]))
    turns.join()
    assert turns.told[1] == [True, True]


def test_a_leader_done_hands_the_lead_to_a_waiting_follower(pipes: list[Pipe]) -> None:
    turns = Turns()
    turns.start(1, pipes[:1])
    turns.start(2, pipes[:1])
    pipes[0].feed.send(bytes([1]))          # the leader's own answer: it is done
    turns.threads[0].join(WAIT)
    assert turns.relay.stats["handed"] == 1
    pipes[0].feed.send(bytes([2]))          # read by the follower, the leader now
    turns.join()
    # woken by the hand-off, not its timeout (then it read its answer at once,
    # or polled for it as the leader)
    assert turns.told[1] == [True] and turns.told[2][0] is True
    assert turns.told[2] in ([True], [True, True])


def test_followers_of_a_connection_left_for_another_are_told_to_look_again(
        pipes: list[Pipe]) -> None:
    """The leader's steps move to another connection (a recovery replaced it): its
    followers are woken as by a wait that ran out, and wait on the new one."""
    turns = Turns()
    turns.start(1, pipes)
    turns.start(2, pipes)
    pipes[0].feed.send(bytes([9]))      # nobody's: the leader reads it, then moves on
    pipes[1].feed.send(bytes([1, 2]))
    turns.join()
    assert turns.told[2][0] is False
    assert turns.told[1][:1] == [True]


def test_the_last_woken_writes_what_was_queued() -> None:
    turns = Turns()
    relay = turns.relay
    first, second = threading.Lock(), threading.Lock()
    first.acquire()
    second.acquire()
    turns.lock.acquire()
    relay.corked = True
    relay._wake.extend([first, second])
    relay._release()                # wakes the first; the queue is not written yet
    assert (turns.writes, first.locked(), second.locked()) == (0, False, True)
    turns.lock.acquire()
    relay._release()                # wakes the second
    assert (turns.writes, second.locked()) == (0, False)
    turns.lock.acquire()
    relay._release()                # nobody left to wake: written
    assert (turns.writes, relay.corked, turns.lock.locked()) == (1, False, False)

