"""Idle connections are cheap: a tcp client connection holds no read buffer of
its own (reads go to one buffer per reading thread), and an idle
``RegistryClient`` holds only what its next lookup needs, so memory per idle
connection stays within the 8 KB that issue 21 asks of a client.

Memory is counted with ``tracemalloc`` (Python's allocations, not timing): what
N more idle connections or clients add, over N.  The clients run against a real
dispatcher and make one lookup each, as the suite's row ``idle_2000`` does."""
from __future__ import annotations

import gc
import secrets
import tracemalloc
from collections.abc import Callable
from typing import Any

import posa
from posa import transport

N = 50
BUDGET = 8 * 1024           # bytes per idle connection (issue 21)
BARE = 2 * 1024             # of which a bare tcp connection: no queue, condition, poll
NAME = "idle/memory"


def _per_item(make: Callable[[], Any], count: int) -> float:
    """The Python memory ``count`` more of ``make()`` hold once made, per item."""
    held = []
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for _ in range(count):
            held.append(make())
        gc.collect()
        return (tracemalloc.get_traced_memory()[0] - before) / count
    finally:
        tracemalloc.stop()
        for item in held:
            item.close()


def test_an_idle_tcp_connection_costs_under_2_kb_of_python_memory() -> None:
    """It holds no read buffer, and none of what only a busy connection uses (a
    send queue, a condition, poll objects, a queue of frames read)."""
    listener = transport.listen("tcp://127.0.0.1:0")
    conns = []
    try:
        warm = transport.connect(listener.address)   # module state, the thread's buffer
        conns.append(warm)
        warm.send(b"warm")
        route, _ = listener.recv(10.0)
        listener.send(route, b"back")
        assert warm.recv(10.0) == b"back"

        def connect() -> Any:
            conn = transport.connect(listener.address)
            conn.recv_nowait()          # a read of nothing, as an idle client does
            return conn
        per_connection = _per_item(connect, N)
        print(f"{per_connection:.0f} bytes per idle connection")
        assert per_connection < BARE, f"{per_connection:.0f} bytes per idle connection"
    finally:
        for conn in conns:
            conn.close()
        listener.close()


def _looked_up(dispatcher: str, *, cache: bool) -> Callable[[], posa.RegistryClient]:
    """A maker of clients that have made their first lookup and are idle (a cached
    one also holds its watch, taken by the dispatcher before it returns)."""
    def make() -> posa.RegistryClient:
        client = posa.RegistryClient(dispatcher, cache=cache)
        if cache:
            client.watch(lambda name, registration: None)()     # taken, then dropped
        assert client.lookup(NAME).name == NAME
        return client
    return make


def test_an_idle_registry_client_costs_under_8_kb_per_connection(dispatcher: str) -> None:
    """One lookup each, then idle: an uncached client holds one connection (the
    row's clients), a cached one two (requests, and the watch that keeps its
    cache true); either holds under 8 KB of Python memory per connection."""
    with posa.RegistryClient(dispatcher, cache=False) as owner:
        owner.register(NAME, ["tcp://127.0.0.1:9"], credential=secrets.token_hex(8))
        for cache in (False, True):     # the modules, the reactor, what a process shares
            _looked_up(dispatcher, cache=cache)().close()
        uncached = _per_item(_looked_up(dispatcher, cache=False), N)
        cached = _per_item(_looked_up(dispatcher, cache=True), N)
    print(f"{uncached:.0f} bytes per idle client (1 connection), "
          f"{cached:.0f} per idle cached client (2 connections)")
    assert uncached < BUDGET, f"{uncached:.0f} bytes per idle client"
    assert cached < 2 * BUDGET, f"{cached:.0f} bytes per idle cached client"
