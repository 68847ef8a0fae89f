"""An object closed from another thread while a call of it is blocked, waiting
for something that does not come (nothing to receive, a target that does not
answer or is SIGSTOPped, a full window, an empty queue): the close returns
promptly, the blocked call ends promptly with ``Closed`` (a worker's ``run``
returns), and no thread is left. Each case starts the call on a thread, waits
until the call is under way, then closes; the calls' own timeouts are
``TIMEOUT``, so a call that only ends at its deadline fails the bound."""
from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest

import posa
import posa.aio
from posa.delivery.gather import Gatherer
from posa.naming.registration import resolver
from tests.support import Proc, sigstop, start_dispatcher

pytestmark = pytest.mark.timeout(180)

TIMEOUT = 60.0      # s the calls here may take: the close must end them long before
BOUND = TIMEOUT / 4

CASES: dict[str, Any] = {}     # name -> a context manager of (the call, the close)


def case(fn: Any) -> Any:
    """Register a case: a generator yielding the blocking call and the close."""
    CASES[fn.__name__] = contextlib.contextmanager(fn)
    return fn


@contextlib.contextmanager
def _silent() -> Iterator[str]:
    """A loopback address that takes connections (the kernel's backlog) and
    never reads nor answers."""
    with socket.create_server(("127.0.0.1", 0)) as server:
        yield f"tcp://127.0.0.1:{server.getsockname()[1]}"


@contextlib.contextmanager
def _stopped(proc: Proc) -> Iterator[None]:
    sigstop(proc.popen.pid)
    try:
        yield
    finally:
        os.kill(proc.popen.pid, signal.SIGCONT)


@case
def peer_receive(registry: posa.LocalRegistry) -> Iterator[Any]:
    with posa.Peer("close/receiver", registry=registry, linger=0.5) as peer:
        yield (lambda: peer.receive(timeout=TIMEOUT)), peer.close


@case
def peer_receive_forever(registry: posa.LocalRegistry) -> Iterator[Any]:
    with posa.Peer("close/receiver", registry=registry, linger=0.5) as peer:
        yield peer.receive, peer.close


@case
def peer_request_unanswered(registry: posa.LocalRegistry) -> Iterator[Any]:
    with posa.Peer("close/mute", registry=registry, handler=lambda msg: posa.DEFERRED), \
            posa.Peer("close/asker", registry=registry, linger=0.5) as peer:
        yield (lambda: peer.request("close/mute", 1, timeout=TIMEOUT)), peer.close


def _fill_then(peer: posa.Peer, last: Callable[[], Any]) -> Callable[[], Any]:
    def call() -> Any:
        for n in range(4):                  # window 1: the second send waits
            peer.send("close/silent", n, timeout=TIMEOUT)
        return last()
    return call


@case
def peer_send_window_full(registry: posa.LocalRegistry) -> Iterator[Any]:
    with _silent() as address:
        registry.register("close/silent", (address,), credential="owner")
        with posa.Peer("close/sender", registry=registry, window=1, linger=0.5) as peer:
            yield _fill_then(peer, lambda: None), peer.close


STOPPED_PEER = """
import sys, posa
reg = posa.RegistryClient(sys.argv[1])
with posa.Peer("close/stopped", registry=reg, listen="tcp://127.0.0.1:0") as peer:
    print("ready", flush=True)
    sys.stdin.readline()
"""


def _to_stopped(method: str) -> Callable[[posa.LocalRegistry], Iterator[Any]]:
    def run(registry: posa.LocalRegistry) -> Iterator[Any]:
        proc, address = start_dispatcher()
        target = Proc.python(STOPPED_PEER, address)
        try:
            target.expect("ready", timeout=30)
            with posa.RegistryClient(address) as reg, \
                    posa.Peer("close/caller", registry=reg, window=1, linger=0.5) as peer:
                peer.send("close/stopped", 0, timeout=TIMEOUT)
                peer.flush(timeout=TIMEOUT)     # connected before the target stops
                with _stopped(target):
                    if method == "send":
                        def call() -> Any:
                            for n in range(4):  # window 1: the second send waits
                                peer.send("close/stopped", n, timeout=TIMEOUT)
                    else:
                        def call() -> Any:
                            return peer.request("close/stopped", 1, timeout=TIMEOUT)
                    yield call, peer.close
        finally:
            target.close()
            proc.close()
    run.__name__ = f"peer_{method}_to_stopped_peer"
    return run


