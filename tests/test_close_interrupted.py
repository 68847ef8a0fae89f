"""A listener's close cut by ``KeyboardInterrupt`` is finished by the next close.

A ``KeyboardInterrupt`` is raised at each instruction of a listener's close in
turn (a trace function on the closing thread, which raises at the n-th
instruction of the close's own functions); the next ``close()`` (the
listener's, or its ``Peer``'s) must then leave the port (or inproc name) free
and the listener's descriptors closed; a tcp listener also no wake-up at the
alarm thread, nothing watched by its reactor, and every connection ended, what
was sent to it delivered first, as an uninterrupted close does.

The instructions of a ``with`` statement that no handler covers are skipped
(its call of ``__exit__``, a ``NOP`` standing for a ``try:``): an exception
raised there leaves the lock held, in any Python code, and the interpreter
runs no signal handler there (it looks for one only once a call returned, at
a backward jump or at a function's start).

Before: the tcp, zmq and inproc listeners marked themselves closed first, so
the close after an interrupted one returned at once and the port (or name)
stayed bound until the process exited.
"""
from __future__ import annotations

import dis
import errno
import inspect
import socket
import sys
import types
from collections.abc import Callable, Iterable
from functools import partial
from typing import Any

import pytest

import posa
from posa import transport
from posa.errors import Closed
from posa.runtime.reactor import Reactor
from posa.transport.base import Connection, Listener, Options
from posa.transport.poller import PollerShare
from posa.transport.tcp.alarm import alarm
from posa.transport.tcp.ending import ListenerClosing
from posa.transport.tcp.guard import Guard
from posa.transport.tcp.sharing import SharedPolling
from posa.transport.tcp.waiting import flush_before_close
from tests.support import wait_until

OPTIONS = Options(linger=2.0, first_frame_timeout=30.0)


def _codes(*functions: Callable[..., Any]) -> set[types.CodeType]:
    return {inspect.unwrap(f).__code__ for f in functions}


def _methods(cls: type) -> list[Callable[..., Any]]:
    return [f for f in vars(cls).values() if inspect.isfunction(f)]


TCP_CLOSE = _codes(*_methods(ListenerClosing), SharedPolling._release_share,
                   flush_before_close, Guard.close)


def _unprotected(code: types.CodeType) -> set[int]:
    """The offsets inside ``with`` statements where an exception would escape
    without the call of ``__exit__``: the call itself (three ``LOAD_CONST None``
    and the call) and the instructions the exception table leaves out (a
    ``NOP`` standing for a ``try:``). The interpreter runs no signal handler at
    any of them."""
    bytecode = dis.Bytecode(code)
    instructions = [i for i in bytecode if i.opname != "CACHE"]
    entries = getattr(bytecode, "exception_entries", [])   # (none before 3.11)
    skipped: set[int] = set()
    for n in range(len(instructions) - 3):
        nones = instructions[n:n + 3]
        if all(i.opname == "LOAD_CONST" and i.argval is None for i in nones):
            rest = instructions[n + 3:n + 5]
            calls = [i for i in rest if i.opname.startswith(("PRECALL", "CALL"))]
            if calls and rest[0] is calls[0]:
                skipped.update(i.offset for i in nones)
                skipped.update(i.offset for i in calls)
    for ins in instructions:
        if ins.opname != "BEFORE_WITH":
            continue
        handler = next(e.target for e in entries if e.start <= ins.offset + 2 < e.end)
        end = max(e.end for e in entries if e.target == handler)
        skipped.update(i.offset for i in instructions
                       if ins.offset < i.offset < end
                       and not any(e.start <= i.offset < e.end for e in entries))
    return skipped


class Interrupt:
    """Raises ``KeyboardInterrupt`` at the ``at``-th instruction run in ``codes``
    on this thread (instructions of a ``with``'s exit call not counted)."""

    def __init__(self, codes: Iterable[types.CodeType], at: int) -> None:
        self.skip = {code: _unprotected(code) for code in codes}
        self.at = at
        self.seen = 0

    def __enter__(self) -> Interrupt:
        sys.settrace(self._call)
        return self

    def __exit__(self, *exc_info: object) -> None:
        sys.settrace(None)

    @property
    def raised(self) -> bool:
        return self.seen >= self.at

    def _call(self, frame: types.FrameType, event: str, arg: object) -> Any:
        if frame.f_code not in self.skip or self.raised:
            return None
        frame.f_trace_opcodes = True
        frame.f_trace_lines = False
        return self._local

    def _local(self, frame: types.FrameType, event: str, arg: object) -> Any:
        if event == "opcode" and frame.f_lasti not in self.skip[frame.f_code]:
            self.seen += 1
            if self.seen == self.at:
                raise KeyboardInterrupt
        return self._local


def _port_free(address: str) -> bool:
    host, port = address.rsplit("//", 1)[1].rsplit(":", 1)
    probe = socket.socket()
    probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        probe.bind((host, int(port)))
    except OSError as exc:
        assert exc.errno == errno.EADDRINUSE, exc
        return False
    finally:
        probe.close()
    return True


def _served(address: str) -> tuple[Listener, Connection]:
    """A listener at ``address`` with one connection, whose frame it answered."""
    listener = transport.listen(address, OPTIONS)
    conn = transport.connect(listener.address, OPTIONS)
    conn.send(b"ping")
    route, frame = listener.recv(timeout=10.0)
    assert frame == b"ping"
    listener.send(route, b"pong")
    return listener, conn


