"""posa.aio with many tasks on one peer: each woken by its own answer, and every one
ends (answer or error) whatever happens to the others or to the server."""
from __future__ import annotations

import asyncio
import signal
import threading
import time
from typing import Any

import pytest

import posa
import posa.aio
from posa.aio.hub import Hub
from posa.delivery.target import Target
from tests.support import Proc, sigstop

TASKS = 64

SERVER = """
import sys, posa
held = []
def handle(msg):
    if msg.body == "hold":          # answered never: its requester waits until killed
        held.append(msg)
        print("HELD", len(held), flush=True)
        return posa.DEFERRED
    return msg.body
with posa.RegistryClient(sys.argv[1]) as reg, posa.Peer(
        "aio/victim", registry=reg, listen="tcp://127.0.0.1:0", handler=handle):
    print("READY", flush=True)
    sys.stdin.readline()
"""


def _woken_alone(hub: Hub) -> None:
    """Nothing is left waiting on the hub: no task, no reader."""
    assert hub.waiting == {}
    assert not any(entry.waiters for entry in hub._fds.values())


def test_sixty_four_tasks_each_get_their_own_answer_one_wake_up_each() -> None:
    async def main() -> None:
        hub = Hub.of(asyncio.get_running_loop())
        with posa.LocalRegistry() as reg:
            server = posa.Peer("aio/echo", registry=reg, listen="tcp://127.0.0.1:0",
                               handler=lambda m: m.body)
            try:
                async with posa.aio.Peer("aio/many", registry=reg,
                                         listen="tcp://127.0.0.1:0") as peer:
                    async def caller(k: int) -> list[Any]:
                        return [await peer.request("aio/echo", (k, i), timeout=60)
                                for i in range(20)]
                    before = dict(hub.stats)
                    got = await asyncio.gather(*(caller(k) for k in range(TASKS)))
                    assert got == [[[k, i] for i in range(20)] for k in range(TASKS)]
                    waits = hub.stats["waits"] - before["waits"]
                    woken = hub.stats["woken"] - before["woken"]
                    # a task is woken by its answer, not by the others' (at most one
                    # wake-up per wait), and no wait ran out
                    assert woken <= waits and hub.stats["expired"] == before["expired"]
                    _woken_alone(hub)
            finally:
                server.close()
    asyncio.run(main())


def test_sixty_four_tasks_get_their_own_errors_and_answers_together() -> None:
    """Requests made while other tasks wait (they join one batch and each waits for
    its answer by key alone) get what a lone request gets: the reply, or the
    error its handler raised, as ``RemoteError``; none waits on after."""
    def handle(msg: posa.Message) -> Any:
        if msg.body[1] % 2:
            raise KeyError(f"odd {msg.body}")
        return msg.body

    async def main() -> None:
        hub = Hub.of(asyncio.get_running_loop())
        with posa.LocalRegistry() as reg:
            server = posa.Peer("aio/mixed", registry=reg, listen="tcp://127.0.0.1:0",
                               handler=handle)
            try:
                async with posa.aio.Peer("aio/many-errors", registry=reg,
                                         listen="tcp://127.0.0.1:0") as peer:
                    async def caller(k: int) -> list[Any]:
                        got: list[Any] = []
                        for i in range(10):
                            try:
                                got.append(await peer.request("aio/mixed", (k, i),
                                                              timeout=60))
                            except posa.RemoteError as exc:
                                got.append(exc.remote_type)
                        return got
                    got = await asyncio.gather(*(caller(k) for k in range(TASKS)))
                    assert got == [[[k, i] if i % 2 == 0 else "KeyError"
                                    for i in range(10)] for k in range(TASKS)]
                    _woken_alone(hub)
            finally:
                server.close()
    asyncio.run(main())


def test_sixty_four_tasks_calling_a_service_each_woken_by_its_own_answer() -> None:
    """``posa.aio.Client.call`` tells the hub which reply each wait is for, as
    ``posa.aio.Peer.request`` does: one wake-up per wait at most."""
    async def main() -> None:
        hub = Hub.of(asyncio.get_running_loop())
        with posa.LocalRegistry() as reg, posa.Server(
                "aio/svc", lambda body: body, registry=reg, listen="tcp://127.0.0.1:0"):
            async with posa.aio.Client(registry=reg, timeout=60) as client:
                async def caller(k: int) -> list[Any]:
                    return [await client.call("aio/svc", (k, i)) for i in range(20)]
                await client.call("aio/svc", "first")     # the server chosen
                before = dict(hub.stats)
                got = await asyncio.gather(*(caller(k) for k in range(TASKS)))
                assert got == [[[k, i] for i in range(20)] for k in range(TASKS)]
                # a wait ends by its own answer, or runs out (a resend): never
                # woken by another task's answer to find nothing (1,865 waits so)
                waits = hub.stats["waits"] - before["waits"]
                ran_out = hub.stats["expired"] - before["expired"]
                assert waits - ran_out <= TASKS * 20, (waits, ran_out)
                _woken_alone(hub)
    asyncio.run(main())


