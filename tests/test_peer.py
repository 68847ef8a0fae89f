"""Forwarder-Receiver peers in one process, on every transport."""
from __future__ import annotations

import threading
from typing import Any

import pytest

import posa
from posa import Kind
from posa import transport as posa_transport
from posa.naming.hosts import reachable
from posa.wire.codec import Codec
from tests.support import wait_until

TRANSPORTS = ["inproc://{n}", "tcp://127.0.0.1:0", "zmq+tcp://127.0.0.1:0", "zmq+ipc://{tmp}/{n}"]


def listen(template: str, name: str, tmp_path: object) -> str:
    return template.format(n=name.replace("/", "-"), tmp=tmp_path)


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_send_receive_request_reply(transport: str, registry: posa.LocalRegistry,
                                    tmp_path: object) -> None:
    with posa.Peer("net/a", registry=registry, listen=listen(transport, "a", tmp_path)) as a, \
         posa.Peer("net/b", registry=registry, listen=listen(transport, "b", tmp_path)) as b:
        assert a.send("net/b", {"event": "link-down", "port": 3}) == 1
        msg = b.receive(timeout=5)
        assert (msg.kind, msg.sender, msg.recipient, msg.body) == (
            Kind.SEND, "net/a", "net/b", {"event": "link-down", "port": 3})
        b.serve(lambda m: {"echo": m.body})
        assert a.request("net/b", [1, 2], timeout=5) == {"echo": [1, 2]}
        for i in range(2000):
            a.send("net/b", i)
        a.flush(10)


def test_order_and_completeness_of_a_stream(registry: posa.LocalRegistry) -> None:
    with posa.Peer("net/a", registry=registry, listen="tcp://127.0.0.1:0") as a, \
         posa.Peer("net/b", registry=registry, listen="zmq+tcp://127.0.0.1:0") as b:
        for i in range(5000):
            a.send("net/b", i)
        got = [b.receive(timeout=5).body for _ in range(5000)]
        assert got == list(range(5000))
        with pytest.raises(posa.Timeout, match="no message for 'net/b'"):
            b.receive(timeout=0.05)


def test_group_send_reaches_every_member_but_the_sender(registry: posa.LocalRegistry) -> None:
    peers = [posa.Peer(f"net/site-a/r{i}", registry=registry) for i in range(4)]
    other = posa.Peer("net/site-b/r0", registry=registry)
    try:
        assert peers[0].send("net/site-a/*", "config-changed") == 3
        for p in peers[1:]:
            assert p.receive(timeout=5).body == "config-changed"
        assert peers[0].send("net/**", "all") == 4
        with pytest.raises(posa.Timeout):
            peers[0].receive(timeout=0.05)
        assert other.receive(timeout=5).body == "all"
    finally:
        for p in peers + [other]:
            p.close()


def test_errors_say_what_to_do(registry: posa.LocalRegistry) -> None:
    with posa.Peer("net/a", registry=registry) as a:
        with pytest.raises(posa.InvalidName, match="segments"):
            posa.Peer("net//b", registry=registry)
        with pytest.raises(posa.NameNotFound, match="net/nobody"):
            a.send("net/nobody", 1)
        with pytest.raises(posa.InvalidName, match="use send"):
            a.request("net/*", 1)
        with posa.Peer("net/b", registry=registry) as b:
            def fail(msg: posa.Message) -> None:
                raise ValueError("bad route table")
            b.serve(fail)
            with pytest.raises(posa.RemoteError, match="ValueError: bad route table"):
                a.request("net/b", 1, timeout=5)
            b.serve(lambda m: (_ for _ in ()).throw(posa.Unauthorized("not you")))
            with pytest.raises(posa.Unauthorized, match="not you"):
                a.request("net/b", 1, timeout=5)


def test_deferred_replies_from_another_thread(registry: posa.LocalRegistry) -> None:
    with posa.Peer("net/a", registry=registry) as a, posa.Peer("net/b", registry=registry) as b:
        workers: list[threading.Thread] = []

        def later(msg: posa.Message) -> object:
            worker = threading.Thread(target=b.reply, args=(msg, msg.body * 2))
            workers.append(worker)
            worker.start()
            return posa.DEFERRED
        b.serve(later)
        assert a.request("net/b", 21, timeout=5) == 42
        for worker in workers:
            worker.join(5)


