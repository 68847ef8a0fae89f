"""posa.Server, posa.Client and the channel's Publisher and Subscriber closed in a
forked child touch only the child: the parent's registration, subscription and
streams stay the parent's, and the child's close returns at once (with a real
``posa dispatcher`` process)."""
from __future__ import annotations

import os
import socket
import threading
from typing import Any

import pytest

import posa
from posa.channel.publisher import Publisher
from posa.channel.service import EventChannel
from posa.channel.subscriber import Subscriber
from posa.ops import Monitor, OpsServer
from tests.forking import held_by_a_thread
from tests.test_fork_peer import in_a_child_within
from tests.test_ops import get

pytestmark = pytest.mark.timeout(60)

SERVICE = "lab/fork-service"
CHANNEL = "lab/fork-channel"
LEASE = 600.0           # s: no renewal in a test, which would register a name again


def test_a_child_closing_an_inherited_server_leaves_the_parents_service(
        dispatcher: str) -> None:
    """Its peer stays registered and serving, a request its workers are running
    at the fork is answered, and the child does not wait for those workers."""
    started, finish = threading.Event(), threading.Event()

    def handle(body: Any) -> Any:
        if body == "slow":
            started.set()
            finish.wait(30.0)
        return body

    with posa.Server(SERVICE, handle, dispatcher=dispatcher, workers=2,
                     lease=LEASE) as server, \
            posa.Client(dispatcher=dispatcher, timeout=20.0) as client:
        assert client.call(SERVICE, "one") == "one"
        slow: list[Any] = []
        caller = threading.Thread(target=lambda: slow.append(client.call(SERVICE, "slow")))
        caller.start()
        try:
            assert started.wait(10.0)
            assert in_a_child_within(server.close) is True
        finally:
            finish.set()
            caller.join(30.0)
        assert slow == ["slow"]
        with posa.RegistryClient(dispatcher, cache=False) as third:
            assert third.lookup(server.name).addresses == server.peer.addresses
        assert client.call(SERVICE, "two") == "two"


def test_a_child_closes_an_inherited_client_while_a_parents_call_holds_its_locks(
        dispatcher: str) -> None:
    with posa.Server(SERVICE, lambda body: body, dispatcher=dispatcher,
                     lease=LEASE), \
            posa.Client(dispatcher=dispatcher) as client:
        assert client.call(SERVICE, "one") == "one"
        fwd = client.sender.forwarder()
        with held_by_a_thread(fwd.lock), held_by_a_thread(client.sender._lock):
            assert in_a_child_within(client.close) is True
        assert client.call(SERVICE, "two") == "two"


def test_a_child_closing_an_inherited_publisher_leaves_the_parents_stream(
        dispatcher: str) -> None:
    """The child neither flushes the parent's events (its close would wait for the
    parent's sending thread, absent in the child) nor reads the parent's
    acknowledgements; the parent publishes on."""
    with posa.RegistryClient(dispatcher) as reg, \
            EventChannel(CHANNEL, registry=reg, listen="tcp://127.0.0.1:0"), \
            Subscriber(CHANNEL, registry=reg, listen="tcp://127.0.0.1:0") as sub, \
            Publisher(CHANNEL, registry=reg) as pub:
        pub.publish("t", 1)
        pub.flush(10.0)
        with held_by_a_thread(pub._cond):
            assert in_a_child_within(pub.close) is True
        pub.publish("t", 2)
        pub.flush(10.0)
        assert [sub.receive(10.0).body for _ in range(2)] == [1, 2]


def test_a_child_publishing_through_an_inherited_publisher_is_told_to_make_its_own(
        dispatcher: str) -> None:
    """The parent's sending thread is not in the child: an event published there
    would wait for ever, so publish, publish_many and flush say to make a new
    Publisher (and the child's own new one reaches the channel); the parent
    publishes on, and no event of the child's reaches the parent's subscriber
    under the parent's publisher id."""
    with posa.RegistryClient(dispatcher) as reg, \
            EventChannel(CHANNEL, registry=reg, listen="tcp://127.0.0.1:0"), \
            Subscriber(CHANNEL, registry=reg, listen="tcp://127.0.0.1:0") as sub, \
            Publisher(CHANNEL, registry=reg) as pub:
        pub.publish("t", 1)
        pub.flush(10.0)

        def in_child() -> None:
            for act in (lambda: pub.publish("t", "child"),
                        lambda: pub.publish_many([("t", "child")]), lambda: pub.flush(1.0)):
                with pytest.raises(posa.Closed, match="make a new Publisher in the child"):
                    act()
            with Publisher(CHANNEL, registry=posa.RegistryClient(dispatcher)) as own:
                own.publish("t", "child's own")
                own.flush(10.0)

        assert in_a_child_within(in_child, 30.0) is True
        pub.publish("t", 2)
        pub.flush(10.0)
        got = [sub.receive(10.0).body for _ in range(3)]
        assert sorted(got, key=str) == sorted([1, "child's own", 2], key=str)
        assert got.index(1) < got.index(2)


def test_a_child_closing_an_inherited_subscriber_leaves_the_parents_subscription(
        dispatcher: str) -> None:
    with posa.RegistryClient(dispatcher) as reg, \
            EventChannel(CHANNEL, registry=reg, listen="tcp://127.0.0.1:0") as channel, \
            Subscriber(CHANNEL, registry=reg, listen="tcp://127.0.0.1:0") as sub, \
            Publisher(CHANNEL, registry=reg) as pub:
        pub.publish("t", 1)
        assert sub.receive(10.0).body == 1
        assert in_a_child_within(sub.close) is True
        assert sub.name in channel.core.subscriptions
        pub.publish("t", 2)
        assert sub.receive(10.0).body == 2


def test_a_child_closing_an_inherited_ops_server_releases_its_copy_of_the_port() -> None:
    """The parent serves on; once it closes, the port is free (no connection is
    taken) while the child still lives: the child held no copy of it."""
    with OpsServer(Monitor()) as server:
        assert get(server.url + "/health")[0] == 200
        closed, leave = os.pipe(), os.pipe()
        pid = os.fork()
        if pid == 0:                            # the child: close, say so, wait to leave
            try:
                server.close()
                os.write(closed[1], b"closed")
                os.read(leave[0], 1)
            finally:
                os._exit(0)
        try:
            assert os.read(closed[0], 6) == b"closed"
            assert get(server.url + "/health")[0] == 200
            server.close()
            with pytest.raises(ConnectionRefusedError):
                socket.create_connection((server.host, server.port), timeout=10).close()
        finally:
            os.write(leave[1], b"x")
            os.waitpid(pid, 0)
            for fd in (*closed, *leave):
                os.close(fd)
