"""posa.aio: the same surface, awaitable."""
from __future__ import annotations

import asyncio
import socket
import threading
import time
from typing import Any

import pytest

import posa
import posa.aio


def run(coro: object) -> object:
    return asyncio.run(coro)  # type: ignore[arg-type]


@pytest.mark.parametrize("listen", ["tcp://127.0.0.1:0", "zmq+tcp://127.0.0.1:0"])
def test_request_send_receive_and_flush(listen: str) -> None:
    async def main() -> None:
        with posa.LocalRegistry() as reg:
            server = posa.Peer("aio/server", registry=reg, listen=listen)
            server.serve(lambda m: {"twice": m.body * 2})
            try:
                async with posa.aio.Peer("aio/client", registry=reg, listen=listen) as c:
                    assert [await c.request("aio/server", i) for i in range(50)] == [
                        {"twice": 2 * i} for i in range(50)]
                    server.serve(lambda m: None)
                    for i in range(300):
                        await c.send("aio/server", i)
                    await c.flush(5)
                    server.send("aio/client", "back")
                    assert (await c.receive(timeout=5)).body == "back"
                    with pytest.raises(posa.Timeout):
                        await c.receive(timeout=0.05)
            finally:
                server.close()
    run(main())


def test_coroutine_handlers_reply_and_errors_cross() -> None:
    async def main() -> None:
        with posa.LocalRegistry() as reg:
            async with posa.aio.Peer("aio/svc", registry=reg) as svc, \
                       posa.aio.Peer("aio/user", registry=reg) as user:
                async def handler(msg: posa.Message) -> object:
                    await asyncio.sleep(0)
                    if msg.body == "bad":
                        raise posa.Rejected("no bad requests")
                    return msg.body.upper()
                svc.serve(handler)
                assert await user.request("aio/svc", "hello", timeout=5) == "HELLO"
                with pytest.raises(posa.Rejected, match="no bad requests"):
                    await user.request("aio/svc", "bad", timeout=5)
                with pytest.raises(posa.Timeout):
                    svc.serve(lambda m: posa.DEFERRED)
                    await user.request("aio/svc", "never", timeout=0.2)
    run(main())


class _Readers:
    """Records the loop's ``add_reader``/``remove_reader`` calls: asyncio keeps one
    reader per descriptor, so adding one where one is registered replaces it."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.registered: set[int] = set()
        self.replaced: list[int] = []
        add, remove = loop.add_reader, loop.remove_reader

        def add_reader(fd: int, callback: Any, *args: Any) -> None:
            if fd in self.registered:
                self.replaced.append(fd)
            self.registered.add(fd)
            add(fd, callback, *args)

        def remove_reader(fd: int) -> bool:
            self.registered.discard(fd)
            return remove(fd)
        loop.add_reader = add_reader  # type: ignore[method-assign]
        loop.remove_reader = remove_reader  # type: ignore[method-assign]


class _Barrier:
    """A handler that answers no request until ``count`` have arrived: requests
    that do not travel together never complete."""

    def __init__(self, peer: posa.Peer, count: int) -> None:
        self.peer, self.count = peer, count
        self.held: list[posa.Message] = []
        self.arrived = threading.Event()

    def __call__(self, msg: posa.Message) -> object:
        self.held.append(msg)
        if len(self.held) >= self.count:
            self.arrived.set()
            for held in self.held:
                self.peer.reply(held, held.body * 10)
            self.held.clear()
        return posa.DEFERRED


async def _until(condition: Any, timeout: float = 20.0) -> None:
    """Wait on the loop until ``condition()`` holds (AssertionError after ``timeout``)."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.005)


@pytest.mark.parametrize("listen", ["tcp://127.0.0.1:0", "zmq+tcp://127.0.0.1:0"])
def test_ten_tasks_share_one_peer_and_their_requests_travel_together(listen: str) -> None:
    async def main() -> None:
        readers = _Readers(asyncio.get_running_loop())
        with posa.LocalRegistry() as reg:
            server = posa.Peer("aio/barrier", registry=reg, listen=listen)
            barrier = _Barrier(server, 10)
            server.serve(barrier)
            try:
                async with posa.aio.Peer("aio/many", registry=reg, listen=listen) as peer:
                    for round_ in range(5):
                        replies = await asyncio.gather(*(
                            peer.request("aio/barrier", round_ * 100 + k, timeout=60)
                            for k in range(10)))
                        assert replies == [(round_ * 100 + k) * 10 for k in range(10)]
            finally:
                server.close()
        # every waiting task was woken through one reader per descriptor
        assert readers.replaced == []
    run(main())


