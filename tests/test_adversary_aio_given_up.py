"""The adversary of a shared stream given up by one task (``posa.aio``): 32 tasks
with seeded deadlines of 0.3 to 3 s request one server through one peer while
the server process is SIGSTOPped and resumed, 3 times. Every request is
answered with its own body or told ``Timeout``; the server runs each body at
most once (what one task gave up is not sent again by another, on any
connection), and those waiting on a stream another task gave up are told so;
every task is answered again once the server runs."""
from __future__ import annotations

import asyncio
import os
import random
import signal
from collections import Counter
from typing import Any

import pytest

import posa
import posa.aio
from tests.support import Proc, sigstop

pytestmark = pytest.mark.timeout(120)

TASKS = 32
DEADLINE = 60.0

SERVER = """
import json, sys, posa
ran = []
def handle(msg):
    ran.append(msg.body)
    return msg.body
with posa.RegistryClient(sys.argv[1]) as reg, posa.Peer(
        "adv/stopped", registry=reg, listen="tcp://127.0.0.1:0", handler=handle):
    print("READY", flush=True)
    sys.stdin.readline()
    print("RAN", json.dumps(ran), flush=True)
"""


class Calls:
    """What the tasks were told, and a condition for the test to wait on."""

    def __init__(self) -> None:
        self.answered: Counter[int] = Counter()
        self.timed_out: Counter[int] = Counter()
        self.wrong: list[str] = []
        self.given_up = 0           # told so: another task gave their stream up
        self.changed = asyncio.Event()
        self.stop = False

    async def until(self, what: str, condition: Any) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + DEADLINE
        while not condition() and not self.wrong:
            self.changed.clear()
            remaining = deadline - loop.time()
            assert remaining > 0, f"{what} not within {DEADLINE} s"
            try:
                await asyncio.wait_for(self.changed.wait(), remaining)
            except asyncio.TimeoutError:
                pass
        assert not self.wrong, self.wrong[:5]


async def _task(peer: posa.aio.Peer, k: int, rng: random.Random, calls: Calls) -> None:
    for n in range(100_000):                # bounded; ends when told
        if calls.stop:
            return
        body = [k, n]
        try:
            answer = await peer.request("adv/stopped", body, timeout=rng.uniform(0.3, 3.0))
        except posa.Timeout as exc:
            calls.timed_out[k] += 1
            calls.given_up += "was given up" in str(exc)
        except posa.PosaError as exc:
            calls.wrong.append(f"task {k} #{n}: {exc!r}")
        else:
            if answer == body:
                calls.answered[k] += 1
            else:
                calls.wrong.append(f"task {k} #{n} was answered {answer!r}")
        calls.changed.set()


def test_tasks_sharing_a_stream_to_a_stopped_server_never_run_a_request_twice(
        dispatcher: str) -> None:
    seed = int(os.environ.get("POSA_ADVERSARY_SEED", random.randrange(1 << 30)))
    print(f"seed {seed} (POSA_ADVERSARY_SEED={seed} repeats it)")
    rng = random.Random(seed)
    server = Proc.python(SERVER, dispatcher)
    server.expect("READY")

    calls = Calls()

    async def main() -> None:
        with posa.RegistryClient(dispatcher) as reg:
            async with posa.aio.Peer("adv/sharer", registry=reg,
                                     listen="tcp://127.0.0.1:0") as peer:
                tasks = [asyncio.ensure_future(_task(peer, k, random.Random(rng.random()),
                                                     calls)) for k in range(TASKS)]
                try:
                    await calls.until("every task answered", lambda: all(
                        calls.answered[k] >= 2 for k in range(TASKS)))
                    for stop in range(3):
                        timed_out = dict(calls.timed_out)
                        sigstop(server.popen.pid)
                        try:
                            await calls.until(f"a timeout for every task ({stop})", lambda t=(
                                timed_out): all(calls.timed_out[k] > t.get(k, 0)
                                                for k in range(TASKS)))
                        finally:
                            server.popen.send_signal(signal.SIGCONT)
                        answered = dict(calls.answered)
                        await calls.until(f"every task answered again ({stop})", lambda a=(
                            answered): all(calls.answered[k] >= a[k] + 2
                                           for k in range(TASKS)))
                finally:
                    calls.stop = True
                    await asyncio.wait_for(asyncio.gather(*tasks), DEADLINE)

    try:
        asyncio.run(main())
        server.tell("REPORT")
        ran = Counter(tuple(body) for body in server.json("RAN", timeout=DEADLINE))
    finally:
        server.close()
    twice = [body for body, times in ran.items() if times > 1]
    assert not twice, f"seed {seed}: run more than once: {twice[:10]}"
    # the tasks waiting on a stream another gave up were told so (not recovering it)
    assert calls.given_up > 0, f"seed {seed}: no task was told its stream was given up"