case(_to_stopped("send"))
case(_to_stopped("request"))


@case
def peer_flush(registry: posa.LocalRegistry) -> Iterator[Any]:
    with _silent() as address:
        registry.register("close/silent", (address,), credential="owner")
        with posa.Peer("close/sender", registry=registry, linger=0.5) as peer:
            def call() -> None:
                peer.send("close/silent", 1, timeout=TIMEOUT)
                peer.flush(timeout=TIMEOUT)
            yield call, peer.close


@case
def registry_lookup_stopped(registry: posa.LocalRegistry) -> Iterator[Any]:
    proc, address = start_dispatcher()
    try:
        with posa.RegistryClient(address, timeout=TIMEOUT) as client:
            client.names()                  # connected before the dispatcher stops
            with _stopped(proc):
                yield (lambda: client.lookup("close/nobody")), client.close
    finally:
        proc.close()


@case
def registry_watch_stopped(registry: posa.LocalRegistry) -> Iterator[Any]:
    proc, address = start_dispatcher()
    try:
        with posa.RegistryClient(address, timeout=TIMEOUT, cache=False) as client:
            client.names()                  # connected before the dispatcher stops
            with _stopped(proc):
                yield (lambda: client.watch(lambda name, registration: None)), client.close
    finally:
        proc.close()


@case
def subscriber_receive(registry: posa.LocalRegistry) -> Iterator[Any]:
    with posa.EventChannel("close/ch", registry=registry), \
            posa.Subscriber("close/ch", registry=registry) as sub:
        yield (lambda: sub.receive(timeout=TIMEOUT)), sub.close


@case
def subscriber_receive_many(registry: posa.LocalRegistry) -> Iterator[Any]:
    with posa.EventChannel("close/ch", registry=registry), \
            posa.Subscriber("close/ch", registry=registry) as sub:
        yield (lambda: sub.receive_many(10, timeout=TIMEOUT)), sub.close


@case
def publisher_flush_stopped(registry: posa.LocalRegistry) -> Iterator[Any]:
    proc, address = start_dispatcher()
    channel = Proc.posa("channel", "close/ch", "--dispatcher", address, "--listen",
                        "tcp://127.0.0.1:0")
    try:
        channel.expect("channel close/ch at", timeout=30)
        with posa.Publisher("close/ch", dispatcher=address, timeout=TIMEOUT) as pub:
            pub.publish("t", 0)
            pub.flush(timeout=TIMEOUT)      # the channel known before it stops
            with _stopped(channel):
                def call() -> None:
                    pub.publish("t", 1)
                    pub.flush(timeout=TIMEOUT)
                yield call, (lambda: pub.close(timeout=1.0))
    finally:
        channel.close()
        proc.close()


@case
def client_call_unanswered(registry: posa.LocalRegistry) -> Iterator[Any]:
    release = threading.Event()
    try:
        with posa.Server("close/svc", lambda body: release.wait(TIMEOUT), registry=registry), \
                posa.Client(registry=registry, timeout=TIMEOUT,
                            attempt_timeout=TIMEOUT) as client:
            yield (lambda: client.call("close/svc", 1)), client.close
            release.set()
    finally:
        release.set()


@case
def worker_take_empty_queue(registry: posa.LocalRegistry) -> Iterator[Any]:
    with posa.WorkQueue("close/q", registry=registry):
        worker = posa.Worker("close/q/w", "close/q", lambda item: None,
                             registry=registry, wait=TIMEOUT, timeout=TIMEOUT)
        try:
            yield worker.run, worker.close
        finally:
            worker.close()


@case
def workqueue_join_unworked(registry: posa.LocalRegistry) -> Iterator[Any]:
    with posa.WorkQueue("close/q", registry=registry) as queue:
        queue.put({"item": 1})             # pending, and no worker takes it
        yield (lambda: queue.join(TIMEOUT)), queue.close


@case
def gatherer_unanswered(registry: posa.LocalRegistry) -> Iterator[Any]:
    with posa.Peer("close/mute", registry=registry, handler=lambda msg: posa.DEFERRED), \
            Gatherer(resolver(registry)) as gatherer:
        yield (lambda: gatherer.gather(["close/mute"], 1, timeout=TIMEOUT)), gatherer.close