def test_a_send_waiting_for_a_full_window_leaves_the_loop_running() -> None:
    async def main() -> None:
        with posa.LocalRegistry() as reg:
            # no handler and a tiny inbox: once two messages wait in it the
            # receiver stops reading, so nothing more is acknowledged
            slow = posa.Peer("aio/slow", registry=reg, listen="tcp://127.0.0.1:0",
                             inbox_size=2)
            try:
                async with posa.aio.Peer("aio/eager", registry=reg, window=4,
                                         listen="tcp://127.0.0.1:0") as peer:
                    async def send_all() -> None:
                        for i in range(40):
                            await peer.send("aio/slow", i, timeout=20)
                    sending = asyncio.ensure_future(send_all())
                    fwd = peer.sync.sender.forwarder()
                    await _until(lambda: fwd.unacknowledged() >= 3 or sending.done())
                    ticks = 0
                    while ticks < 50 and not sending.done():
                        await asyncio.sleep(0.001)   # a ticker: it runs only if the loop does
                        ticks += 1
                    assert ticks == 50 and not sending.done()
                    got = await asyncio.get_running_loop().run_in_executor(
                        None, lambda: [slow.receive(timeout=20).body for _ in range(40)])
                    await asyncio.wait_for(sending, 30)
                    assert got == list(range(40))
            finally:
                slow.close()
    run(main())


def test_cancelling_a_waiting_task_keeps_the_others_waiting_and_the_peer_usable() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        readers = _Readers(loop)
        with posa.LocalRegistry() as reg:
            server = posa.Peer("aio/held", registry=reg, listen="tcp://127.0.0.1:0")
            barrier = _Barrier(server, 3)
            server.serve(barrier)
            try:
                async with posa.aio.Peer("aio/canceller", registry=reg,
                                         listen="tcp://127.0.0.1:0") as peer:
                    first = asyncio.ensure_future(peer.request("aio/held", 1, timeout=60))
                    second = asyncio.ensure_future(peer.request("aio/held", 2, timeout=60))
                    await _until(lambda: len(barrier.held) == 2)
                    fd = peer.sync.sender.forwarder().connection("aio/held").fileno()
                    second.cancel()
                    with pytest.raises(asyncio.CancelledError):
                        await second
                    assert fd in readers.registered     # the first still waits on it
                    third = asyncio.ensure_future(peer.request("aio/held", 3, timeout=60))
                    assert await first == 10 and await third == 30
                    server.serve(lambda m: m.body + 1)
                    assert await peer.request("aio/held", 4, timeout=60) == 5
            finally:
                server.close()
    run(main())


def test_server_and_client_round_trips_with_plain_and_coroutine_handlers() -> None:
    async def main() -> None:
        with posa.LocalRegistry() as reg:
            async def shout(body: str) -> str:
                await asyncio.sleep(0)
                if body == "bad":
                    raise ValueError("no bad requests")
                return body.upper()
            async with posa.aio.Server("svc/shout", shout, registry=reg), \
                       posa.aio.Server("svc/add", lambda body: body + 1, registry=reg), \
                       posa.aio.Client(registry=reg, timeout=30) as client:
                assert await client.call("svc/shout", "hi") == "HI"
                assert await client.call("svc/add", 41) == 42
                with pytest.raises(posa.RemoteError, match="no bad requests"):
                    await client.call("svc/shout", "bad")
                with pytest.raises(posa.NameNotFound):
                    await client.call("svc/none", 1, timeout=5)
                # the blocking Client finds an asyncio server alike
                sync = posa.Client(registry=reg, timeout=30)
                try:
                    answer = await asyncio.get_running_loop().run_in_executor(
                        None, sync.call, "svc/shout", "sync")
                finally:
                    sync.close()
                assert answer == "SYNC"
    run(main())


def test_a_coroutine_handler_serves_concurrent_calls_concurrently() -> None:
    async def main() -> None:
        entered = 0
        all_in = asyncio.Event()

        async def gather_then_answer(body: int) -> int:
            nonlocal entered
            entered += 1
            if entered == 8:
                all_in.set()
            await all_in.wait()     # no call is answered until all 8 run at once
            return body * 2
        with posa.LocalRegistry() as reg:
            async with posa.aio.Server("svc/together", gather_then_answer, registry=reg), \
                       posa.aio.Client(registry=reg, timeout=60) as client:
                results = await asyncio.gather(*(client.call("svc/together", k)
                                                  for k in range(8)))
                assert results == [k * 2 for k in range(8)]
    run(main())


