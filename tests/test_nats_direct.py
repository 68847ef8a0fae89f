"""posa.transport.nats.direct against a stand-in for nats-py's client and asyncio's
socket transport: what a sending thread writes itself, what it leaves for the loop,
and that the bytes on the wire are whole PUB commands in the order they were made,
however little the socket takes at once."""
from __future__ import annotations

from collections import deque
from typing import Any

import pytest

from posa.errors import TransportError
from posa.transport.nats.direct import Writer, check, deliver


class Socket:
    """Takes at most ``room`` bytes a call (``None``: all of them)."""

    def __init__(self, wire: bytearray, room: int | None = None) -> None:
        self.wire, self.room = wire, room

    def send(self, data: bytes) -> int:
        taken = len(data) if self.room is None else min(self.room, len(data))
        if taken == 0:
            raise BlockingIOError
        self.wire += data[:taken]
        return taken


class SocketTransport:
    """asyncio's: a write waits in the buffer (sent once the socket takes it)."""

    def __init__(self, sock: Socket, tls: bool = False) -> None:
        self._sock, self.tls = sock, tls
        self.buffer: list[bytes] = []
        self.ended = ""

    def get_write_buffer_size(self) -> int:
        return sum(map(len, self.buffer))

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return 16, 64

    def is_closing(self) -> bool:
        return False

    def get_extra_info(self, name: str) -> Any:
        return object() if name == "sslcontext" and self.tls else None

    def write(self, data: bytes) -> None:
        self.buffer.append(bytes(data))

    def abort(self) -> None:
        self.buffer.clear()
        self.ended = "aborted"

    def written(self) -> bytes:
        """What reaches the wire once the buffer is sent."""
        return bytes(self._sock.wire) + b"".join(self.buffer)


class StreamWriter:
    def __init__(self, transport: SocketTransport) -> None:
        self.transport = transport

    def write(self, data: bytes) -> None:
        self.transport.write(data)

    def writelines(self, data: list[bytes]) -> None:
        self.transport.write(b"".join(data))

    def close(self) -> None:
        self.transport.ended = "closed once its buffer is sent"


class TcpTransport:
    def __init__(self, writer: StreamWriter) -> None:
        self._io_writer = writer

    async def drain(self) -> None:
        pass


class Client:
    def __init__(self, room: int | None = None, tls: bool = False) -> None:
        self.is_connected, self.is_closed, self.is_reconnecting = True, False, False
        self._pending: list[bytes] = []
        self._pending_data_size = 0
        self._max_pending_size = 1000
        self.max_payload = 1 << 20
        self.socket = SocketTransport(Socket(bytearray(), room), tls)
        self._transport = TcpTransport(StreamWriter(self.socket))


def pub(subject: str, body: bytes) -> bytes:
    return f"PUB {subject}  {len(body)}\r\n".encode() + body + b"\r\n"


def test_a_frame_goes_straight_to_an_idle_socket() -> None:
    nc = Client()
    writer = Writer(nc)
    assert writer.send_now("s", "", b"head", b"body")
    assert writer.rest is None and not nc.socket.buffer
    assert nc.socket.written() == pub("s", b"headbody")


@pytest.mark.parametrize("room", [0, 1, 7, 12])     # of its 13 bytes
def test_what_the_socket_does_not_take_is_written_first_by_the_loop(room: int) -> None:
    nc = Client(room)
    writer = Writer(nc)
    writer.install()
    assert writer.send_now("a", "", b"1", b"")
    assert writer.rest is not None
    assert not writer.send_now("b", "", b"2", b""), "a rest is ahead of it"
    nc._transport.write(b"PING\r\n")        # nats-py's own write takes its turn after it
    writer.publish("c", "", b"3")
    writer.flush()
    assert nc.socket.written() == pub("a", b"1") + b"PING\r\n" + pub("c", b"3")
    assert writer.rest is None


def test_the_rest_of_a_socket_since_replaced_is_not_written_to_the_new_one() -> None:
    nc = Client(room=3)
    writer = Writer(nc)
    writer.send_now("a", "", b"lost", b"")
    fresh = SocketTransport(Socket(bytearray()))
    nc._transport._io_writer = StreamWriter(fresh)      # a reconnection
    writer.publish("b", "", b"kept")
    writer.flush()
    assert fresh.written() == pub("b", b"kept")


