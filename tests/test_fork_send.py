"""A forked child that sends, requests or calls through a Peer, Sender or Client
its parent made uses connections and streams of its own, while the parent goes
on with its own on the same object: every message of each process arrives once
and in its order, every request gets its own answer, the receiver reads no
malformed frame (with a real ``posa dispatcher`` process). What is the parent's
only (receiving, serving, migrating) raises ``Closed`` in the child."""
from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

import posa
from posa.errors import Closed
from posa.wire.codec import Kind, Message
from tests.forking import SINK, Forked, Sink, exchange, held_by_a_thread

pytestmark = pytest.mark.timeout(90)

SENDER = "lab/fork-sender"
SERVICE = "lab/fork-send-service"
ROUNDS = 300            # messages each process sends (one request every 10)
DEADLINE = 30.0         # s: far more than either process needs


@pytest.fixture
def sink_and_sender(dispatcher: str) -> Iterator[tuple[posa.Peer, posa.Peer, Sink]]:
    sink = Sink(2 * ROUNDS + 1)
    with posa.RegistryClient(dispatcher) as reg, \
            posa.Peer(SINK, registry=reg, listen="tcp://127.0.0.1:0") as receiver, \
            posa.RegistryClient(dispatcher) as sreg, \
            posa.Peer(SENDER, registry=sreg, listen="tcp://127.0.0.1:0") as peer:
        receiver.serve(sink)
        yield receiver, peer, sink


def test_a_child_sends_and_requests_through_an_inherited_peer_on_its_own_streams(
        sink_and_sender: tuple[posa.Peer, posa.Peer, Sink]) -> None:
    """The parent made its stream and connection to the sink before the fork,
    and sends from the thread that forks (in the child, that thread has the same
    number): both send and request at once, the child through the inherited peer."""
    receiver, peer, sink = sink_and_sender
    peer.send(SINK, ["parent", -1], timeout=DEADLINE)
    assert peer.request(SINK, ["parent-request", -1], timeout=DEADLINE) == \
        ["parent-request", -1]
    conn = peer.sender.forwarder()._targets[SINK].conn

    def in_the_child() -> None:
        exchange(peer, "child", ROUNDS, DEADLINE)
        peer.close()

    with Forked(in_the_child) as child:
        exchange(peer, "parent", ROUNDS, DEADLINE)
        assert child.outcome(DEADLINE) == "ok"
    assert sink.all_in.wait(DEADLINE), f"{len(sink.bodies)} of {sink.expected} arrived"
    assert sink.of("parent") == list(range(-1, ROUNDS))
    assert sink.of("child") == list(range(ROUNDS))
    assert not receiver.transport_rejections()
    assert not receiver.gatekeeper.rejections
    peer.send(SINK, ["parent", ROUNDS], timeout=DEADLINE)     # the parent goes on
    assert peer.request(SINK, "after", timeout=DEADLINE) == "after"
    assert sink.of("parent")[-1] == ROUNDS
    assert peer.sender.forwarder()._targets[SINK].conn is conn   # never broken


def test_a_child_sends_though_a_parents_thread_held_the_senders_lock_at_the_fork(
        sink_and_sender: tuple[posa.Peer, posa.Peer, Sink]) -> None:
    """A thread of the parent making a forwarder at the fork (the sender's lock),
    absent in the child, does not stop the child making its own."""
    receiver, peer, sink = sink_and_sender
    peer.send(SINK, ["parent", 0], timeout=DEADLINE)
    sink.expected = 11
    with held_by_a_thread(peer.sender._lock), \
            Forked(lambda: exchange(peer, "child", 10, DEADLINE)) as child:
        assert child.outcome(5.0) == "ok"
    assert sink.all_in.wait(DEADLINE), f"{len(sink.bodies)} of {sink.expected} arrived"
    assert sink.of("child") == list(range(10))
    assert peer.request(SINK, "after", timeout=DEADLINE) == "after"


def test_a_child_calls_through_an_inherited_client(dispatcher: str) -> None:
    """A ``posa.Client`` made before the fork (as by a prefork server at import):
    the child's calls and the parent's, at once, each get their own answer."""
    def call_all(client: posa.Client, who: str) -> None:
        for n in range(ROUNDS // 3):
            answer = client.call(SERVICE, [who, n])
            if answer != [who, n]:
                raise AssertionError(f"{who} called with {n}, was answered {answer!r}")

    with posa.Server(SERVICE, lambda body: body, dispatcher=dispatcher) as server, \
            posa.Client(dispatcher=dispatcher, timeout=DEADLINE) as client:
        assert client.call(SERVICE, "before") == "before"
        def in_the_child() -> None:
            call_all(client, "child")
            client.close()

        with Forked(in_the_child) as child:
            call_all(client, "parent")
            assert child.outcome(DEADLINE) == "ok"
        assert not server.peer.transport_rejections()
        assert client.call(SERVICE, "after") == "after"


@pytest.mark.parametrize("use", [
    lambda peer: peer.serve(lambda msg: None),
    lambda peer: peer.migrate("tcp://127.0.0.1:0"),
    lambda peer: peer.receive(0),
    lambda peer: peer.reply(Message(Kind.REQUEST, "x", SINK, id=1, stream=1)),
], ids=["serve", "migrate", "receive", "reply"])
def test_a_child_may_not_receive_serve_or_migrate_with_an_inherited_peer(
        sink_and_sender: tuple[posa.Peer, posa.Peer, Sink],
        use: Callable[[posa.Peer], object]) -> None:
    """The listeners, the inbox and the reactor that reads them are the parent's:
    the child is told to make a Peer of its own; the parent's peer is unchanged."""
    receiver, peer, sink = sink_and_sender

    def refused() -> None:
        try:
            use(receiver)
        except Closed as exc:
            if "make a new Peer in the child" not in str(exc):
                raise AssertionError(f"unclear: {exc}") from exc
            return
        raise AssertionError("not refused")

    with Forked(refused) as child:
        assert child.outcome(DEADLINE) == "ok"
    peer.send(SINK, ["parent", 0], timeout=DEADLINE)
    assert peer.request(SINK, "after", timeout=DEADLINE) == "after"
    assert sink.of("parent") == [0]
