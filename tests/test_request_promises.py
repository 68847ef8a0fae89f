"""The promises of a request under faults: a slow handler is answered and runs once,
a gone server is left for another, expired work is not started, nested calls inherit
the caller's remaining time, a keyed retry is not run twice, SIGTERM drains."""
from __future__ import annotations

import asyncio
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

import posa
import posa.aio
from posa.errors import Rejected, Timeout
from tests.support import Proc, sigstop

pytestmark = pytest.mark.timeout(120)

SLOW_SERVER = """
import sys, threading, time, posa
dispatcher, seconds = sys.argv[1], float(sys.argv[2])
runs = []
lock = threading.Lock()
def handler(body):
    with lock:
        runs.append(body)
    print("STARTED", body, flush=True)
    time.sleep(seconds)            # the slow work itself
    return {"server": server.name, "body": body}
server = posa.Server("slow", handler, dispatcher=dispatcher)
print("READY", server.name, flush=True)
for line in sys.stdin:
    if line.strip() == "runs":
        with lock:
            print("RUNS", len(runs), flush=True)
server.close()
"""


def test_a_handler_slower_than_the_attempt_timeout_is_answered_and_runs_once(
        dispatcher: str) -> None:
    server = Proc.python(SLOW_SERVER, dispatcher, "1.5")
    try:
        server.expect("READY")
        with posa.Client(dispatcher=dispatcher, attempt_timeout=0.5) as client:
            assert client.call("slow", 7, timeout=10.0)["body"] == 7
        server.tell("runs")
        assert server.expect("RUNS") == "1"
    finally:
        server.close()


def test_a_server_that_stops_mid_request_is_left_for_another(dispatcher: str) -> None:
    servers = [Proc.python(SLOW_SERVER, dispatcher, "2.0") for _ in range(2)]
    try:
        names = [proc.expect("READY") for proc in servers]
        with posa.Client(dispatcher=dispatcher, attempt_timeout=0.5) as client, \
                ThreadPoolExecutor(1) as pool:
            call = pool.submit(client.call, "slow", 1, timeout=20.0)
            first = _started(servers)          # the server the client chose
            sigstop(first.popen.pid)       # connected, silent
            try:
                reply = call.result(30)
            finally:
                first.popen.send_signal(18)    # SIGCONT
        stopped = names[servers.index(first)]
        assert reply["server"] != stopped and reply["server"] in names
    finally:
        for proc in servers:
            proc.close()


def _started(procs: list[Proc]) -> Proc:
    """The process that prints STARTED first (each is asked in turn, bounded)."""
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        for proc in procs:
            try:
                proc.expect("STARTED", timeout=0.2)
                return proc
            except AssertionError:
                continue
    raise AssertionError("no server started the request")


def test_a_request_that_expired_while_queued_is_not_run() -> None:
    registry = posa.LocalRegistry()
    with posa.Peer("exp/server", registry=registry) as server, \
            posa.Peer("exp/client", registry=registry) as client:
        outcome: list[Any] = []
        sent = threading.Event()

        def ask() -> None:
            try:
                outcome.append(client.request("exp/server", 1, timeout=10,
                                              headers={"ttl": 20}))
            except posa.PosaError as exc:
                outcome.append(exc)
        asker = threading.Thread(target=ask)
        asker.start()
        # wait until the request sits in the inbox, then let its 20 ms pass
        deadline = time.monotonic() + 10
        while server.depths()["inbox"] == 0 and time.monotonic() < deadline:
            sent.wait(0.005)
        time.sleep(0.05)        # the deadline under test passing, not a synchronisation
        with pytest.raises(Timeout):
            server.receive(timeout=0)       # skipped: nothing to hand out
        asker.join(15)
        assert isinstance(outcome[0], Timeout) and "not run" in str(outcome[0])
        assert server.stats["expired"] == 1


INNER = """
import sys, posa
registry = posa.RegistryClient(sys.argv[1])
def handle(msg):
    print("TTL", msg.headers["ttl"], flush=True)
with posa.Peer("nest/inner", registry=registry, listen="tcp://127.0.0.1:0", handler=handle):
    print("READY", flush=True)
    sys.stdin.readline()
registry.close()
"""


def test_a_nested_request_inherits_the_callers_remaining_time(dispatcher: str) -> None:
    inner = Proc.python(INNER, dispatcher)
    registry = posa.RegistryClient(dispatcher)
    try:
        inner.expect("READY")
        with posa.Peer("nest/outer", registry=registry, listen="tcp://127.0.0.1:0") as outer, \
                posa.Peer("nest/caller", registry=registry,
                          listen="tcp://127.0.0.1:0") as caller:
            outer.serve(lambda msg: outer.request("nest/inner", None, timeout=30))
            caller.request("nest/outer", None, timeout=1.0)
        assert 0 < int(inner.expect("TTL")) <= 1000
    finally:
        registry.close()
        inner.close()


def test_a_keyed_message_sent_again_on_a_new_stream_is_delivered_once() -> None:
    registry = posa.LocalRegistry()
    with posa.Peer("key/server", registry=registry) as server, \
            posa.Peer("key/client", registry=registry) as client:
        def send() -> None:     # each thread has its own stream
            client.send("key/server", "order-1", headers={"key": "order-1"})
            client.flush()
        for _ in range(2):
            thread = threading.Thread(target=send)
            thread.start()
            thread.join(10)
        client.send("key/server", "after")
        assert server.receive(timeout=10).body == "order-1"
        assert server.receive(timeout=10).body == "after"


