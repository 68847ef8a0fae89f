"""The threads of a ``Peer`` used from several threads share a forwarder for their
requests and wait for their answers in turn (``posa.delivery.relay``); the server
answers the requests it reads together in one write (``posa.delivery.intake``)."""
from __future__ import annotations

import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from typing import Any

import pytest

import posa
from posa.delivery.waiting import drive
from posa.errors import Timeout
from posa.transport.framing import frame_header
from posa.transport.tcp import TcpListener

WAIT = 30.0
TCP = "tcp://127.0.0.1:0"


@pytest.fixture
def registry() -> Iterator[posa.LocalRegistry]:
    with posa.LocalRegistry() as reg:
        yield reg


def _together(threads: int, work: Callable[[int], None]) -> list[BaseException]:
    """Run ``work(k)`` on ``threads`` threads released together; their errors."""
    start = threading.Barrier(threads)
    errors: list[BaseException] = []

    def run(k: int) -> None:
        try:
            start.wait(WAIT)
            work(k)
        except BaseException as exc:    # reported by the caller
            errors.append(exc)
    workers = [threading.Thread(target=run, args=(k,)) for k in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(WAIT * 4)
    assert not any(worker.is_alive() for worker in workers)
    return errors


def test_threads_requesting_together_each_get_their_own_answers(
        registry: posa.LocalRegistry) -> None:
    with posa.Peer("relay/echo", registry=registry, listen=TCP,
                   handler=lambda m: m.body), \
            posa.Peer("relay/callers", registry=registry, listen=TCP) as peer:
        got: dict[int, list[Any]] = defaultdict(list)

        def calls(k: int) -> None:
            for i in range(200):
                got[k].append(peer.request("relay/echo", [k, i], timeout=WAIT))
        assert _together(16, calls) == []
        assert all(got[k] == [[k, i] for i in range(200)] for k in range(16))
        shared = peer.sender._shared
        assert shared is not None       # they shared a forwarder
        stats = shared[1].stats
        # answers read by one thread woke the threads they were for, and the
        # lead passed from thread to thread
        assert stats["woken"] > 0 and stats["handed"] > 0
        assert len({id(t.conn) for t in shared[0]._targets.values()}) == 1


def test_each_threads_sends_and_requests_arrive_in_its_order(
        registry: posa.LocalRegistry) -> None:
    seen: dict[int, list[int]] = defaultdict(list)

    def handler(msg: posa.Message) -> Any:
        k, n = msg.body
        seen[k].append(n)
        return n
    with posa.Peer("relay/order", registry=registry, listen=TCP, handler=handler), \
            posa.Peer("relay/mixed", registry=registry, listen=TCP) as peer:
        def mixed(k: int) -> None:
            for i in range(0, 120, 3):
                peer.send("relay/order", [k, i], timeout=WAIT)
                peer.send("relay/order", [k, i + 1], timeout=WAIT)
                assert peer.request("relay/order", [k, i + 2], timeout=WAIT) == i + 2
        assert _together(8, mixed) == []
        peer.flush(WAIT)
        assert all(seen[k] == list(range(120)) for k in range(8))


def test_a_request_that_times_out_leaves_the_others_answered(
        registry: posa.LocalRegistry) -> None:
    """One thread's request is never answered (its handler defers and forgets
    it): that thread gets ``Timeout``, the others sharing the forwarder go on."""
    def handler(msg: posa.Message) -> Any:
        return posa.DEFERRED if msg.body == "never" else msg.body
    with posa.Peer("relay/some", registry=registry, listen=TCP, handler=handler), \
            posa.Peer("relay/waiters", registry=registry, listen=TCP) as peer:
        timed_out = threading.Event()

        def calls(k: int) -> None:
            if k == 0:
                with pytest.raises(Timeout):
                    peer.request("relay/some", "never", timeout=0.5)
                timed_out.set()
                assert peer.request("relay/some", "after", timeout=WAIT) == "after"
                return
            i = 0
            while not timed_out.is_set() or i < 50:
                assert peer.request("relay/some", [k, i], timeout=WAIT) == [k, i]
                i += 1
        assert _together(6, calls) == []


def test_threads_requesting_while_the_server_migrates_get_every_answer_once(
        registry: posa.LocalRegistry) -> None:
    runs: dict[tuple[int, int], int] = defaultdict(int)

    def handler(msg: posa.Message) -> Any:
        runs[tuple(msg.body)] += 1      # type: ignore[index]
        return msg.body
    with posa.Peer("relay/moving", registry=registry, listen=TCP, handler=handler) as server, \
            posa.Peer("relay/movers", registry=registry, listen=TCP) as peer:
        halfway = threading.Barrier(9)

        def calls(k: int) -> None:
            for i in range(300):
                if i == 150 and k < 8:
                    halfway.wait(WAIT)
                assert peer.request("relay/moving", [k, i], timeout=WAIT) == [k, i]

        def move(k: int) -> None:
            if k < 8:
                calls(k)
                return
            halfway.wait(WAIT)
            server.migrate(TCP, grace=0.2)
            server.migrate(TCP, grace=0.2)
        assert _together(9, move) == []
        assert runs == {(k, i): 1 for k in range(8) for i in range(300)}


def test_requests_read_in_one_read_are_answered_in_one_write(
        registry: posa.LocalRegistry, monkeypatch: pytest.MonkeyPatch) -> None:
    """Requests that reach the server in separate frames but in one read (as
    those of threads sharing a connection do) are answered in one write."""
    calls: list[int] = []
    send_many = TcpListener.send_many

    def recorded(self: TcpListener, route: Any, frames: list[bytes]) -> None:
        calls.append(len(frames))
        send_many(self, route, frames)
    monkeypatch.setattr(TcpListener, "send_many", recorded)
    started, gate = threading.Event(), threading.Event()

    def handler(msg: posa.Message) -> Any:
        if msg.body == 0:           # holds the reactor while the others arrive
            started.set()
            gate.wait(WAIT)
        return msg.body
    with posa.Peer("relay/held", registry=registry, listen=TCP, handler=handler), \
            posa.Peer("relay/one", registry=registry, listen=TCP) as peer:
        assert peer.request("relay/held", 100, timeout=WAIT) == 100
        fwd = peer.sender.forwarder()
        deadline = time.monotonic() + WAIT
        with fwd.lock:
            seqs = [fwd.send_request("relay/held", 0, deadline)]
        assert started.wait(WAIT)
        with fwd.lock:      # five frames (not one BATCH) in one write
            seqs += [fwd.queue_request("relay/held", k, deadline) for k in range(1, 6)]
            target = fwd._targets["relay/held"]
            frames, target.batch[:], target.batch_bytes = list(target.batch), [], 0
            target.conn._sock.sendall(  # type: ignore[attr-defined]
                b"".join(frame_header(len(frame)) + frame for frame in frames))
        gate.set()
        answers = [drive(fwd.lock, fwd.reply_steps("relay/held", seq, deadline)).body
                   for seq in seqs]
        assert answers == list(range(6))
    assert calls == [5]


def test_a_stream_given_up_by_one_thread_is_not_sent_again_by_another(
        registry: posa.LocalRegistry) -> None:
    """Two threads share the forwarder while the server acknowledges nothing (its
    reactor is held): the one whose deadline passes gives the stream up with its
    backlog, and the other is told so at once (``Timeout``) instead of sending
    that backlog again, the given-up request with it, on a new connection. What
    was written before may still arrive, once, where it was written."""
    started, gate = threading.Event(), threading.Event()
    delivered: list[Any] = []

    def handler(msg: posa.Message) -> Any:
        delivered.append(msg.body)
        if msg.body == "hold":
            started.set()
            gate.wait(WAIT)
        return msg.body
    with posa.Peer("relay/stuck", registry=registry, listen=TCP, handler=handler), \
            posa.Peer("relay/pair", registry=registry, listen=TCP) as peer:
        holder = threading.Thread(
            target=lambda: peer.request("relay/stuck", "hold", timeout=WAIT))
        holder.start()          # alone: on its own forwarder, and holds the server
        assert started.wait(WAIT)
        outcome: dict[str, BaseException | Any] = {}

        def ask(body: str, timeout: float) -> None:
            try:
                outcome[body] = peer.request("relay/stuck", body, timeout=timeout)
            except BaseException as exc:    # looked at below
                outcome[body] = exc
        patient = threading.Thread(target=ask, args=("patient", 5.0))
        patient.start()
        ask("hasty", 0.5)
        assert isinstance(outcome["hasty"], Timeout)
        patient.join(WAIT)
        gate.set()
        holder.join(WAIT)
        assert isinstance(outcome["patient"], Timeout)
        assert "was given up" in str(outcome["patient"])    # not its own deadline
        assert peer.request("relay/stuck", "after", timeout=WAIT) == "after"
        assert sorted(delivered) == sorted({"hold", "after", *delivered})  # each once
