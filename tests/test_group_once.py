"""A group send delivers a member's message once, even when the send to that member
fails within a round's time slice after the bytes left.

A group send serves its members in rounds of short slices. A write whose bytes
reached the member but which then failed (a connection reset after the kernel
took them), followed by a recovery that does not finish within the slice (the
member cannot be reached again for a while), used to give the message up at the
end of the slice: the next round sent it again on a new stream, and the member,
which drops duplicates per stream, handled it twice. A member that was
only slow met the same fate: with its window full (a process stopped by
SIGSTOP for longer than the first slice), the wait for room gave up the
member's whole backlog at the end of the slice, though all of it had been
written; with a window of 1, where the send waited for its acknowledgement
(up to the slice, then gave it up), a stopped member got a copy every round. The
slice only bounds how long the group waits for the member; the
message stays in its stream until the group's deadline, and the recovery
resends it there, where the member drops the copy it already has.
"""
from __future__ import annotations

import os
import signal
import threading
from typing import Any

import pytest

import posa
from posa import transport
from posa.delivery import group
from posa.errors import TransportError
from posa.transport.base import Connection, Options
from posa.wire.codec import Message
from tests.support import Proc

pytestmark = pytest.mark.timeout(60)

REFUSED_CONNECTS = 6    # the back-offs between them (5 + 10 + 20 + 40 + 80 ms) outlast
# the first slice (posa.delivery.group.SLICE, 50 ms), however fast the machine


class Member:
    """A member that counts what its handler was given, by body."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.seen: dict[Any, int] = {}
        self.arrived: dict[Any, threading.Event] = {}

    def event(self, body: Any) -> threading.Event:
        with self.lock:
            return self.arrived.setdefault(body, threading.Event())

    def handle(self, msg: Message) -> None:
        with self.lock:
            self.seen[msg.body] = self.seen.get(msg.body, 0) + 1
        self.event(msg.body).set()


class Faults:
    """``transport.connect`` for one address: the first connection's first write
    goes out and then raises (a reset after the kernel took the bytes); the next
    ``REFUSED_CONNECTS`` connects are refused; then connects work again."""

    def __init__(self, address: str, real: Any) -> None:
        self.address, self.real = address, real
        self.connects = 0
        self.reset = threading.Event()     # the write that went out failed

    def connect(self, address: str, options: Options | None = None) -> Connection:
        if address != self.address:
            return self.real(address, options)   # type: ignore[no-any-return]
        self.connects += 1
        if 1 < self.connects <= 1 + REFUSED_CONNECTS:
            raise TransportError(f"cannot connect to {address}: refused (injected)")
        conn = self.real(address, options)
        if self.connects == 1:
            send = conn.send

            def send_then_fail(frame: bytes) -> None:
                send(frame)
                if not self.reset.is_set():
                    self.reset.set()
                    raise TransportError(f"the connection to {address} failed: reset "
                                         "after the write (injected)")
            conn.send = send_then_fail
        return conn     # type: ignore[no-any-return]


def test_a_write_that_went_out_then_failed_is_delivered_once(
        registry: posa.LocalRegistry, monkeypatch: pytest.MonkeyPatch) -> None:
    member = Member()
    with posa.Peer("once/grp/m", registry=registry, listen="tcp://127.0.0.1:0",
                   handler=member.handle) as peer, \
         posa.Peer("once/sender", registry=registry, listen="tcp://127.0.0.1:0") as sender:
        faults = Faults(peer.address, transport.connect)
        monkeypatch.setattr(transport, "connect", faults.connect)
        assert sender.send("once/grp/*", "hello", timeout=10.0) == 1
        assert faults.reset.is_set()        # the fault was met (in the first round)
        assert faults.connects > 1 + REFUSED_CONNECTS   # and the member reached again
        sender.send("once/grp/m", "after", timeout=10.0)   # on the same stream, behind it
        sender.flush(timeout=10.0)
        assert member.event("after").wait(10.0)
        assert member.event("hello").wait(10.0)
        with member.lock:
            assert member.seen == {"hello": 1, "after": 1}


MEMBER = """
import sys, posa
reg = posa.RegistryClient(sys.argv[1])
peer = posa.Peer(sys.argv[2], registry=reg, listen="tcp://127.0.0.1:0", lease=60.0)
print("READY", flush=True)
while True:
    print("GOT", peer.receive().body, flush=True)