def _aio(method: str) -> Callable[[posa.LocalRegistry], Iterator[Any]]:
    def run(registry: posa.LocalRegistry) -> Iterator[Any]:
        loop = asyncio.new_event_loop()
        looping = threading.Thread(target=loop.run_forever, daemon=True)
        looping.start()

        def on_loop(coro: Any, bound: float = BOUND) -> Any:
            return asyncio.run_coroutine_threadsafe(coro, loop).result(bound)
        release = threading.Event()
        try:
            with posa.Peer("close/mute", registry=registry, handler=lambda msg: posa.DEFERRED), \
                    posa.Server("close/svc", lambda body: release.wait(TIMEOUT),
                                registry=registry), \
                    posa.EventChannel("close/ch", registry=registry):
                peer = on_loop(_open_aio(method, registry))
                if method == "receive":
                    coro: Callable[[], Any] = lambda: peer.receive(timeout=TIMEOUT)
                elif method == "subscriber":
                    coro = lambda: peer.receive(timeout=TIMEOUT)
                elif method == "request":
                    coro = lambda: peer.request("close/mute", 1, timeout=TIMEOUT)
                else:
                    coro = lambda: peer.call("close/svc", 1)
                try:
                    yield (lambda: asyncio.run_coroutine_threadsafe(coro(), loop).result()), \
                        (lambda: on_loop(peer.close()))
                finally:       # (a close waiting for a call waits for its timeout)
                    on_loop(peer.close(), TIMEOUT + BOUND)
        finally:
            release.set()
            loop.call_soon_threadsafe(loop.stop)
            looping.join(BOUND)
            loop.close()
    run.__name__ = f"aio_{method}"
    return run


async def _open_aio(method: str, registry: posa.LocalRegistry) -> Any:
    if method == "subscriber":
        return posa.aio.Subscriber("close/ch", registry=registry)
    if method == "call":
        return posa.aio.Client(registry=registry, timeout=TIMEOUT, attempt_timeout=TIMEOUT)
    return await posa.aio.Peer.open("close/aio", registry=registry, linger=0.5)


case(_aio("receive"))
case(_aio("request"))
case(_aio("call"))
case(_aio("subscriber"))


XFAIL = {
    "aio_subscriber": "posa.runtime.offload runs an asyncio proxy's close on its one "
                      "worker thread, behind the receive that thread is blocked in: the "
                      "close waits for the receive's timeout (the close needs a thread "
                      "of its own, kept fork-safe)",
}


@pytest.mark.parametrize("name", [
    pytest.param(name, marks=pytest.mark.xfail(strict=True, reason=XFAIL[name]))
    if name in XFAIL else name for name in CASES])
def test_a_close_ends_a_blocked_call(registry: posa.LocalRegistry, name: str) -> None:
    with CASES[name](registry) as (call, close):
        outcome: list[Any] = []
        calling = threading.Event()

        def make_the_call() -> None:
            calling.set()
            try:
                outcome.append(("returned", call()))
            except Exception as exc:        # the outcome is what the test checks
                outcome.append(exc)

        caller = threading.Thread(target=make_the_call, daemon=True)
        caller.start()
        assert calling.wait(30)
        caller.join(1.0)
        assert caller.is_alive(), f"the call did not wait: {outcome}"
        closed: list[Any] = []

        def close_it() -> None:
            try:
                closed.append(close())
            except Exception as exc:        # (a close that timed out: what it says)
                closed.append(exc)

        closing = threading.Thread(target=close_it, daemon=True)
        closing.start()
        closing.join(BOUND)
        assert not closing.is_alive(), "close() waited for the blocked call"
        caller.join(BOUND)
        assert not caller.is_alive(), "the call went on after the close"
    assert len(outcome) == 1, outcome
    if name == "publisher_flush_stopped":   # its close says what it could not deliver
        assert isinstance(closed[0], posa.Timeout), closed
        assert "publisher closed with 1 event(s)" in str(closed[0])
    else:
        assert closed == [None], closed
    if name == "worker_take_empty_queue":
        assert outcome[0] == ("returned", 0), outcome
    else:
        assert isinstance(outcome[0], posa.Closed), outcome