@pytest.mark.parametrize("state", ["reconnecting", "pending", "buffered", "tls"])
def test_a_frame_is_left_to_the_pump_when_something_is_ahead_of_it(state: str) -> None:
    nc = Client(tls=state == "tls")
    if state == "reconnecting":
        nc.is_connected = False
    elif state == "pending":
        nc._pending.append(b"SUB x 1\r\n")
    elif state == "buffered":
        nc.socket.buffer.append(b"PUB y  0\r\n\r\n")
    before = nc.socket.written()
    assert not Writer(nc).send_now("s", "", b"h", b"b")
    assert nc.socket.written() == before


def test_while_reconnecting_commands_wait_in_the_clients_buffer_until_it_is_full() -> None:
    nc = Client()
    nc.is_connected = False
    writer = Writer(nc)
    writer.publish("s", "", b"x" * 900)
    assert not writer.flush() and nc._pending and not nc.socket.written()
    with pytest.raises(TransportError, match="full"):
        writer.publish("s", "", b"x" * 200)
    nc.is_closed = True
    with pytest.raises(TransportError, match="closed"):
        writer.publish("s", "", b"x")


def test_flush_says_when_the_socket_buffer_is_over_its_high_water_mark() -> None:
    nc = Client(room=0)
    writer = Writer(nc)
    writer.publish("s", "", b"x" * 10)
    assert not writer.flush()                 # 23 bytes buffered: under 64
    writer.publish("s", "", b"x" * 60)
    assert writer.flush()


def test_check_names_what_a_client_lacks() -> None:
    check(Client())
    with pytest.raises(TransportError, match="_pending_data_size"):
        check(object())
    with pytest.raises(TransportError, match="_pending_queue"):
        deliver(object(), print)  # type: ignore[arg-type]
    nc = Client()
    nc._transport = type("Fixed", (), {"__slots__": ("_io_writer",)})()  # type: ignore[assignment]
    with pytest.raises(TransportError, match="can be replaced"):
        Writer(nc).install()


def test_deliver_calls_back_as_messages_are_put_and_first_what_was_queued() -> None:
    import asyncio

    class Msg:
        def __init__(self, data: bytes) -> None:
            self.data = data

    class Sub:
        def __init__(self) -> None:
            self._pending_queue: Any = asyncio.Queue()
            self._pending_size = 0

    sub, got = Sub(), []
    sub._pending_queue.put_nowait(Msg(b"early"))
    sub._pending_size = 5
    deliver(sub, lambda msg: got.append(msg.data))  # type: ignore[arg-type]
    sub._pending_size += 4
    sub._pending_queue.put_nowait(Msg(b"late"))
    assert got == [b"early", b"late"] and sub._pending_size == 0
    assert sub._pending_queue.empty() and sub._pending_queue.qsize() == 0


# -- the pump's turn and a socket asyncio has given up on --------------------------------

class Lost(SocketTransport):
    """asyncio's transport once a write failed: it takes every write and keeps none
    (``_conn_lost``), so its buffer never fills; ``closed`` is after
    ``_call_connection_lost`` (no socket), which runs a turn of the loop later."""

    def __init__(self, on_write: Any = None, closed: bool = False) -> None:
        super().__init__(Socket(bytearray()))
        self.on_write, self.writes = on_write, 0
        if closed:
            self._sock = None  # type: ignore[assignment]

    def is_closing(self) -> bool:
        return True

    def write(self, data: bytes) -> None:
        self.writes += 1
        if self.on_write is not None:
            self.on_write()


class Owner:
    def __init__(self) -> None:
        self.failed: list[str] = []

    def link_lost(self, why: str) -> None:
        self.failed.append(why)

    def out_failed(self, out: Any, why: str) -> None:
        self.failed.append(why)


class Loop:
    """Records what is handed to the loop instead of running it."""

    def __init__(self) -> None:
        self.calls: list[Any] = []

    def call_soon_threadsafe(self, callback: Any, *args: Any) -> None:
        self.calls.append(callback)


