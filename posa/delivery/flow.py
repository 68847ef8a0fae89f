"""A forwarder's sending as protocol steps, for drivers that must never block.

``Forwarder`` inherits it; it lives apart (like ``requesting.py``) because it is
a protocol of its own, written as steps that a driver runs (``posa.aio``).

``Forwarder.send_locked`` waits, blocking its thread, while ``window`` messages
to the recipient are unacknowledged (``_await_progress``).  An event loop must
not block, so ``send_steps`` first waits for room the way ``reply_steps`` waits
for a reply: it yields ``(connection, seconds)`` and is sent whether the
connection became readable (``posa.delivery.waiting``), reads acknowledgements
without blocking, and resends an overdue backlog; once one more message fits
without filling the window, ``send_locked`` sends it and returns at once.
``_acked_steps`` is that wait for acknowledgements, the one loop that a full
window, ``flush`` and the drivers' wait for room all run.

``send_locked`` given a ``failed`` list leaves to its caller the recovery after
a failed write or a MOVED notice (their causes appended, None for a notice) and
the wait for room after the message: ``send_steps``, the group's
``send_in_slice`` (whose message fills a window of 1) and the channel's lanes
wait their own way.  At most ``window`` messages are unacknowledged, whatever
was interrupted: a send waits for room before it takes its message too, if an
interrupted send left the window full (``_make_room``).

``queue_request`` puts a REQUEST in the recipient's open batch instead of
writing it, and ``write_open`` writes the open batches: a driver running the
requests of many tasks on one thread (``posa.aio``) sends those made in one
turn of its loop in one frame.  ``progress_mark`` lets such a driver see that a
step read something another waiting step may look for (an acknowledgement, a
reply, a new connection), so that it wakes it instead of leaving it to wait on
a descriptor that will not fire again for what was already read.
"""
from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from posa.delivery.budget import no_send_deadline, not_finite
from posa.delivery.target import BATCH_MAX
from posa.delivery.waiting import Steps, drive, run_held
from posa.errors import Timeout, TransportError, Unauthorized
from posa.transport.base import Connection
from posa.wire.codec import Kind, Message

if TYPE_CHECKING:
    from posa.delivery.target import Target

__all__ = ["Flow"]

_REQUEST, _SEND = Kind.REQUEST, Kind.SEND


