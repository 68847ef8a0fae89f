"""The adversary of the nats:// requester that reads its own socket while it
waits: 32 threads and 32 aio tasks request through peers of one process that share
one NATS client, and the NATS server is SIGSTOPped and resumed under them. Every
request is answered with its own body or told ``Timeout``: never another
caller's answer, never a wrong one, and every caller is answered again once the
server runs."""
from __future__ import annotations

import asyncio
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import posa
import posa.aio
from posa.errors import PosaError, Timeout
from tests.natsserver import NatsCluster

pytestmark = pytest.mark.timeout(120)

CALLERS = 32            # threads, and as many aio tasks
DEADLINE = 60.0


class Tally:
    """What each caller was told, and a condition to wait on it with a deadline."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.answered: Counter[str] = Counter()    # by caller
        self.timed_out: Counter[str] = Counter()
        self.wrong: list[str] = []
        self.stop = False

    def told(self, who: str, n: int, outcome: Any) -> None:
        with self.cond:
            if isinstance(outcome, Timeout):
                self.timed_out[who] += 1
            elif isinstance(outcome, BaseException):
                self.wrong.append(f"{who} #{n}: {outcome!r}")
            elif outcome != [who, n]:
                self.wrong.append(f"{who} #{n} was answered {outcome!r}")
            else:
                self.answered[who] += 1
            self.cond.notify_all()

    def until(self, what: str, condition: Callable[[], bool]) -> None:
        deadline = time.monotonic() + DEADLINE
        with self.cond:
            while not condition() and not self.wrong:
                remaining = deadline - time.monotonic()
                assert remaining > 0, f"{what} not reached within {DEADLINE} s: {self}"
                self.cond.wait(remaining)
        assert not self.wrong, self.wrong[:5]

    def __repr__(self) -> str:
        return (f"answered {sum(self.answered.values())} ({len(self.answered)} callers), "
                f"timed out {sum(self.timed_out.values())} "
                f"({len(self.timed_out)} callers), wrong {self.wrong[:3]}")


def _threads(peer: posa.Peer, tally: Tally) -> list[threading.Thread]:
    def caller(who: str) -> None:
        for n in range(100_000):         # bounded; ends when told
            if tally.stop:
                return
            try:
                outcome: Any = peer.request("adv/echo", [who, n], timeout=1.5)
            except PosaError as exc:
                outcome = exc
            tally.told(who, n, outcome)

    threads = [threading.Thread(target=caller, args=(f"t{k}",), daemon=True)
               for k in range(CALLERS)]
    for thread in threads:
        thread.start()
    return threads


def _tasks(urls: str, registry: posa.LocalRegistry, tally: Tally,
           ready: threading.Event) -> threading.Thread:
    async def main() -> None:
        async with posa.aio.Peer("adv/aio", registry=registry, listen=urls) as peer:
            async def caller(who: str) -> None:
                for n in range(100_000):
                    if tally.stop:
                        return
                    try:
                        outcome: Any = await peer.request("adv/echo", [who, n], timeout=1.5)
                    except PosaError as exc:
                        outcome = exc
                    tally.told(who, n, outcome)
            ready.set()
            await asyncio.gather(*(caller(f"a{k}") for k in range(CALLERS)))

    def run() -> None:
        try:
            asyncio.run(main())
        except BaseException as exc:      # told, so that the test does not wait it out
            tally.told("aio", -1, exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def test_threads_and_tasks_sharing_a_nats_client_through_a_stopped_server(
        tmp_path: Path) -> None:
    with NatsCluster(tmp_path, size=1) as lone, posa.LocalRegistry() as registry:
        server = lone.servers[0]
        with posa.Peer("adv/echo", registry=registry, listen=lone.urls,
                       handler=lambda m: m.body), \
             posa.Peer("adv/threads", registry=registry, listen=lone.urls) as peer:
            tally = Tally()
            ready = threading.Event()
            workers = _threads(peer, tally) + [_tasks(lone.urls, registry, tally, ready)]
            try:
                everyone = [f"t{k}" for k in range(CALLERS)] + [f"a{k}" for k in range(CALLERS)]
                tally.until("every caller answered 3 times", lambda: all(
                    tally.answered[who] >= 3 for who in everyone))
                for cycle in range(3):
                    _stopped_and_resumed(server, tally, everyone, cycle)
            finally:
                tally.stop = True
                for worker in workers:
                    worker.join(DEADLINE)
            assert not any(worker.is_alive() for worker in workers)
            assert not tally.wrong, tally.wrong[:5]


def _stopped_and_resumed(server: Any, tally: Tally, everyone: list[str], cycle: int) -> None:
    """SIGSTOP the server until every caller was told Timeout once more, SIGCONT,
    and wait until every caller was answered 3 more times."""
    timed_out = dict(tally.timed_out)
    server.signal(signal.SIGSTOP)
    try:
        tally.until(f"a timeout for every caller (stop {cycle})", lambda: all(
            tally.timed_out[who] > timed_out.get(who, 0) for who in everyone))
    finally:
        server.signal(signal.SIGCONT)
    answered = dict(tally.answered)
    tally.until(f"every caller answered 3 times after resume {cycle}", lambda: all(
        tally.answered[who] >= answered[who] + 3 for who in everyone))