def bare_link(nc: Client, room: int) -> Any:
    from posa.transport.nats.link import Link

    link = Link.__new__(Link)
    nc.max_payload = room + 9               # the header's 9 bytes
    link.queue, link.loop, link.nc = deque(), Loop(), nc
    link.writer = Writer(nc)
    link._scheduled, link._closing, link._waiting = False, False, None
    return link


def test_a_pump_turn_publishes_what_was_queued_when_it_began_and_no_more() -> None:
    """A socket lost under a write takes every later write and holds none, so no
    buffer over its high-water mark ends the pump's turn: senders that keep the
    queue full must not keep the loop from hearing the socket is gone (nats-py
    learns it a turn later). Here each write lets a sender queue one more frame of
    a mebibyte (the pump writes per mebibyte): the turn stops at the three frames
    queued when it began, and the pump is woken for the rest."""
    from posa.transport.nats.link import Outbound

    nc = Client()
    link = bare_link(nc, room=1 << 20)
    frame = b"f" * (1 << 20)
    out = Outbound("s", "r", 1000, Owner())
    refills = 0

    def sender_keeps_up() -> None:
        nonlocal refills
        if refills < 50:                # bounded: without the bound the turn never ends
            refills += 1
            link.put(out, frame)

    nc.socket = Lost(sender_keeps_up)
    nc._transport = TcpTransport(StreamWriter(nc.socket))
    for _ in range(3):
        out.frames.append(frame)
        link.queue.append(out)
    link._pump()
    assert nc.socket.writes == 3, f"the turn went on for {nc.socket.writes} frames"
    assert len(link.queue) == 3 and out.seq == 3
    assert link._pump in link.loop.calls, "the frames queued during the turn wait unwoken"


def test_a_socket_asyncio_closed_before_the_client_noticed_is_left_to_the_loop() -> None:
    """The loop closes the socket of a failed transport (``_sock`` becomes None) a
    turn before nats-py marks the client disconnected: a sending thread in between
    leaves its frame to the pump (which ends the connection) instead of raising
    AttributeError at the caller, or writing to a socket asyncio abandoned."""
    for closed in (True, False):
        nc = Client()
        writer = Writer(nc)
        assert writer.send_now("s", "", b"h", b"1")      # the socket is known plain
        lost = Lost(closed=closed)
        lost._sock = None if closed else nc.socket._sock  # type: ignore[assignment]
        nc._transport._io_writer.transport = lost  # type: ignore[assignment]
        writer._plain = lost
        assert not writer.send_now("s", "", b"h", b"2")
        assert writer.rest is None


def test_senders_do_not_wake_the_loop_while_the_pump_waits_for_the_socket() -> None:
    """While the pump waits for a full socket to drain, a frame queued wakes no one
    (the drain pumps again): a burst costs the loop one wake-up, not one a frame."""
    nc = Client()
    link = bare_link(nc, room=1 << 20)
    woken: list[Any] = []

    def run_now(callback: Any, *args: Any) -> None:     # a loop that runs it at once
        woken.append(callback)
        callback(*args)

    link.loop.call_soon_threadsafe = run_now
    link._waiting = object()                # the socket's buffer is over its mark
    from posa.transport.nats.link import Outbound
    out = Outbound("s", "r", 1000, Owner())
    for i in range(100):
        link.put(out, b"%d" % i)
    assert len(woken) <= 1, f"{len(woken)} wake-ups for 100 frames"
    assert len(out.frames) == 100 and not nc.socket.written()


@pytest.mark.parametrize(("reconnecting", "ended"), [
    (True, "aborted"), (False, "closed once its buffer is sent")])
def test_a_socket_left_to_reconnect_is_aborted_not_drained(reconnecting: bool,
                                                          ended: str) -> None:
    """nats-py closes the socket it leaves and waits for it before it dials another
    server: a graceful close waits for the buffer to drain, which a stopped server
    never lets happen. Leaving to reconnect aborts it; closing the client does not."""
    nc = Client(room=0)
    Writer(nc).install()
    nc._transport.write(b"PUB s  1\r\nx\r\n")           # waits in the buffer
    nc.is_connected, nc.is_reconnecting = not reconnecting, reconnecting
    nc._transport.close()
    assert nc.socket.ended == ended