"""


def test_a_member_stopped_longer_than_a_slice_gets_the_message_once(
        dispatcher: str, monkeypatch: pytest.MonkeyPatch) -> None:
    proc = Proc.python(MEMBER, dispatcher, "once/stopped/m")
    try:
        proc.expect("READY")
        with posa.RegistryClient(dispatcher) as reg, \
             posa.Peer("once/sender2", registry=reg, listen="tcp://127.0.0.1:0",
                       window=2) as sender:
            sender.send("once/stopped/m", "before", timeout=10.0)
            sender.flush(timeout=10.0)      # connected, nothing unacknowledged
            proc.popen.send_signal(signal.SIGSTOP)
            os.waitpid(proc.popen.pid, os.WUNTRACED)    # it is stopped: reads nothing
            sender.send("once/stopped/m", "unacked", timeout=10.0)  # in its socket: the
            # window of 2 is full with the group's message, until the member reads
            attempts = [0]      # of the group send to hand the message over
            hand_over = group._hand_over

            def counted(*args: Any) -> bool:
                attempts[0] += 1
                if attempts[0] == 2:      # the first slice is over: the member wakes
                    proc.popen.send_signal(signal.SIGCONT)
                return hand_over(*args)     # type: ignore[no-any-return]
            monkeypatch.setattr(group, "_hand_over", counted)
            assert sender.send("once/stopped/*", "group", timeout=10.0) == 1
            assert attempts[0] >= 2
            sender.send("once/stopped/m", "after", timeout=10.0)
            sender.flush(timeout=10.0)
            got = [proc.expect("GOT") for _ in range(4)]
            assert got == ["before", "unacked", "group", "after"]
            proc.popen.send_signal(signal.SIGCONT)
            sender.send("once/stopped/m", "last", timeout=10.0)
            assert proc.expect("GOT") == "last"     # nothing came twice before it
    finally:
        proc.popen.send_signal(signal.SIGCONT)
        proc.close()


def test_with_a_window_of_one_a_stopped_member_costs_the_others_a_slice(
        dispatcher: str) -> None:
    names = ["once/one/m0", "once/one/m1"]
    procs = [Proc.python(MEMBER, dispatcher, name) for name in names]
    try:
        for proc in procs:
            proc.expect("READY")
        with posa.RegistryClient(dispatcher) as reg, \
             posa.Peer("once/sender3", registry=reg, listen="tcp://127.0.0.1:0",
                       window=1) as sender:
            for name, proc in zip(names, procs):
                sender.send(name, "before", timeout=10.0)  # connected, acknowledged
                assert proc.expect("GOT") == "before"
            procs[0].popen.send_signal(signal.SIGSTOP)
            os.waitpid(procs[0].popen.pid, os.WUNTRACED)
            with pytest.raises(posa.PartialDelivery) as caught:
                sender.send("once/one/*", "group", timeout=2.0)
            assert caught.value.delivered == names[1:]      # not held up by m0 until
            assert set(caught.value.failed) == {names[0]}   # the deadline
            assert procs[1].expect("GOT") == "group"
            procs[0].popen.send_signal(signal.SIGCONT)
            assert procs[0].expect("GOT") == "group"        # the copy written, once
            sender.send(names[0], "after", timeout=10.0)
            assert procs[0].expect("GOT") == "after"
    finally:
        for proc in procs:
            proc.popen.send_signal(signal.SIGCONT)
            proc.close()