async def _start(peer: posa.aio.Peer, victim: Proc) -> tuple[list[asyncio.Future[Any]], ...]:
    """64 tasks: a quarter hold a request the test cancels, a quarter hold one until
    the server dies, the rest call in a loop until it does."""
    async def loop_calls() -> int:
        done = 0
        while True:
            await peer.request("aio/victim", done, timeout=3)
            done += 1

    cancelled = [asyncio.ensure_future(peer.request("aio/victim", "hold", timeout=60))
                 for _ in range(TASKS // 4)]
    held = [asyncio.ensure_future(peer.request("aio/victim", "hold", timeout=3))
            for _ in range(TASKS // 4)]
    looping = [asyncio.ensure_future(loop_calls()) for _ in range(TASKS // 2)]
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, victim.expect, f"HELD {TASKS // 2}")
    return cancelled, held, looping


@pytest.mark.timeout(120)
def test_tasks_cancelled_mid_request_and_a_server_killed_leave_none_waiting(
        dispatcher: str) -> None:
    victim = Proc.python(SERVER, dispatcher)

    async def main() -> None:
        hub = Hub.of(asyncio.get_running_loop())
        with posa.RegistryClient(dispatcher) as reg:
            async with posa.aio.Peer("aio/survivor", registry=reg,
                                     listen="tcp://127.0.0.1:0") as peer:
                cancelled, held, looping = await _start(peer, victim)
                for task in cancelled:
                    task.cancel()
                for task in cancelled:
                    with pytest.raises(asyncio.CancelledError):
                        await task
                assert not any(t.done() for t in held + looping)  # the others still wait
                victim.kill()
                # every other task ends, by its own deadline at the latest: an error
                # from posa's tree, none left hanging
                ended = await asyncio.wait_for(
                    asyncio.gather(*held, *looping, return_exceptions=True), 60)
                assert all(isinstance(e, posa.PosaError) for e in ended), ended
                _woken_alone(hub)
                # and the peer goes on: a new server under another name answers
                server = posa.Peer("aio/next", registry=reg, listen="tcp://127.0.0.1:0",
                                   handler=lambda m: m.body + 1)
                try:
                    assert await asyncio.gather(*(
                        peer.request("aio/next", k, timeout=20) for k in range(TASKS))
                    ) == [k + 1 for k in range(TASKS)]
                finally:
                    server.close()
    try:
        victim.expect("READY")
        asyncio.run(main())
    finally:
        victim.close()


@pytest.mark.timeout(120)
def test_a_silent_server_gets_the_backlog_again_once_per_silence_not_once_per_task(
        dispatcher: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """16 tasks wait on a server that is stopped (SIGSTOP): each time their waits
    run out, one of them resends the unacknowledged requests, not each of them."""
    resends: list[int] = []
    resend = Target.resend

    def counted(self: Target, batch_bytes: int) -> None:
        resends.append(len(self.out))
        resend(self, batch_bytes)
    monkeypatch.setattr(Target, "resend", counted)
    victim = Proc.python(SERVER, dispatcher)

    async def main() -> None:
        hub = Hub.of(asyncio.get_running_loop())
        with posa.RegistryClient(dispatcher) as reg:
            async with posa.aio.Peer("aio/patient", registry=reg,
                                     listen="tcp://127.0.0.1:0") as peer:
                assert await peer.request("aio/victim", "first", timeout=20) == "first"
                peer.sync.sender.forwarder().ack_timeout = 0.2
                sigstop(victim.popen.pid)
                expired = hub.stats["expired"]
                tasks = [asyncio.ensure_future(peer.request("aio/victim", k, timeout=60))
                         for k in range(16)]
                await _expirations(hub, expired + 16 * 4)   # each waited 4 times or so
                victim.popen.send_signal(signal.SIGCONT)
                assert await asyncio.gather(*tasks) == list(range(16))
                ran_out = hub.stats["expired"] - expired
                assert resends and len(resends) * 4 <= ran_out, (resends, ran_out)
    try:
        victim.expect("READY")
        asyncio.run(main())
    finally:
        victim.close()


async def _expirations(hub: Hub, count: int, timeout: float = 60.0) -> None:
    """Until the hub has counted ``count`` waits that ran out (a condition polled
    on the loop, which goes on meanwhile), ``timeout`` s at most."""
    deadline = time.monotonic() + timeout
    while hub.stats["expired"] < count:
        assert time.monotonic() < deadline, f"{count} expired waits not reached: {hub.stats}"
        await asyncio.sleep(0.01)


@pytest.mark.timeout(120)
def test_a_stream_given_up_by_one_task_is_not_sent_again_by_another() -> None:
    """Two tasks share the peer's stream while the server acknowledges nothing (its
    reactor is held by a handler): the one whose deadline passes gives the stream
    up with its backlog (its ``Timeout`` is final), and the other is told so at
    once (``Timeout``) instead of sending that backlog again, the given-up request
    with it, on a new connection. What was written before may still arrive, once."""
    started, gate = threading.Event(), threading.Event()
    delivered: list[Any] = []

    def handler(msg: posa.Message) -> Any:
        delivered.append(msg.body)
        if msg.body == "hold":
            started.set()
            gate.wait(60)
        return msg.body

    async def main() -> None:
        with posa.LocalRegistry() as reg, posa.Peer(
                "aio/stuck", registry=reg, listen="tcp://127.0.0.1:0", handler=handler), \
                posa.Peer("aio/holder", registry=reg, listen="tcp://127.0.0.1:0") as other:
            async with posa.aio.Peer("aio/pair", registry=reg,
                                     listen="tcp://127.0.0.1:0") as peer:
                loop = asyncio.get_running_loop()
                holder = loop.run_in_executor(None, lambda: other.request(
                    "aio/stuck", "hold", timeout=60))
                assert await loop.run_in_executor(None, started.wait, 60)
                patient = asyncio.ensure_future(peer.request("aio/stuck", "patient",
                                                             timeout=5.0))
                with pytest.raises(posa.Timeout):
                    await peer.request("aio/stuck", "hasty", timeout=0.5)
                with pytest.raises(posa.Timeout, match="was given up"):
                    await patient           # at once: not its own deadline
                gate.set()
                await holder
                assert await peer.request("aio/stuck", "after", timeout=30) == "after"
                assert all(delivered.count(body) <= 1 for body in delivered), delivered
    asyncio.run(main())