Served = Callable[[], tuple[Listener, Connection]]


def _interrupted_closes(served: Served, codes: set[types.CodeType],
                        check: Callable[[Listener, Connection], None]) -> int:
    """Interrupt the close at each instruction in turn, close again, ``check``;
    the number of instructions interrupted."""
    at = 1
    while True:
        listener, conn = served()
        try:
            with Interrupt(codes, at) as interrupt:
                try:
                    listener.close()
                except KeyboardInterrupt:
                    pass
            if not interrupt.raised:
                return at - 1
            listener.close()                # again: it ends what the first began
            check(listener, conn)
        finally:
            conn.close()
        at += 1


def _tcp_check(listener: Listener, conn: Connection) -> None:
    assert _port_free(listener.address), f"{listener.address} is still bound"
    inner = listener._poller                        # type: ignore[attr-defined]
    assert not isinstance(inner, PollerShare), "the inner poller was lost, not closed"
    assert getattr(inner, "closed", True), "the inner poller is open"
    assert not any(entry[2] == listener._wake_up  # type: ignore[attr-defined]
                   for entry in alarm._heap), "the alarm still wakes the listener"
    assert conn.recv(timeout=10.0) == b"pong"   # delivered, then the stream ended
    with pytest.raises(Closed):
        conn.recv(timeout=10.0)


def test_a_tcp_listeners_close_cut_anywhere_is_finished_by_the_next() -> None:
    interrupted = _interrupted_closes(partial(_served, "tcp://127.0.0.1:0"), TCP_CLOSE,
                                      _tcp_check)
    assert interrupted > 50         # the close path was traced


def test_a_close_cut_anywhere_leaves_nothing_watched_by_the_reactor() -> None:
    reactor = Reactor("test-close-interrupted")
    reactor.start()
    listeners: list[Listener] = []

    def served() -> tuple[Listener, Connection]:
        listener = transport.listen("tcp://127.0.0.1:0", OPTIONS)
        listeners.append(listener)
        got: list[tuple[Any, bytes]] = []

        def drain() -> None:
            while (item := listener.recv_nowait()) is not None:
                got.append(item)

        reactor.add_source(listener, drain)
        wait_until(lambda: reactor._served, what="the listener attached")
        conn = transport.connect(listener.address, OPTIONS)
        conn.send(b"ping")
        wait_until(lambda: got, what="the ping served by the reactor")
        listener.send(got[0][0], b"pong")
        return listener, conn

    def check(listener: Listener, conn: Connection) -> None:
        assert reactor._served == {}, "descriptors of the listener still watched"
        _tcp_check(listener, conn)

    try:
        assert _interrupted_closes(served, TCP_CLOSE, check) > 50
    finally:
        for listener in listeners:
            reactor.remove_source(listener)
        reactor.close()


def test_a_tcp_listeners_close_is_still_idempotent() -> None:
    listener, conn = _served("tcp://127.0.0.1:0")
    listener.close()
    listener.close()
    _tcp_check(listener, conn)
    conn.close()


def test_a_peers_next_close_finishes_its_listeners_cut_close() -> None:
    registry = posa.LocalRegistry()
    at = 1
    while True:
        peer = posa.Peer("closing", registry=registry, listen="tcp://127.0.0.1:0",
                         linger=2.0)
        address = peer.addresses[0]
        with Interrupt(TCP_CLOSE, at) as interrupt:
            try:
                peer.close()
            except KeyboardInterrupt:
                pass
        peer.close()                        # again: it reaches the listener's close
        assert _port_free(address), f"{address} is still bound ({at})"
        if not interrupt.raised:
            break
        at += 1
    assert at > 50


def test_a_zmq_listeners_close_cut_anywhere_is_finished_by_the_next() -> None:
    pytest.importorskip("zmq")
    from posa.transport.zmq.endpoint import Endpoint
    from posa.transport.zmq.listener import ZmqListener

    def check(listener: Listener, conn: Connection) -> None:
        address = listener.address.replace("zmq+", "")   # unbound by libzmq's thread
        wait_until(lambda: _port_free(address), 10.0, f"{address} unbound")
        assert listener._sock.closed                # type: ignore[attr-defined]
        assert listener._wake is None               # type: ignore[attr-defined]

    codes = _codes(Endpoint.close, Endpoint._close_socket, ZmqListener.close)
    assert _interrupted_closes(partial(_served, "zmq+tcp://127.0.0.1:0"), codes,
                               check) > 10


def test_an_inproc_listeners_close_cut_anywhere_is_finished_by_the_next() -> None:
    from posa.transport.inproc.connection import InprocConnection
    from posa.transport.inproc.listener import InprocListener
    from posa.transport.inproc.receiver import Receiver

    address = "inproc://close-interrupted"

    def served() -> tuple[Listener, Connection]:
        listener, conn = _served(address)
        assert listener.fileno() >= 0               # its wake-up descriptor made
        return listener, conn

    def check(listener: Listener, conn: Connection) -> None:
        again = transport.listen(address, OPTIONS)  # the name is free
        again.close()
        assert listener._rfd == listener._wfd == -1  # type: ignore[attr-defined]
        assert conn.recv(timeout=10.0) == b"pong"
        with pytest.raises(Closed):
            conn.recv(timeout=10.0)

    codes = _codes(InprocListener.close, Receiver._mark_closed, Receiver._release,
                   InprocConnection._drop)
    assert _interrupted_closes(served, codes, check) > 50
