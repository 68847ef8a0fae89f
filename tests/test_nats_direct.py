"""posa.transport.nats.client's writing paths against a stand-in socket and loop:
what a sending thread writes itself, what it leaves for the loop, and that the
bytes on the wire are whole PUB commands in the order they were made, however
little the socket takes at once; a lost socket is let go at once, with what it
held; and the link's pump (posa.transport.nats.link) works in bounded turns."""
from __future__ import annotations

from collections import deque
from typing import Any

import pytest

from posa.transport.nats import protocol
from posa.transport.nats.client import BACKLOG, Client
from posa.transport.nats.loop import Timer


class Socket:
    """Takes at most ``room`` bytes a call (``None``: all of them); ``on_send`` is
    called before each send, ``error`` raised by it."""

    def __init__(self, room: int | None = None, error: OSError | None = None) -> None:
        self.wire, self.room, self.error = bytearray(), room, error
        self.on_send: Any = None
        self.sends = 0
        self.closed = False

    def send(self, data: bytes) -> int:
        self.sends += 1
        if self.on_send is not None:
            self.on_send()
        if self.error is not None:
            raise self.error
        taken = len(data) if self.room is None else min(self.room, len(data))
        if taken == 0:
            raise BlockingIOError
        self.wire += bytes(data[:taken])
        return taken

    def fileno(self) -> int:
        return -1 if self.closed else 99

    def close(self) -> None:
        self.closed = True


class Loop:
    """Records what is handed to the loop instead of running it."""

    def __init__(self) -> None:
        self.calls: list[Any] = []
        self.masks: list[int] = []

    def call_soon(self, fn: Any, *args: Any) -> None:
        self.calls.append((fn, args))

    def in_thread(self) -> bool:
        return True

    def call_later(self, delay: float, fn: Any) -> Timer:
        return Timer(delay, fn)

    def modify(self, fd: int, mask: int) -> None:
        self.masks.append(mask)

    def unwatch(self, fd: int) -> None:
        pass

    def run(self, turns: int = 100) -> None:
        for _ in range(turns):
            if not self.calls:
                return
            fn, args = self.calls.pop(0)
            fn(*args)


class Handler:
    def __init__(self) -> None:
        self.heard: list[str] = []

    def connected(self) -> None:
        self.heard.append("connected")

    def lost(self, why: str) -> None:
        self.heard.append(f"lost: {why}")

    def drained(self) -> None:
        self.heard.append("drained")


def bare(sock: Socket, handler: Any = None) -> Client:
    """A client connected to ``sock``, on a stand-in loop."""
    client = Client(["127.0.0.1:1"], "test", Loop(), handler or Handler(), 5.0)  # type: ignore[arg-type]
    client.sock, client.connected, client.max_payload = sock, True, 1 << 20  # type: ignore[assignment]
    client.server = "127.0.0.1:1"
    return client


def pub(subject: str, body: bytes) -> bytes:
    return protocol.pub(subject, "", len(body)) + body + b"\r\n"


def send(client: Client, data: bytes) -> bool:
    with client.lock:
        return client.send_locked(data)


def test_a_frame_goes_straight_to_an_idle_socket() -> None:
    sock = Socket()
    client = bare(sock)
    assert send(client, pub("s", b"headbody"))
    assert client.backlog == 0 and bytes(sock.wire) == pub("s", b"headbody")
    assert not client.loop.calls                # type: ignore[attr-defined]


@pytest.mark.parametrize("room", [0, 1, 7, 12])     # of its 13 bytes
def test_what_the_socket_does_not_take_is_written_first_by_the_loop(room: int) -> None:
    sock = Socket(room)
    client = bare(sock)
    assert send(client, pub("a", b"1"))
    assert client.backlog == 13 - room
    assert not send(client, pub("b", b"2")), "the rest is ahead of it"
    client.write(protocol.PING_CMD)             # a command takes its turn after it
    with client.lock:
        client.queue_locked(pub("c", b"3"))
    sock.room = None
    client.loop.run()                           # type: ignore[attr-defined]
    client._writable(sock)                      # type: ignore[arg-type]
    assert bytes(sock.wire) == pub("a", b"1") + b"PING\r\n" + pub("c", b"3")
    assert client.backlog == 0 and client.handler.heard == ["drained"]  # type: ignore[attr-defined]


