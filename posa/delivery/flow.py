"""A forwarder's flow control as protocol steps, for drivers that must never block.

``Forwarder.send_locked`` waits, blocking its thread, while ``window`` messages
to the recipient are unacknowledged (``Forwarder._await_progress``).  An event
loop must not block, so ``send_steps`` first waits for room the way
``request_steps`` waits for a reply: it yields ``(connection, seconds)`` and is
sent whether the connection became readable (``posa.delivery.waiting``), reads
acknowledgements without blocking, and resends an overdue backlog; once one more
message fits without filling the window, ``send_locked`` sends it and returns at
once.

``mark`` lets a driver that runs the steps of several callers on one forwarder
at once (``posa.aio``: many tasks, one thread) see that a step read something
another waiting step may be looking for (an acknowledgement, a reply, a new
connection), so that it wakes them instead of leaving them to wait on a
descriptor that will not fire again for what was already read.

These are functions of the forwarder (they use its state and recovery); they
live here to keep ``forwarder.py`` within its size.
"""
from __future__ import annotations

import time
from typing import Any

from posa.delivery.forwarder import Forwarder
from posa.delivery.target import BATCH_MAX, Target
from posa.delivery.waiting import Steps
from posa.errors import Timeout, TransportError
from posa.wire.codec import Kind

__all__ = ["send_steps", "has_room", "room_steps", "queue_request", "write_open", "mark"]


def send_steps(fwd: Forwarder, name: str, body: Any, kind: int,
               headers: dict[str, Any] | None, deadline: float) -> Steps[int]:
    """``fwd.send_locked`` as steps that wait for room in the window instead of
    blocking; returns the message's sequence number. Needs ``fwd.window`` ≥ 2."""
    yield from room_steps(fwd, name, deadline)
    return fwd.send_locked(name, body, kind, headers, deadline)


def has_room(fwd: Forwarder, name: str) -> bool:
    """True if ``fwd`` sends to ``name`` already and one more message leaves its
    window short of full (``send_locked`` will not wait)."""
    target = fwd._targets.get(name)
    return target is not None and len(target.out.unacked) < fwd.window - 1


def room_steps(fwd: Forwarder, name: str, deadline: float) -> Steps[None]:
    """Wait until one more message to ``name`` leaves the window short of full,
    so that ``send_locked`` does not wait for acknowledgements."""
    if fwd.window < 2:
        raise ValueError(f"a window of {fwd.window} makes every send wait for its "
                         "acknowledgement; give window=2 or more to send from an event loop")
    target = fwd._targets.get(name)
    while target is not None and len(target.out.unacked) >= fwd.window - 1:
        yield from _progress_steps(fwd, target, deadline)
        target = fwd._targets.get(name)


def _progress_steps(fwd: Forwarder, target: Target, deadline: float) -> Steps[None]:
    """``Forwarder._await_progress`` as steps: until an acknowledgement for
    ``target`` arrives; resends the backlog when one is overdue."""
    if target.batch:
        try:
            target.write_batch()
        except (TransportError, Timeout):
            pass    # the stall clock below resends
    before = target.out.acked
    stall_until = time.monotonic() + fwd.ack_timeout
    while target.out.acked == before and target.out.unacked:
        now = time.monotonic()
        if now >= deadline:
            raise Timeout(
                f"{len(target.out)} message(s) to {target.name!r} at {target.address} "
                "were not acknowledged in time; the peer may be overloaded or gone")
        if now >= stall_until:
            fwd._recover(target, deadline, None)
            stall_until = time.monotonic() + fwd.ack_timeout
            continue
        conn = target.conn
        try:
            frame = conn.recv_nowait()
        except TransportError as exc:
            fwd._recover(target, deadline, exc)
            continue
        if frame is not None:
            fwd._absorb(frame)
        elif not conn.pending():
            yield conn, min(deadline, stall_until) - now


def queue_request(fwd: Forwarder, name: str, body: Any, deadline: float,
                  headers: dict[str, Any] | None) -> int:
    """``fwd.send_request`` that puts the REQUEST in the target's open batch
    rather than writing it; returns its id. The caller writes the open batches
    (``write_open``) before it waits for input, so that the requests several
    tasks make in one turn of an event loop leave in one frame (one write, one
    wake-up of the receiver). Written as ``send_locked`` writes a SEND that
    joins a batch."""
    hdrs = {"ttl": max(1, int((deadline - time.monotonic()) * 1000))}
    if headers:
        hdrs.update(headers)
    target = fwd._targets.get(name)
    if target is None:
        target = fwd._open_target(name, deadline)
    out = target.out
    seq = out.next_seq
    frame = fwd._pack(Kind.REQUEST, target.stream, seq, fwd.name, name, 0, hdrs, body)
    out.next_seq = seq + 1
    out.unacked.append(frame)
    target.batch.append(frame)
    target.batch_bytes += len(frame)
    if len(target.batch) >= BATCH_MAX or target.batch_bytes >= fwd._batch_bytes:
        try:
            target.write_batch()
        except (TransportError, Timeout) as exc:
            fwd._recover(target, deadline, exc)
    return seq


def write_open(fwd: Forwarder) -> None:
    """Write every open batch of ``fwd`` now (the caller holds its lock). A write
    that fails is left to the waiting steps, which resend what is not
    acknowledged (every ``ack_timeout``) and recover a broken connection."""
    for target in list(fwd._targets.values()):
        if target.batch:
            try:
                target.write_batch()
            except (TransportError, Timeout):
                pass


def mark(fwd: Forwarder) -> tuple[int, int, int]:
    """A value that changes when the forwarder read something a waiting step may
    look for: an acknowledgement (``acked`` grows), a reply (the reply table
    changes), a target on a new connection or a target made or dropped."""
    acked = conns = 0
    for target in fwd._targets.values():
        acked += target.out.acked
        conns ^= id(target.conn)
    return acked, len(fwd._replies), conns
