"""The send path against ``KeyboardInterrupt`` at every point a signal may land.

A trace function (``Interrupt``) raises ``KeyboardInterrupt`` at the Nth point
of ``posa.delivery``'s code where a signal handler may run (a frame's start or
resumption, a loop's jump back, the end of a call), or where the call would
block waiting for input; each call of a sweep is cut at the next point
(N = 1, 2, 3 ...). Deterministic: no timer, no signal.

The window's bound: a send to a recipient that never acknowledges (a tcp
server that reads nothing) fills the window; however many sends, requests and
group sends are cut short after that, the stream never holds more than
``window`` unacknowledged messages (a send that finds the window full, an
interrupted send's message in it, waits for room before it takes its own).

No gap: a flush cut short while it writes the open batch leaves no message
taken and never written, which the ones after it would wait behind.
"""
from __future__ import annotations

import dis
import socket
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import CodeType, FrameType
from typing import Any

import pytest

import posa
from posa.delivery import forwarder as forwarder_module
from posa.delivery import target as target_module

SWEEP = 200     # points: more than a send passes before its first wait


@contextmanager
def silent_server() -> Iterator[str]:
    """The address of a tcp server that never reads nor answers: the kernel takes
    the connection into its backlog, and nothing ever accepts it."""
    with socket.create_server(("127.0.0.1", 0), backlog=8) as server:
        yield f"tcp://127.0.0.1:{server.getsockname()[1]}"


def _signal_points(code: CodeType) -> frozenset[int]:
    """The offsets in ``code`` where a signal handler may run: a loop's jump back,
    and the instruction after a call (where the interpreter looks for pending
    signals, besides a function's start and a generator's resumption)."""
    found = _points.get(code)
    if found is None:
        found = set()
        previous = ""
        for ins in dis.get_instructions(code):
            if ins.opname == "JUMP_BACKWARD" or previous in ("CALL", "CALL_FUNCTION_EX"):
                found.add(ins.offset)
            previous = ins.opname
        found = _points[code] = frozenset(found)
    return found


_points: dict[CodeType, frozenset[int]] = {}


class Interrupt:
    """A trace function (``sys.settrace``) that raises ``KeyboardInterrupt`` at the
    ``at``-th point of ``posa.delivery``'s frames where a signal handler may run
    (a frame's start or resumption, a loop's jump back, the end of a call), or as
    a wait for input (``waiting.readable``) begins; a trace that raised is unset."""

    def __init__(self, at: int) -> None:
        self.left = at

    def __call__(self, frame: FrameType, event: str, arg: Any) -> Any:
        code = frame.f_code
        if "posa/delivery/" not in code.co_filename:
            return None
        if code.co_name == "readable":
            raise KeyboardInterrupt("while waiting")
        self._count(frame)
        frame.f_trace_opcodes = True
        return self._opcode

    def _opcode(self, frame: FrameType, event: str, arg: Any) -> Any:
        if event == "opcode" and frame.f_lasti in _signal_points(frame.f_code):
            self._count(frame)
        return self._opcode

    def _count(self, frame: FrameType) -> None:
        self.left -= 1
        if self.left == 0:
            raise KeyboardInterrupt(f"at {frame.f_code.co_name}:{frame.f_lineno}")


def _interrupted(call: Callable[[], object], at: int) -> None:
    sys.settrace(Interrupt(at))
    try:
        call()
    except KeyboardInterrupt:
        pass
    finally:
        sys.settrace(None)


OPS: dict[str, Callable[[posa.Peer, int], object]] = {
    "send": lambda peer, i: peer.send("quiet/silent", i, timeout=60.0),
    "request": lambda peer, i: peer.request("quiet/silent", i, timeout=60.0),
    "group send": lambda peer, i: peer.send("quiet/*", i, timeout=60.0),
}