class Flow:
    """Sending as steps, for a ``Forwarder`` (one thread's)."""

    if TYPE_CHECKING:       # what the forwarder provides
        name: str
        lock: threading.Lock
        window: int
        ack_timeout: float
        _batch_bytes: int
        _pack: Callable[..., bytes]
        _replies: dict[tuple[str, int], Message]
        _targets: dict[str, Target]

        def send_locked(self, name: str, body: Any, kind: int,
                        headers: dict[str, Any] | None, deadline: float,
                        failed: list[BaseException | None] | None = None) -> int: ...
        def _open_target(self, name: str, deadline: float) -> Target: ...
        def open_steps(self, name: str, deadline: float) -> Steps[Target]: ...
        def _recover_steps(self, target: Target, deadline: float,
                           cause: BaseException | None,
                           pause: float | None = None) -> Steps[None]: ...
        def _absorb(self, frame: bytes) -> None: ...
        def _give_up(self, target: Target, why: str) -> Timeout: ...
        def _refusal(self, target: Target) -> Unauthorized: ...

    def send_steps(self, name: str, body: Any, kind: int,
                   headers: dict[str, Any] | None, deadline: float) -> Steps[int]:
        """``send_locked`` as steps that wait for room in the window instead of
        blocking; returns the message's sequence number. Needs ``window`` ≥ 2.
        A deadline that is no time (nan, infinite) is refused before any wait."""
        if deadline - deadline:     # nan for nan and infinities, 0.0 for any time
            raise no_send_deadline(deadline)
        yield from self.room_steps(name, deadline)
        failed: list[BaseException | None] = []
        seq = self.send_locked(name, body, kind, headers, deadline, failed)
        if failed:
            yield from self.recovery_steps(name, deadline, failed[0])
        return seq

    def send_in_slice(self, name: str, body: Any, headers: dict[str, Any] | None,
                      deadline: float, pause: float) -> bool:
        """Put one SEND to ``name`` into its stream, waiting for first contact, room
        in the window and a recovery only until ``pause``, and giving nothing up
        before ``deadline``: a group send's slice (``posa.delivery.group``). True
        if the message is in the stream (written, or kept for the recovery that
        goes on after ``pause``); False if it was not sent (no room by ``pause``).
        Raises what a first contact raises (``NameNotFound``; ``Timeout`` at
        ``pause``: nothing sent). The acknowledgement is not waited for, not
        even with a ``window`` of 1 (the message is sent once it is empty): the
        group waits for it a slice at a time."""
        return drive(self.lock, self._slice_steps(name, body, headers, deadline, pause))

    def _slice_steps(self, name: str, body: Any, headers: dict[str, Any] | None,
                     deadline: float, pause: float) -> Steps[bool]:
        if deadline - deadline:     # nan for nan and infinities, 0.0 for any time
            raise no_send_deadline(deadline)
        target = yield from self.open_steps(name, deadline if pause > deadline else pause)
        room = max(self.window - 1, 1)      # this message leaves it short of full (or 1)
        yield from self._acked_steps(target, deadline, lambda: len(target.out.unacked) < room,
                                     pause)
        if self._targets.get(name) is not target or len(target.out.unacked) >= room:
            return False        # the slice ended waiting for room: nothing sent
        failed: list[BaseException | None] = []
        # given ``failed``, send_locked leaves the recovery and the wait for room
        # after the message to this caller: a window of 1 is full with it, and the
        # group waits for its acknowledgement a slice at a time
        self.send_locked(name, body, _SEND, headers, deadline, failed)
        if failed:              # a failed write, a MOVED notice: the message stays in
            yield from self._recover_steps(target, deadline, failed[0], pause)  # the stream
        return True

    def _make_room(self, target: Target, deadline: float) -> None:
        """Before a send takes its message, wait while ``target``'s window is full:
        a send interrupted (``KeyboardInterrupt``) in its wait for room after its
        message leaves it so, and each next one would add one more past ``window``.
        Nothing is taken if this wait is cut short, or refused (a deadline that is
        no time: ``ValueError``)."""
        while len(target.out.unacked) >= self.window:
            if deadline - deadline:     # nan for nan and infinities, 0.0 for any time
                raise no_send_deadline(deadline)
            run_held(self._progress_steps(target, deadline))

    def unstall(self, target: Target) -> None:
        """A send was interrupted (a signal handler's exception) between taking its
        frame into the window and writing it: write the window again (the receiver
        drops the copies), else what follows waits behind the gap for a recovery."""
        try:
            target.resend(self._batch_bytes)
        except (TransportError, Timeout):
            pass        # the next send or wait recovers the stream

    def recovery_steps(self, name: str, deadline: float,
                       cause: BaseException | None) -> Steps[None]:
        """Re-resolve ``name``, reconnect and resend its backlog after ``cause``
        (a failed write; None: a MOVED notice), as steps that yield each back-off."""
        target = self._targets.get(name)
        if target is not None:
            yield from self._recover_steps(target, deadline, cause)

    def has_room(self, name: str) -> bool:
        """True if this forwarder sends to ``name`` already and one more message
        leaves its window short of full (``send_locked`` will not wait)."""
        target = self._targets.get(name)
        return target is not None and len(target.out.unacked) < self.window - 1

    def in_flight(self, name: str) -> int:
        """Messages to ``name`` sent and not acknowledged yet (0 once given up)."""
        target = self._targets.get(name)
        return 0 if target is None else len(target.out.unacked)

    def room_steps(self, name: str, deadline: float) -> Steps[None]:
        """Wait until one more message to ``name`` leaves the window short of full,
        so that ``send_locked`` does not wait for acknowledgements."""
        if self.window < 2:
            raise ValueError(f"a window of {self.window} makes every send wait for its "
                             "acknowledgement; give window=2 or more to send from an "
                             "event loop")
        target = self._targets.get(name)
        if target is None:      # first contact: backs off without blocking too
            target = yield from self.open_steps(name, deadline)
        while target is not None and len(target.out.unacked) >= self.window - 1:
            yield from self._progress_steps(target, deadline)
            target = self._targets.get(name)

    def _progress_steps(self, target: Target, deadline: float) -> Steps[None]:
        """Until an acknowledgement for ``target`` arrives, as steps (the blocking
        ``_await_progress`` runs them too)."""
        if target.batch:
            try:
                target.write_batch()
            except (TransportError, Timeout):
                pass    # the stall clock resends
        before = target.out.acked
        yield from self._acked_steps(
            target, deadline, lambda: target.out.acked != before or not target.out.unacked)

    def queue_request(self, name: str, body: Any, deadline: float,
                      headers: dict[str, Any] | None = None) -> int:
        """``send_request`` that puts the REQUEST in the target's open batch rather
        than writing it; returns its id. The caller writes the open batches
        (``write_open``) before it waits for input. Framed as ``send_locked``
        frames a SEND that joins a batch."""
        try:
            ttl = int((left := deadline - time.monotonic()) * 1000)
        except (OverflowError, ValueError):     # inf, nan
            raise not_finite(left) from None
        hdrs = {"ttl": ttl if ttl > 1 else 1}       # (no max(): it parses keywords)
        if headers:
            hdrs.update(headers)
        target = self._targets.get(name)
        if target is None:
            target = self._open_target(name, deadline)
        out = target.out
        seq = out.next_seq
        frame = self._pack(_REQUEST, target.stream, seq, self.name, name, 0, hdrs, body)
        out.next_seq = seq + 1
        out.unacked.append(frame)
        target.batch.append(frame)
        target.batch_bytes += len(frame)
        if len(target.batch) >= BATCH_MAX or target.batch_bytes >= self._batch_bytes:
            try:
                target.write_batch()
            except (TransportError, Timeout):
                pass    # the caller's reply_steps recover the link and resend
        return seq

    def write_open(self) -> None:
        """Write every open batch now (the caller holds ``lock``). A write that
        fails is left to the waiting steps, which resend what is not
        acknowledged (every ``ack_timeout``) and recover a broken connection."""
        for target in list(self._targets.values()):
            if target.batch:
                try:
                    target.write_batch()
                except (TransportError, Timeout):
                    pass

    def absorb_from(self, conn: Connection) -> None:
        """Take in what ``conn`` holds, without waiting (acknowledgements, answers,
        notices), as a waiting step would; the caller holds ``lock`` and the
        descriptor fired or ``conn`` is ``pending``. Raises ``TransportError``
        if the connection failed (a waiting step recovers it)."""
        frame = conn.recv_nowait()
        while frame is not None:
            self._absorb(frame)
            if not conn.pending():
                return
            frame = conn.recv_nowait()

    def progress_mark(self) -> tuple[int, int, int]:
        """A value that changes when this forwarder read something a waiting step
        may look for: an acknowledgement (``acked`` grows), a reply (the reply
        table changes), a target on a new connection, made or dropped."""
        acked = conns = 0
        for target in self._targets.values():
            acked += target.out.acked
            conns ^= id(target.conn)
        return acked, len(self._replies), conns

    def _acked_steps(self, target: Target, deadline: float, done: Callable[[], bool],
                     pause: float | None = None) -> Steps[None]:
        """Read ``target``'s acknowledgements until ``done()``, as steps: the backlog
        is resent when none came for ``ack_timeout`` s (or a MOVED hint came), and
        given up at ``deadline`` (a Timeout is final). With ``pause``, the wait (and
        a recovery in it) ends then, giving nothing up: a group send's slice of its
        deadline (``posa.delivery.group``). The one waiting loop of ``flush``, of a
        full window and of ``posa.aio``'s wait for room."""
        acked, stall_until = target.out.acked, time.monotonic() + self.ack_timeout
        end = deadline if pause is None or pause > deadline else pause
        while not done():
            if target.refused is not None:
                raise self._refusal(target)
            now = time.monotonic()
            if now >= deadline:
                raise self._give_up(target, f"messages to {target.name!r} at "
                                    f"{target.address} were not acknowledged in time; "
                                    "the peer may be overloaded or gone")
            if now >= end:
                return          # the slice is over: the backlog stays in the stream
            if target.out.acked != acked:       # progress: the stall clock restarts
                acked, stall_until = target.out.acked, now + self.ack_timeout
            if now >= stall_until or target.moved is not None:
                yield from self._recover_steps(target, deadline, None, pause)
                stall_until = time.monotonic() + self.ack_timeout
                continue
            conn = target.conn
            try:
                frame = conn.recv_nowait()
            except TransportError as exc:
                yield from self._recover_steps(target, deadline, exc, pause)
                continue
            if frame is not None:
                self._absorb(frame)
            elif not conn.pending():
                yield conn, max(0.0, min(end, stall_until) - now)