def test_the_rest_of_a_socket_since_lost_is_not_written_to_the_next() -> None:
    lost = Socket(room=3)
    client = bare(lost)
    send(client, pub("a", b"lost"))
    client._lose(lost, "gone")                  # type: ignore[arg-type]
    assert lost.closed and client.backlog == 0 and not client.connected
    fresh = Socket()
    client.sock, client.connected = fresh, True  # type: ignore[assignment]
    assert send(client, pub("b", b"kept"))
    assert bytes(fresh.wire) == pub("b", b"kept")


@pytest.mark.parametrize("state", ["disconnected", "queued", "forked"])
def test_a_frame_is_left_to_the_pump_when_something_is_ahead_of_it(state: str) -> None:
    sock = Socket()
    client = bare(sock)
    if state == "disconnected":
        client.connected = False
    elif state == "queued":
        client._out += b"SUB x 1\r\n"
    else:
        client.pid = -1                         # made by the parent of this process
    assert not send(client, pub("s", b"hb"))
    assert not sock.wire


def test_a_forked_child_queues_nothing_on_its_parents_client() -> None:
    sock = Socket()
    client = bare(sock)
    client.pid = -1
    client.write(pub("s", b"child"))
    assert client.backlog == 0 and not sock.wire


def test_flush_says_when_the_backlog_is_over_its_mark() -> None:
    client = bare(Socket(room=0))
    with client.lock:
        client.queue_locked(b"x" * 100)
        assert not client.flush_locked()
        client.queue_locked(b"x" * BACKLOG)
        assert client.flush_locked()


def test_a_write_that_breaks_leaks_nothing_and_the_socket_is_let_go_at_once() -> None:
    """A sending thread whose write finds the socket broken gets no exception (its
    connection ends when the loop hears the loss); the loop then closes the
    socket at once with what it holds, waiting for no drain."""
    sock = Socket(error=BrokenPipeError(32, "Broken pipe"))
    handler = Handler()
    client = bare(sock, handler)
    client._out += b"waiting"
    with client.lock:
        assert client.flush_locked() is False
    assert send(client, pub("s", b"x")) is False       # something is ahead: queued
    client._out.clear()
    assert send(client, pub("s", b"x")) is True        # taken, and lost with the socket
    client.loop.run(turns=1)                           # type: ignore[attr-defined]
    assert sock.closed and not client.connected and client.backlog == 0
    assert handler.heard[0].startswith("lost: the NATS server 127.0.0.1:1 went away")


def test_a_reconnection_subscribes_again_and_sends_the_waiting_pings() -> None:
    """Subscriptions made before (or while) no server is connected are sent at the
    next server's INFO with CONNECT, and so are the PINGs flushes wait on."""
    sock = Socket()
    client = bare(sock)
    client.connected = False
    sid = client.subscribe("posa.x", lambda msg: None)
    client._unsent.append(lambda: None)
    client._established({"max_payload": 4096, "connect_urls": ["127.0.0.1:2"]})
    wire = bytes(sock.wire)
    assert wire.startswith(b"CONNECT {")
    assert wire.endswith(protocol.sub("posa.x", sid) + protocol.PING_CMD)
    assert client.max_payload == 4096 and client.candidates == ["127.0.0.1:1", "127.0.0.1:2"]
    assert client.handler.heard == ["connected"]      # type: ignore[attr-defined]


def test_two_unanswered_pings_give_the_server_up_and_a_pong_renews_the_lease() -> None:
    sock = Socket()
    handler = Handler()
    client = bare(sock, handler)
    client._ping()
    client._control(sock, protocol.PONG, None)  # type: ignore[arg-type]
    client._ping()
    client._ping()
    assert client.connected, "two pings out, none overdue yet"
    client._ping()
    assert not client.connected and sock.closed
    assert "2 PINGs went unanswered" in handler.heard[0]


# -- the link's pump -------------------------------------------------------------------

