"""A forked child that closes what it inherited leaves the parent's connections be:
it never shuts down (nor reads from) a socket the parent still uses."""
from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from typing import Any

import pytest

import posa
from posa import transport
from posa.runtime.reactor import Reactor
from posa.transport.tcp.closing import reaper
from tests.forking import held_by_a_thread
from tests.test_reactor import in_forked_child

pytestmark = pytest.mark.timeout(60)

NAME = "lab/fork-inherited"
ADDRESS = "tcp://127.0.0.1:9"


@pytest.fixture
def dispatcher() -> Iterator[posa.Dispatcher]:
    with posa.Dispatcher("tcp://127.0.0.1:0") as d:
        d.registry.register(NAME, [ADDRESS], credential="c" * 16, lease=60.0)
        yield d


def test_a_child_closing_its_client_leaves_the_parents_lookup_lines(
        dispatcher: posa.Dispatcher) -> None:
    with posa.RegistryClient(dispatcher.address, cache=False) as reg:
        assert reg.lookup(NAME).name == NAME
        line = reg._lines._local.line
        conn = line._conn

        def check() -> bool:
            reg.close()             # before any lookup of its own
            return True

        assert in_forked_child(check) is True
        assert reg.lookup(NAME).name == NAME
        assert reg._lines._local.line is line and line._conn is conn    # no reconnect


def test_a_child_closes_its_client_while_parents_threads_held_its_locks(
        dispatcher: posa.Dispatcher) -> None:
    with posa.RegistryClient(dispatcher.address, cache=False) as reg:
        assert reg.lookup(NAME).name == NAME
        with held_by_a_thread(reg._lines._lock), held_by_a_thread(reg._lock):
            assert in_forked_child(lambda: closes_within(reg)) is True
        assert reg.lookup(NAME).name == NAME


def closes_within(endpoint: Any) -> bool:
    """True if ``endpoint.close()`` returns within 5 s."""
    closing = threading.Thread(target=endpoint.close, daemon=True)
    closing.start()
    closing.join(5.0)
    return not closing.is_alive()


def closed_in_a_child(endpoint: Any) -> bool | str:
    def check() -> bool:
        endpoint.close()
        return True
    return in_forked_child(check)


def test_a_child_closing_an_inherited_connection_leaves_the_parents_stream() -> None:
    listener = transport.listen("tcp://127.0.0.1:0")
    conn = transport.connect(listener.address)
    try:
        conn.send(b"one")
        route, frame = listener.recv(10.0)
        assert frame == b"one"
        assert closed_in_a_child(conn) is True      # no shutdown of the parent's socket
        conn.send(b"two")
        assert listener.recv(10.0) == (route, b"two")
        listener.send(route, b"three")
        assert conn.recv(10.0) == b"three"
    finally:
        conn.close()
        listener.close()


def test_a_child_closes_an_inherited_connection_whose_lock_a_parents_thread_holds(
        ) -> None:
    """The thread holding the lock (a sending or flushing thread of the parent) is
    not in the child: its close must not wait for that lock."""
    listener = transport.listen("tcp://127.0.0.1:0")
    conn = transport.connect(listener.address)
    try:
        with held_by_a_thread(conn._lock):      # type: ignore[attr-defined]
            assert in_forked_child(lambda: closes_within(conn)) is True
    finally:
        conn.close()
        listener.close()


def test_a_child_closing_an_inherited_listener_leaves_the_parents_connections() -> None:
    """Served from its reactor's poller, as a peer's listener is: the child neither
    ends the accepted connections nor takes them out of the (shared) poller."""
    reactor = Reactor("test-fork-inherited")
    reactor.start()
    listener = transport.listen("tcp://127.0.0.1:0")
    got: queue.Queue[tuple[Any, bytes]] = queue.Queue()

    def drain() -> None:
        while (item := listener.recv_nowait()) is not None:
            got.put(item)

    reactor.add_source(listener, drain)
    conn = transport.connect(listener.address)
    try:
        conn.send(b"one")
        route, frame = got.get(timeout=10.0)
        assert frame == b"one"
        assert closed_in_a_child(listener) is True
        conn.send(b"two")
        assert got.get(timeout=10.0) == (route, b"two")     # still watched, still read
        listener.send(route, b"three")
        assert conn.recv(10.0) == b"three"                  # and not ended
    finally:
        conn.close()
        reactor.call(listener.close)
        reactor.close()


def test_a_child_closing_a_caching_client_leaves_the_parents_watch(
        dispatcher: posa.Dispatcher) -> None:
    with posa.RegistryClient(dispatcher.address) as reg:
        assert reg.lookup(NAME).name == NAME
        watch = reg._reactor.call(lambda: reg._watch, timeout=10.0)
        assert watch is not None

        def check() -> bool | str:
            try:
                reg.close()
            except posa.PosaError as exc:
                return repr(exc)
            return True

        assert in_forked_child(check) is True
        assert reg.lookup(NAME).name == NAME
        assert reg._reactor.call(lambda: reg._watch, timeout=10.0) is watch


def test_a_child_reaps_its_own_closed_connections_not_the_parents() -> None:
    """The parent's reaper holds a closed connection (its listener has not ended
    its side) when the child is forked: the child neither reads that socket nor
    takes the parent's (absent) thread for its own, so the connections it closes
    are reaped by a thread of its own."""
    listener = transport.listen("tcp://127.0.0.1:0")
    conn = transport.connect(listener.address)
    try:
        conn.send(b"one")
        assert listener.recv(10.0)[1] == b"one"
        conn.close()                    # the reaper waits for the listener's end
        assert reaper._sockets

        def check() -> bool | str:
            if reaper._sockets or reaper._thread is not None:
                return "the parent's reaping inherited"
            own = transport.connect(listener.address)
            own.close()
            thread = reaper._thread
            return thread is not None and thread.is_alive()

        assert in_forked_child(check) is True
    finally:
        listener.close()
