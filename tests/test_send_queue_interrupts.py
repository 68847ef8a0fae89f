"""The tcp send queue against an exception raised between any two bytecodes.

A signal handler that raises (``KeyboardInterrupt`` from Ctrl-C) raises at
whatever bytecode the main thread is at, the send queue's methods included. Each
case here interrupts one call of ``SendQueue`` at one bytecode of the queue's own
code, in turn at every one it runs, and checks that the call took effect or did
not: the bytes the queue still gives are those pushed and not consumed, before or
after the call, in order, and once the next call has run ``len()`` counts the
entries not yet written in full.
"""
from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from types import FrameType
from typing import Any

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from posa.transport import framing
from posa.transport.framing import GREETING, SendQueue, encode_frame

SMALL = [b"a" * 10, b"b" * 300, b"c"]
LARGE = bytes(range(256)) * 280                   # 71,680 bytes: a frame of its own
Tracer = Callable[[FrameType, str, Any], Any]


@dataclass
class Model:
    """What a queue holds: its entries' bytes and how many bytes were written."""
    entries: list[bytes] = field(default_factory=list)
    written: int = 0

    def push(self, data: bytes) -> Model:
        return Model([*self.entries, data], self.written)

    def consume(self, sent: int) -> Model:
        return Model(self.entries, self.written + sent)

    def rest(self) -> bytes:
        return b"".join(self.entries)[self.written:]

    def count(self) -> int:
        """Entries not yet written in full."""
        end, left = 0, 0
        for data in self.entries:
            end += len(data)
            left += end > self.written
        return left


def interrupted(call: Callable[[], object], at: int) -> int:
    """Run ``call``, raising ``KeyboardInterrupt`` at the ``at``-th bytecode it runs
    in posa/transport/framing.py (none if 0); return how many it ran there."""
    ran = 0

    def opcodes(frame: FrameType, event: str, arg: object) -> Tracer | None:
        nonlocal ran
        if event == "opcode":
            ran += 1
            if ran == at:
                raise KeyboardInterrupt
        return opcodes

    def calls(frame: FrameType, event: str, arg: object) -> Tracer | None:
        if frame.f_code.co_filename != framing.__file__:
            return None
        frame.f_trace_opcodes = True
        return opcodes

    sys.settrace(calls)
    try:
        call()
    except KeyboardInterrupt:
        pass
    finally:
        sys.settrace(None)
    return ran


def drained(queue: SendQueue, take: int) -> bytes:
    """Every byte the queue gives, written by a socket taking ``take`` at a time."""
    out = bytearray()
    while queue:
        head = queue.head()
        sent = min(take, len(head))
        out += head[:sent]
        queue.consume(sent)
    assert len(queue) == 0
    return bytes(out)


def queue_holding(frames: list[bytes], raw: bytes = b"", written: int = 0,
                  looked: bool = False) -> tuple[SendQueue, Model]:
    queue, model = SendQueue(), Model()
    if raw:
        queue.push_raw(raw)
        model = model.push(raw)
    for frame in frames:
        queue.push(frame)
        model = model.push(encode_frame(frame))
    if looked and queue:
        queue.head()                   # a join the kernel refused, kept for the retry
    if written:
        queue.consume(written)
        model = model.consume(written)
    return queue, model


STATES: dict[str, Callable[[], tuple[SendQueue, Model]]] = {
    "empty": lambda: queue_holding([]),
    "one frame": lambda: queue_holding([SMALL[0]]),
    "frames": lambda: queue_holding(SMALL, raw=GREETING),
    "frames joined": lambda: queue_holding(SMALL, raw=GREETING, looked=True),
    "frames joined, written in part": lambda: queue_holding(SMALL, looked=True, written=20),
    "a large frame's header in part": lambda: queue_holding([SMALL[2], LARGE], written=7),
    "a large frame in part": lambda: queue_holding([LARGE, SMALL[0]], written=1000),
}

Op = Callable[[SendQueue], object]
OPS: dict[str, tuple[Op, Callable[[Model], Model]]] = {
    "push": (lambda q: q.push(b"new" * 5), lambda m: m.push(encode_frame(b"new" * 5))),
    "push large": (lambda q: q.push(LARGE), lambda m: m.push(encode_frame(LARGE))),
    "push_raw": (lambda q: q.push_raw(b"raw!"), lambda m: m.push(b"raw!")),
    "push_raw a view": (lambda q: q.push_raw(memoryview(b"xyz")[1:]),
                        lambda m: m.push(b"yz")),
    "head": (lambda q: q.head() if q else None, lambda m: m),
    "consume 3": (lambda q: q.consume(3) if q else None,
                  lambda m: m.consume(3) if m.rest() else m),
    "consume an entry and a half": (
        lambda q: q.consume(min(21, len(q.head()))) if q else None, None),
    "consume the head": (lambda q: q.consume(len(q.head())) if q else None, None),
    "clear": (lambda q: q.clear(), lambda m: Model([], 0)),
}