def test_a_client_fails_over_to_another_server_on_the_loop() -> None:
    async def main() -> None:
        with posa.LocalRegistry() as reg:
            first = posa.aio.Server("svc/twice", lambda body: ["first", body], registry=reg)
            second = posa.aio.Server("svc/twice", lambda body: ["second", body], registry=reg)
            async with posa.aio.Client(registry=reg, timeout=30) as client:
                who, _ = await client.call("svc/twice", 1)
                chosen, other = (first, second) if who == "first" else (second, first)
                await chosen.close()
                assert await client.call("svc/twice", 2) == [
                    "second" if chosen is first else "first", 2]
            await other.close()
    run(main())


def test_a_coroutine_handler_s_calls_inherit_the_request_s_time_left() -> None:
    async def main() -> None:
        with posa.LocalRegistry() as reg:
            inner = posa.Peer("aio/inner", registry=reg)
            inner.serve(lambda m: m.headers["ttl"])     # the time its requester gives it
            try:
                async with posa.aio.Peer("aio/outer", registry=reg) as outer, \
                           posa.aio.Peer("aio/caller", registry=reg) as caller:
                    async def relay(msg: posa.Message) -> object:
                        return await outer.request("aio/inner", None, timeout=30)
                    outer.serve(relay)
                    ttl = await caller.request("aio/outer", None, timeout=4)
                    assert 0 < ttl <= 4000
            finally:
                inner.close()
    run(main())


def _dead_address() -> str:
    """A tcp address nobody listens on (connections to it are refused)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"tcp://127.0.0.1:{sock.getsockname()[1]}"


async def _runs_while(task: asyncio.Future[Any], ticks: int = 20) -> None:
    """Tick the loop while ``task`` is pending: it backs off on the loop if the
    ticker gets all its turns before ``task`` ends (a blocking back-off holds the
    loop until the task's deadline, and the ticker finds it done)."""
    for _ in range(ticks):
        await asyncio.sleep(0.001)
        assert not task.done(), "the back-off held the loop until the deadline"


@pytest.mark.parametrize("call", ["send", "request"])
def test_first_contact_with_an_unreachable_peer_backs_off_on_the_loop(call: str) -> None:
    """A name registered at an address that refuses connections (its process
    died, its lease runs): first contact retries until the deadline without
    blocking the loop, then raises Timeout."""
    async def main() -> None:
        with posa.LocalRegistry() as reg:
            reg.register("aio/ghost", [_dead_address()], credential="c", lease=60)
            async with posa.aio.Peer("aio/caller", registry=reg,
                                     listen="tcp://127.0.0.1:0") as peer:
                attempt = getattr(peer, call)("aio/ghost", "hello", timeout=3)
                task = asyncio.ensure_future(attempt)
                await _runs_while(task)
                with pytest.raises(posa.Timeout, match="aio/ghost"):
                    await asyncio.wait_for(task, 30)
    run(main())


@pytest.mark.parametrize("call", ["send", "request"])
def test_recovering_from_a_peer_gone_backs_off_on_the_loop(call: str) -> None:
    """The peer an aio peer talks to goes away: recovery (re-resolve, reconnect,
    resend) retries until the deadline without blocking the loop."""
    async def main() -> None:
        with posa.LocalRegistry() as reg:
            gone = posa.Peer("aio/gone", registry=reg, listen="tcp://127.0.0.1:0")
            gone.serve(lambda m: m.body)
            async with posa.aio.Peer("aio/caller", registry=reg,
                                     listen="tcp://127.0.0.1:0") as peer:
                assert await peer.request("aio/gone", "first", timeout=10) == "first"
                address = gone.address
                gone.close()        # its address stays registered, as after a crash
                reg.register("aio/gone", [address], credential="c", lease=60)
                async def send_and_flush() -> None:
                    await peer.send("aio/gone", "second", timeout=3)   # may be written
                    await peer.flush(3)
                task = asyncio.ensure_future(
                    send_and_flush() if call == "send"
                    else peer.request("aio/gone", "second", timeout=3))
                await _runs_while(task)
                with pytest.raises(posa.Timeout, match="aio/gone"):
                    await asyncio.wait_for(task, 30)
    run(main())