def test_a_keyed_request_asked_twice_runs_once_and_both_get_its_answer() -> None:
    registry = posa.LocalRegistry()
    release = threading.Event()
    runs: list[int] = []

    def handle(msg: posa.Message) -> Any:
        runs.append(msg.body)
        threading.Thread(target=lambda: (release.wait(10), server.reply(msg, "done"))).start()
        return posa.DEFERRED
    with posa.Peer("key/rserver", registry=registry, handler=handle) as server, \
            posa.Peer("key/rclient", registry=registry) as client, \
            ThreadPoolExecutor(2) as pool:
        ask = lambda: client.request("key/rserver", 1, timeout=10, headers={"key": "k"})
        first = pool.submit(ask)
        second = pool.submit(ask)
        deadline = time.monotonic() + 10
        while server.in_flight() == 0 and time.monotonic() < deadline:
            release.wait(0.005)
        release.set()
        assert first.result(10) == second.result(10) == "done"
        assert client.request("key/rserver", 2, timeout=10, headers={"key": "k"}) == "done"
        assert runs == [1]


DRAINED = """
import sys, threading, posa
from posa.ops import serve_until_signalled
dispatcher = sys.argv[1]
release = threading.Event()
def handle(msg):
    if msg.body == -1:
        return "served"             # answered at once (the probe for draining)
    print("STARTED", msg.body, flush=True)
    threading.Thread(target=lambda: (release.wait(30), peer.reply(msg, msg.body))).start()
    return posa.DEFERRED
registry = posa.RegistryClient(dispatcher)
peer = posa.Peer("drain/server", registry=registry, handler=handle,
                 listen="tcp://127.0.0.1:0")
threading.Thread(target=lambda: (sys.stdin.readline(), release.set()), daemon=True).start()
code = serve_until_signalled([peer], grace=30, ready=lambda: print("READY", flush=True))
registry.close()
raise SystemExit(code)
"""


def test_sigterm_drains_a_plain_peer_and_refuses_new_requests(dispatcher: str) -> None:
    server = Proc.python(DRAINED, dispatcher)
    registry = posa.RegistryClient(dispatcher)
    try:
        server.expect("READY")
        with posa.Peer("drain/client", registry=registry,
                       listen="tcp://127.0.0.1:0") as client, ThreadPoolExecutor(5) as pool:
            calls = [pool.submit(client.request, "drain/server", i, timeout=30)
                     for i in range(5)]
            for _ in range(5):
                server.expect("STARTED")
            server.popen.send_signal(signal.SIGTERM)
            with pytest.raises(Rejected, match="shutting down"):
                _refused(client)
            server.tell("release")
            assert sorted(call.result(30) for call in calls) == list(range(5))
        assert server.popen.wait(30) == 0
        with pytest.raises(posa.NameNotFound):
            registry.lookup("drain/server")
    finally:
        registry.close()
        server.close()


def _refused(client: posa.Peer) -> None:
    """A new request once the server is draining: SIGTERM is asynchronous, so ask
    until it is refused (each ask is answered at once while serving), for at most
    20 s."""
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        assert client.request("drain/server", -1, timeout=10) == "served"
    raise AssertionError("never refused")


@pytest.mark.parametrize("timeout", [float("inf"), float("nan")])
def test_a_request_without_a_finite_timeout_is_refused_before_it_is_sent(timeout: float) -> None:
    """A request is answered by its deadline or told Timeout, so one without a
    deadline is refused at once with a clear ValueError; nothing is sent, and the
    next request is answered (from a thread and from asyncio tasks, alone and while
    other tasks' requests wait, which join one batch)."""
    runs: list[Any] = []
    with posa.LocalRegistry() as reg, posa.Peer(
            "finite/echo", registry=reg, listen="tcp://127.0.0.1:0",
            handler=lambda m: runs.append(m.body) or m.body) as server, posa.Peer(
            "finite/caller", registry=reg, listen="tcp://127.0.0.1:0") as caller:
        with pytest.raises(ValueError, match="finite number of seconds"):
            caller.request("finite/echo", "never", timeout=timeout)
        assert caller.request("finite/echo", "next", timeout=30) == "next"

        async def tasks() -> None:
            async with posa.aio.Peer("finite/tasks", registry=reg,
                                     listen="tcp://127.0.0.1:0") as peer:
                with pytest.raises(ValueError, match="finite number of seconds"):
                    await peer.request("finite/echo", "never", timeout=timeout)
                good = [asyncio.ensure_future(peer.request("finite/echo", k, timeout=30))
                        for k in range(8)]
                await asyncio.sleep(0)      # (a turn: they are sent and wait for answers)
                with pytest.raises(ValueError, match="finite number of seconds"):
                    await peer.request("finite/echo", "never", timeout=timeout)
                assert await asyncio.gather(*good) == list(range(8))
                assert await peer.request("finite/echo", "last", timeout=30) == "last"
        asyncio.run(tasks())
        assert server.name and "never" not in runs and runs[:1] == ["next"]