@pytest.mark.parametrize("window", [1, 3])
@pytest.mark.parametrize("op", list(OPS))
def test_interrupted_sends_never_hold_more_than_the_window(op: str, window: int) -> None:
    """Each of SWEEP calls interrupted at another bytecode: after each, no lock
    is held and at most ``window`` messages wait for their acknowledgement (a
    group send leaves the window short of full, but for a window of 1)."""
    reg = posa.LocalRegistry()
    with silent_server() as address:
        reg.register("quiet/silent", [address], credential="silent")
        with posa.Peer("caller", registry=reg, listen="tcp://127.0.0.1:0",
                       window=window, linger=0.0) as peer:
            for i in range(window - 1):      # short of full: no send waits
                peer.send("quiet/silent", i, timeout=60.0)
            fwd = peer.sender.forwarder()
            held = []
            for at in range(1, SWEEP):
                _interrupted(lambda: OPS[op](peer, at), at)     # noqa: B023 (called here)
                assert not fwd.lock.locked(), f"lock held after an interrupt at {at}"
                held.append(fwd.in_flight("quiet/silent"))
            assert max(held) <= window, (
                f"{max(held)} unacknowledged in a window of {window}: {held[:40]} ...")
            assert max(held) >= max(window - 1, 1)      # it was as full as it gets


def test_a_group_send_with_a_window_of_one_never_changes_the_window() -> None:
    """A group send does not wait, after each member's message, for the window
    of 1 it fills (the group waits a slice at a time), without raising the
    forwarder's window for a moment to get there: at every bytecode of the
    send, the window read is 1 (an interrupt there, or another reader, would
    keep or see another). Every member gets every message."""
    reg = posa.LocalRegistry()
    seen: set[int] = set()

    def look(frame: FrameType, event: str, arg: Any) -> Any:
        if "posa/delivery/" not in frame.f_code.co_filename:
            return None
        frame.f_trace_opcodes = True
        seen.add(fwd.window)
        return look

    with posa.Peer("caller", registry=reg, window=1, linger=0.0) as peer, \
            posa.Peer("grp/a", registry=reg) as a, posa.Peer("grp/b", registry=reg) as b:
        fwd = peer.sender.forwarder()
        for i in range(3):
            sys.settrace(look)
            try:
                assert peer.send("grp/*", i, timeout=10.0) == 2
            finally:
                sys.settrace(None)
        assert [a.receive(timeout=10.0).body for _ in range(3)] == [0, 1, 2]
        assert [b.receive(timeout=10.0).body for _ in range(3)] == [0, 1, 2]
    assert seen == {1}, seen


def test_a_flush_cut_short_while_it_writes_the_open_batch_leaves_no_gap(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Two sends join the open batch (which only this thread writes: no late
    write), then a flush is interrupted at its Nth point, N = 1, 2, 3 ...; once
    what is open is written after the sweep, with no flush nor wait of the
    sender (whose resend would fill a gap), every message is handled, in order,
    once."""
    monkeypatch.setattr(forwarder_module, "QUIET", 60.0)    # a send after the first
    monkeypatch.setattr(target_module, "LINGER", 60.0)      # joins the open batch
    reg = posa.LocalRegistry()
    handled: list[Any] = []
    sent: list[int] = []
    sweep = range(1, SWEEP // 4)
    everything = threading.Event()

    def handle(msg: posa.Message) -> None:
        handled.append(msg.body)
        if len(handled) >= 2 * len(sweep):
            everything.set()

    with posa.Peer("rx", registry=reg, handler=handle), \
            posa.Peer("tx", registry=reg, linger=0.0) as sender:
        for at in sweep:
            for _ in range(2):
                sender.send("rx", len(sent), timeout=10.0)
                sent.append(len(sent))
            _interrupted(lambda: sender.flush(10.0), at)
        fwd = sender.sender.forwarder()
        with fwd.lock:
            fwd.write_open()
        assert everything.wait(10.0), f"handled {len(handled)} of {len(sent)}"
        assert handled == sent
