"""The adversary of aio calls woken by their answer's key: 64 tasks call a
service through one ``aio.Client`` and request a peer through one ``aio.Peer``
while, on a seeded schedule, some are cancelled mid-call (after a random number
of turns of the loop) and the handlers are slow by turns. Every task not
cancelled gets its own answer; a cancelled one raises ``CancelledError`` and
nothing else; nothing is left waiting on the loop, and the client and peer go
on answering."""
from __future__ import annotations

import asyncio
import os
import random
import time
from typing import Any

import pytest

import posa
import posa.aio
from posa.aio.hub import Hub

pytestmark = pytest.mark.timeout(120)

TASKS = 64
ROUNDS = 3


def _slow(body: Any) -> Any:
    """A handler slow by turns: every third body takes 20 ms (work, not a wait
    for anything)."""
    if body[1] % 3 == 0:
        time.sleep(0.02)
    return body


async def _round(call: Any, rng: random.Random, label: str, round_: int) -> tuple[int, int]:
    """TASKS calls, a seeded fifth of them cancelled after 0-20 turns of the loop;
    (answered, cancelled)."""
    tasks = [asyncio.ensure_future(call([f"{label}{round_}", k])) for k in range(TASKS)]
    doomed = rng.sample(range(TASKS), TASKS // 5)
    for k in doomed:
        for _ in range(rng.randrange(20)):
            await asyncio.sleep(0)          # a turn of the loop, not a wait for time
        tasks[k].cancel()
    done = await asyncio.gather(*tasks, return_exceptions=True)
    answered = cancelled = 0
    for k, outcome in enumerate(done):
        if isinstance(outcome, asyncio.CancelledError):
            assert k in doomed, f"task {k} was cancelled without being told to"
            cancelled += 1
        else:
            assert outcome == [f"{label}{round_}", k], f"task {k} was told {outcome!r}"
            answered += 1
    return answered, cancelled


def test_tasks_cancelled_mid_call_leave_the_others_their_own_answers() -> None:
    seed = int(os.environ.get("POSA_ADVERSARY_SEED", random.randrange(1 << 30)))
    print(f"seed {seed} (POSA_ADVERSARY_SEED={seed} repeats it)")
    rng = random.Random(seed)

    async def main() -> None:
        hub = Hub.of(asyncio.get_running_loop())
        with posa.LocalRegistry() as reg, posa.Server(
                "adv/svc", _slow, registry=reg, listen="tcp://127.0.0.1:0"), posa.Peer(
                "adv/peer", registry=reg, listen="tcp://127.0.0.1:0",
                handler=lambda m: _slow(m.body)):
            async with posa.aio.Client(registry=reg, timeout=30) as client, \
                    posa.aio.Peer("adv/asker", registry=reg,
                                  listen="tcp://127.0.0.1:0") as peer:
                calls = {"call": lambda body: client.call("adv/svc", body),
                         "request": lambda body: peer.request("adv/peer", body, timeout=30)}
                for round_ in range(ROUNDS):
                    for label, call in calls.items():
                        answered, cancelled = await _round(call, rng, label, round_)
                        assert answered + cancelled == TASKS
                        # after the cancellations every task still gets its own answer
                        assert await asyncio.gather(*(call(["after", k]) for k in range(
                            TASKS))) == [["after", k] for k in range(TASKS)], (
                            f"seed {seed}: {label} round {round_}")
                assert hub.waiting == {}, f"seed {seed}: left waiting {hub.waiting}"
                assert not any(entry.waiters for entry in hub._fds.values())

    asyncio.run(main())