def after_consuming_the_head(state: str, most: int) -> Model:
    queue, model = STATES[state]()
    return model.consume(min(most, len(queue.head()))) if queue else model


@pytest.mark.parametrize("op", list(OPS))
@pytest.mark.parametrize("state", list(STATES))
def test_an_interrupt_at_any_bytecode_leaves_the_queue_before_or_after_the_call(
        state: str, op: str) -> None:
    call, effect = OPS[op]
    queue, before = STATES[state]()
    after = effect(before) if effect else after_consuming_the_head(
        state, 21 if op == "consume an entry and a half" else 1 << 30)
    runs = interrupted(partial(call, queue), 0)
    assert drained(queue, 1 << 30) == after.rest()
    for at in range(1, runs + 1):
        for take in (1 << 30, 4099, 5):
            if take == 5 and len(after.rest()) > 1000:
                continue
            queue, _ = STATES[state]()
            interrupted(partial(call, queue), at)
            if queue:
                queue.head()           # the next call: it finishes what was cut
            count = len(queue)
            rest = drained(queue, take)
            assert rest in (before.rest(), after.rest()), (at, take)
            expected = after if rest == after.rest() else before
            assert count == expected.count(), (at, take)


def test_clear_interrupted_forgets_all_or_nothing() -> None:
    queue, before = STATES["frames joined, written in part"]()
    runs = interrupted(queue.clear, 0)
    for at in range(1, runs + 1):
        queue, before = STATES["frames joined, written in part"]()
        interrupted(queue.clear, at)
        assert drained(queue, 7) in (b"", before.rest())
        queue.push(b"next")            # what follows a clear() goes on
        assert drained(queue, 3) == encode_frame(b"next")


class Interrupted(RuleBasedStateMachine):
    """Random pushes, heads and partial writes, some cut at a random bytecode,
    against a model of the stream."""

    def __init__(self) -> None:
        super().__init__()
        self.queue = SendQueue()
        self.models = [Model()]        # what the queue may hold: before or after a cut
        self.pushed = 0

    def _run(self, call: Callable[[], object], effect: Callable[[Model], Model],
             cut: int) -> None:
        model = self.models[0]
        interrupted(call, cut)
        self.models = [model, effect(model)] if cut else [effect(model)]

    def _settle(self) -> None:
        """Make the next call; then only one model is the queue's."""
        if len(self.models) > 1 and self.queue:
            self.queue.head()
        for model in self.models:
            if self._matches(model):
                self.models = [model]
                return
        raise AssertionError("the queue holds neither what it held nor what it should")

    def _matches(self, model: Model) -> bool:
        twin = SendQueue()             # the queue's bytes, read without consuming them
        twin.extend(self.queue)
        for name in SendQueue.__slots__:
            setattr(twin, name, getattr(self.queue, name))
        return drained(twin, 1 << 30) == model.rest() and len(self.queue) == model.count()

    @rule(size=st.sampled_from([0, 1, 100, 70_000]), cut=st.integers(0, 30))
    def push(self, size: int, cut: int) -> None:
        self._settle()
        self.pushed += 1
        frame = bytes([self.pushed % 256]) * size
        self._run(lambda: self.queue.push(frame), lambda m: m.push(encode_frame(frame)), cut)

    @rule(size=st.integers(1, 20), cut=st.integers(0, 20))
    def push_raw(self, size: int, cut: int) -> None:
        self._settle()
        data = bytes(range(size))
        self._run(lambda: self.queue.push_raw(data), lambda m: m.push(data), cut)

    @precondition(lambda self: bool(self.queue))
    @rule(part=st.integers(0, 100), cut=st.integers(0, 80))
    def write(self, part: int, cut: int) -> None:
        self._settle()
        if not self.queue:
            return
        head = self.queue.head()
        assert bytes(head) == self.models[0].rest()[:len(head)]
        sent = len(head) * part // 100
        self._run(lambda: self.queue.consume(sent), lambda m: m.consume(sent), cut)

    @precondition(lambda self: bool(self.queue))
    @rule(cut=st.integers(1, 80))
    def look(self, cut: int) -> None:
        self._settle()
        self._run(self.queue.head, lambda m: m, cut)

    @invariant()
    def holds_one_of_its_models(self) -> None:
        self._settle()


TestInterruptedStateful = Interrupted.TestCase
TestInterruptedStateful.settings = settings(max_examples=60, stateful_step_count=25,
                                            deadline=None)