class Owner:
    def link_lost(self, why: str) -> None:
        pass


def bare_link(client: Client) -> Any:
    from posa.transport.nats.link import Link

    link = Link.__new__(Link)
    link.queue, link.loop, link.client = deque(), client.loop, client
    link._scheduled, link._closing, link._waiting = False, False, False
    return link


def test_a_pump_turn_publishes_what_was_queued_when_it_began_and_no_more() -> None:
    """Senders that keep the queue full must not keep the loop from reading the
    socket and hearing it break. Here each write lets a sender queue one more
    frame of a mebibyte (the pump writes per mebibyte): the turn stops at the
    three frames queued when it began, and the pump is woken for the rest."""
    from posa.transport.nats.link import Outbound

    sock = Socket()
    client = bare(sock)
    link = bare_link(client)
    frame = b"f" * ((1 << 20) - 9)             # one message (its header: 9 bytes)
    out = Outbound("s", "r", 1000, Owner())
    refills = 0

    def sender_keeps_up() -> None:
        nonlocal refills
        if refills < 50:                # bounded: without the bound the turn never ends
            refills += 1
            out.frames.append(frame)
            link.queue.append(out)
            if not link._scheduled:
                link._kick()

    sock.on_send = sender_keeps_up
    for _ in range(3):
        out.frames.append(frame)
        link.queue.append(out)
    link._pump()
    assert out.seq == 3 and len(link.queue) == refills
    assert (link._pump, ()) in client.loop.calls, "the frames queued in the turn wait unwoken"  # type: ignore[attr-defined]


def test_senders_do_not_wake_the_loop_while_the_pump_waits_for_the_socket() -> None:
    """While the pump waits for the backlog to drain, a frame queued wakes no one
    (the drain pumps again): a burst costs the loop one wake-up, not one a frame."""
    from posa.transport.nats.link import Outbound

    sock = Socket()
    client = bare(sock)
    link = bare_link(client)
    link._waiting = True
    link._scheduled = True                      # as the pump leaves it when it waits
    out = Outbound("s", "r", 1000, Owner())
    for i in range(100):
        link.put(out, b"%d" % i)
    assert not client.loop.calls                # type: ignore[attr-defined]
    assert len(out.frames) == 100 and not sock.wire


def test_failover_goes_through_the_address_then_what_info_announced() -> None:
    """The servers of the address in order, then those an INFO's connect_urls add
    (each once), round again after the last; after a round of failed dials, a pause."""
    from posa.transport.nats.dialing import RECONNECT_WAIT, Servers

    servers = Servers(["127.0.0.1:1", "127.0.0.1:2"])
    assert [servers.next() for _ in range(3)] == ["127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:1"]
    servers.learn({"connect_urls": ["127.0.0.1:3", "127.0.0.1:1", 7]})
    servers.learn({"connect_urls": "not a list"})
    assert servers.candidates == ["127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3"]
    assert [servers.next() for _ in range(3)] == ["127.0.0.1:2", "127.0.0.1:3", "127.0.0.1:1"]
    assert [servers.failed() for _ in range(3)] == [0.0, 0.0, RECONNECT_WAIT]
    servers.failed()
    servers.succeeded()
    assert [servers.failed() for _ in range(3)] == [0.0, 0.0, RECONNECT_WAIT]


def test_a_busy_reactor_holding_the_socket_is_not_taken_for_a_silent_server() -> None:
    """While the socket is lent to a reactor that is busy, the PONGs wait unread in
    it: bytes waiting mean the server spoke, so the lease does not give it up;
    with nothing waiting it does."""
    class Waiting(Socket):
        unread = b"PONG\r\n"

        def recv(self, size: int, flags: int = 0) -> bytes:
            if not self.unread:
                raise BlockingIOError
            return self.unread[:size]

    sock = Waiting()
    handler = Handler()
    client = bare(sock, handler)
    client.watch.share = object()              # type: ignore[assignment]  # lent
    for _ in range(5):
        client._ping()
    assert client.connected and not handler.heard
    sock.unread = b""
    client._ping()
    assert not client.connected and "PINGs went unanswered" in handler.heard[0]