@pytest.mark.parametrize("transport", ["inproc://{n}", "tcp://127.0.0.1:0"])
def test_a_reply_stands_for_the_acknowledgement_of_its_request(
        transport: str, registry: posa.LocalRegistry, tmp_path: object) -> None:
    """A stream whose newest message is a request gets its REPLY and no ACK (the
    requester takes the REPLY for one); a stream of sends is acknowledged."""
    codec = Codec()
    delivered = threading.Event()
    b = posa.Peer("net/b", registry=registry, listen=listen(transport, "b", tmp_path))
    b.serve(lambda m: m.body if m.kind == Kind.REQUEST else delivered.set())
    conn = posa_transport.connect(b.address)
    try:
        conn.send(codec.pack(Kind.SEND, 8, 1, "net/a", "net/b", 0, {}, "note"))
        assert delivered.wait(5)
        conn.send(codec.pack(Kind.REQUEST, 7, 1, "net/a", "net/b", 0, {}, "ping"))
        answers = [codec.decode(conn.recv(5))]
        while answers[-1].kind != Kind.REPLY:
            answers.append(codec.decode(conn.recv(5)))
        b.close()                  # acknowledges whatever is still unacknowledged
        with pytest.raises(posa.Closed):
            while True:
                answers.append(codec.decode(conn.recv(5)))
    finally:
        conn.close()
        b.close()
    assert [(m.correlation, m.body) for m in answers if m.kind == Kind.REPLY] == [(1, "ping")]
    assert [(m.stream, m.id) for m in answers if m.kind == Kind.ACK] == [(8, 1)]


def test_request_times_out_naming_the_target(registry: posa.LocalRegistry) -> None:
    with posa.Peer("net/a", registry=registry) as a, posa.Peer("net/b", registry=registry) as b:
        b.serve(lambda m: posa.DEFERRED)  # never answers
        with pytest.raises(posa.Timeout, match="no reply from 'net/b'"):
            a.request("net/b", 1, timeout=0.3)


def test_a_second_registrant_is_refused_and_the_owner_keeps_receiving(
        registry: posa.LocalRegistry) -> None:
    with posa.Peer("net/a", registry=registry) as a, posa.Peer("net/b", registry=registry) as b:
        with pytest.raises(posa.Unauthorized, match="net/b"):
            posa.Peer("net/b", registry=registry, listen="inproc://hijack")
        a.send("net/b", "still mine")
        assert b.receive(timeout=5).body == "still mine"


def test_close_unregisters_at_once(registry: posa.LocalRegistry) -> None:
    b = posa.Peer("net/b", registry=registry)
    assert registry.lookup("net/b").addresses == (b.address,)
    b.close()
    with pytest.raises(posa.NameNotFound):
        registry.lookup("net/b")
    with pytest.raises(posa.Closed):
        b.receive(timeout=1)


@pytest.mark.parametrize("hops", [
    ["tcp://127.0.0.1:0", "zmq+tcp://127.0.0.1:0", "zmq+ipc://{tmp}/m", "inproc://m"],
    ["zmq+ipc://{tmp}/m1", "tcp://127.0.0.1:0", "zmq+tcp://127.0.0.1:0"],
])
def test_migration_under_load_loses_nothing_and_duplicates_nothing(
        hops: list[str], registry: posa.LocalRegistry, tmp_path: object) -> None:
    with posa.Peer("net/a", registry=registry, listen="tcp://127.0.0.1:0") as a, \
         posa.Peer("net/b", registry=registry, listen="inproc://start") as b:
        received: list[int] = []
        b.serve(lambda m: received.append(m.body))
        total, per_hop = 6000, 6000 // (len(hops) + 1)
        for i in range(total):
            a.send("net/b", i)
            if i % per_hop == per_hop - 1 and hops:
                b.migrate(hops.pop(0).format(tmp=tmp_path), grace=0.5)
        a.flush(10)
        assert received == list(range(total))
        assert b.epoch >= 3
        assert registry.lookup("net/b").addresses == (b.address,)


def test_a_full_inbox_holds_the_sender_back_instead_of_growing(
        registry: posa.LocalRegistry) -> None:
    with posa.Peer("net/a", registry=registry, window=64) as a, \
         posa.Peer("net/b", registry=registry, inbox_size=100) as b:
        sent = 0
        with pytest.raises(posa.Timeout, match="not acknowledged"):
            for sent in range(10_000):
                a.send("net/b", sent, timeout=0.5)
        assert 100 <= sent < 400      # inbox plus one window, not everything
        got = [b.receive(timeout=5).body for _ in range(sent)]
        assert got == list(range(sent))


def test_a_forgotten_target_opens_a_new_stream_and_gets_its_own_replies(
        registry: posa.LocalRegistry) -> None:
    with posa.Peer("net/a", registry=registry) as a, posa.Peer("net/b", registry=registry) as b:
        b.serve(lambda m: m.body)
        assert a.request("net/b", "first", timeout=5) == "first"
        a.sender.forget("net/b")
        assert a.request("net/b", "second", timeout=5) == "second"


def test_a_late_reply_to_a_forgotten_stream_never_answers_a_new_request(
        registry: posa.LocalRegistry) -> None:
    held: list[posa.Message] = []

    def handler(msg: posa.Message) -> object:
        if msg.body == "slow":
            held.append(msg)
            return posa.DEFERRED
        return f"fresh {msg.body}"

    with posa.Peer("net/a", registry=registry) as a, \
         posa.Peer("net/b", registry=registry, aliases=["net/b2"], handler=handler) as b:
        with pytest.raises(posa.Timeout):
            a.request("net/b", "slow", timeout=0.2)
        a.sender.forwarder().pin("net/b2", b.address)   # the same connection, kept open
        assert a.request("net/b2", "x", timeout=5) == "fresh x"
        a.sender.forget("net/b")
        b.reply(held[0], "stale")
        assert a.request("net/b2", "x", timeout=5) == "fresh x"   # reads the stale reply
        assert a.request("net/b", "new", timeout=5) == "fresh new"


def test_close_leaves_a_newer_registration_of_the_name_alone(
        registry: posa.LocalRegistry) -> None:
    old = posa.Peer("net/moving", registry=registry, credential="secret")
    # another process takes the name over: same credential, higher epoch
    registration = registry.register("net/moving", ["inproc://elsewhere"],
                                     credential="secret", epoch=old.epoch + 1)
    old.close()
    assert registry.lookup("net/moving").addresses == registration.addresses


def test_an_unencodable_body_leaves_no_hole_in_the_stream(
        registry: posa.LocalRegistry) -> None:
    with posa.Peer("net/a", registry=registry) as a, posa.Peer("net/b", registry=registry) as b:
        a.send("net/b", 1)
        with pytest.raises(posa.ProtocolError, match="cannot encode"):
            a.send("net/b", object())
        a.send("net/b", 2)
        assert [b.receive(timeout=5).body for _ in range(2)] == [1, 2]


@pytest.mark.parametrize("address", ["inproc://{n}", "tcp://127.0.0.1:0"])
def test_a_reply_that_cannot_be_encoded_is_a_remote_error_at_once(
        address: str, registry: posa.LocalRegistry, tmp_path: object) -> None:
    """Not msgpack-able, or over the frame limit: the requester is told why, not
    left to wait out its deadline (which here is far longer than any answer)."""
    answers = {"object": object(), "huge": b"x" * 70_000}
    with posa.Peer("net/b", registry=registry, listen=listen(address, "b", tmp_path),
                   limits=posa.CodecLimits(max_frame_size=64 * 1024),
                   handler=lambda m: answers.get(m.body, m.body)) as b, \
         posa.Peer("net/a", registry=registry) as a:
        for what in answers:
            with pytest.raises(posa.RemoteError, match="could not be sent"):
                a.request(b.name, what, timeout=60)
        assert a.request(b.name, "still serving", timeout=60) == "still serving"


class _Reachable(posa.LocalRegistry):
    """A registry that publishes wildcard addresses as a reachable interface's, as
    ``RegistryClient`` and the zeroconf registry do."""

    def register(self, name: str, addresses: Any, **kwargs: Any) -> posa.Registration:
        return super().register(name, reachable(addresses, ["127.0.0.1"]), **kwargs)


def test_a_move_to_a_wildcard_host_is_announced_with_the_registered_address() -> None:
    """MOVED tells senders where to go: from another host, ``0.0.0.0`` is that host
    itself, so the notice carries the address the registry published."""
    with _Reachable() as registry, \
            posa.Peer("net/b", registry=registry, listen="tcp://127.0.0.1:0") as b:
        old = list(b._listening.current)
        b.migrate("tcp://0.0.0.0:0", grace=5)
        published = registry.lookup("net/b").addresses[0]
        assert published.startswith("tcp://127.0.0.1:")
        wait_until(lambda: old[0].moved_to is not None, 10, "the move was announced")
        assert old[0].moved_to == (published, b.epoch)


def test_a_body_over_the_frame_limit_leaves_no_hole_in_the_stream(
        registry: posa.LocalRegistry) -> None:
    limits = posa.CodecLimits(max_frame_size=4096)
    with posa.Peer("net/a", registry=registry, limits=limits) as a, \
            posa.Peer("net/b", registry=registry, limits=limits) as b:
        a.send("net/b", 1)
        with pytest.raises(posa.ProtocolError, match="exceeds max_frame_size"):
            a.send("net/b", b"x" * 5000)
        a.send("net/b", 2)
        assert [b.receive(timeout=5).body for _ in range(2)] == [1, 2]


@pytest.mark.parametrize("first", [1, 0x7F, 0xFE, 0xFFFE, 0xFFFFFFFE])
def test_ids_of_every_width_arrive_as_sent(registry: posa.LocalRegistry, first: int) -> None:
    """A SEND's id is framed without the full pack: around each width msgpack
    gives an int (1, 2, 3, 5 and 9 bytes) the ids arrive whole, in order."""
    with posa.Peer("net/a", registry=registry) as a, posa.Peer("net/b", registry=registry) as b:
        a.sender.forwarder()._seq_floor = first     # where the stream to b starts
        for i in range(4):
            a.send("net/b", {"seq": i})
        got = [b.receive(timeout=5) for _ in range(4)]
    assert [(m.id, m.body) for m in got] == [(first + i, {"seq": i}) for i in range(4)]
