"""The Forwarder: sends to names, wherever they live now.

One forwarder belongs to one thread (a ``Peer`` keeps one per sending thread),
so the send path contends with no other sender and hands nothing to another
thread: it encodes, writes to its own connection (or joins a batch) and goes on;
its only lock is shared with the reactor's late write of an open batch.  What
comes back on that connection (acknowledgements, replies, "moved" notices) is
read by the same thread, when it sends, waits for a reply or flushes.

Strategy:
- A *target* per recipient name (``posa.delivery.target``): the registration it
  was resolved to (cached: the registry is asked once, not per message), the
  connection, and an ``Outbound`` stream holding every frame until the receiver
  acknowledges it.
- A failed send, an acknowledgement overdue, or a ``MOVED`` notice makes the
  forwarder re-resolve the name and send the unacknowledged frames again on the
  new connection (``posa.delivery.links``); the receiver drops the duplicates.
  A MOVED notice read is only recorded; the recovery that follows it knows the
  caller's deadline. A ``Timeout`` is final for its target (``_give_up``).
- At most ``window`` frames per target are unacknowledged; a sender that gets
  ahead waits for acknowledgements (flow control, bounded memory).
- Bursts travel in ``BATCH`` frames: a SEND to a target that was written to less
  than ``QUIET`` s ago joins an open batch instead of going out alone; the batch
  goes out when it holds ``BATCH_MAX`` envelopes or ``BATCH_BYTES``, when this
  thread sends a request, flushes or waits, and at the latest ``LINGER`` s later
  from the reactor thread.  One transport write, one receiver wake-up and (with
  authentication) one MAC then serve many messages; a lone message pays nothing.
  ``lock`` is what the reactor's late write shares with this thread: the owner
  holds it in every call, and the drivers of ``request_steps``/``flush_steps``
  (``posa.delivery.waiting``) release it only while they wait, after everything
  open has gone out.
"""
from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Collection
from typing import Any

from posa.admission.gatekeeper import Authenticator
from posa.admission.unverified import REFUSED_HEADER, diagnose, refusal_of
from posa.delivery.budget import no_send_deadline
from posa.delivery.flow import Flow
from posa.delivery.links import Links, Resolve
from posa.delivery.quick import Packed as _Packed
from posa.delivery.quick import value_of as _value
from posa.delivery.requesting import Requesting
from posa.delivery.target import BATCH_BYTES, BATCH_MAX, OpenBatches, Target
from posa.delivery.waiting import Steps, drive, run_held
from posa.errors import Closed, PosaError, ProtocolError, Timeout, TransportError, Unauthorized
from posa.runtime.reactor import Reactor
from posa.runtime.trace import active as _traced  # truthy inside a trace: one check
from posa.runtime.trace import outgoing as _outgoing
from posa.transport.base import Connection, Options
from posa.wire.codec import U16 as _U16
from posa.wire.codec import U32 as _U32
from posa.wire.codec import Codec, Kind, Message

__all__ = ["Forwarder"]

ACK_EVERY = 128         # look for acknowledgements every this many sends per target
_EVERY = ACK_EVERY - 1  # (a power of two: every time a sequence number is a multiple)
QUIET = 0.0005          # a SEND to a target written to longer ago than this goes out alone
_monotonic = time.monotonic
_join = b"".join
_NO_HEADERS: dict[str, Any] = {}    # packed for messages without headers; never changed
# the kinds the hot paths compare with: an enum member costs ~0.1 us before Python 3.12
_SEND, _REQUEST, _REPLY, _ERROR, _ACK, _PROGRESS = (
    Kind.SEND, Kind.REQUEST, Kind.REPLY, Kind.ERROR, Kind.ACK, Kind.PROGRESS)


class Forwarder(Requesting, Flow):
    """Sends to names for one thread. Not thread-safe by design: only the reactor's
    late write of open batches shares it, under ``lock``."""

    def __init__(self, name: str, *, resolve: Resolve,
                 codec: Codec, options: Options, window: int = 1024,
                 ack_timeout: float = 1.0,
                 on_notify: Callable[[Message], None] | None = None,
                 authenticator: Authenticator | None = None,
                 reactor: Reactor | None = None) -> None:
        self.name = name
        self.lock = threading.Lock()
        self._batch_bytes = min(BATCH_BYTES, options.max_frame_size // 2)
        self._auth = authenticator
        self._codec = codec
        # this thread's own: no per-call thread lookup
        self._pack, self._packv = codec.packers()
        self._max_frame = codec.limits.max_frame_size
        self.window = window
        self.ack_timeout = ack_timeout
        self._on_notify = on_notify
        self._targets: dict[str, Target] = {}
        self._batches = OpenBatches(self.lock, self._targets, reactor)
        self._links = Links(resolve, options, ack_timeout)
        self._replies: dict[tuple[str, int], Message] = {}
        self._progress: dict[tuple[str, int], float] = {}   # request -> last PROGRESS
        # told the key of every answer read (a driver of many waiting requests wakes
        # the one it answers: ``posa.aio.hub``); None: nobody to tell
        self.on_answer: Callable[[tuple[str, int]], None] | None = None
        self.generation = 0     # moves when a recovery may have replaced a connection
        self._seq_floor = 1         # where new streams start numbering (_drop_target)
        self._pid = os.getpid()
        self.closed = False

    # -- sending -------------------------------------------------------------
    def send(self, name: str, body: Any, *, kind: int = Kind.SEND,
             headers: dict[str, Any] | None = None, deadline: float) -> int:
        """Send one message to ``name`` reliably; returns its sequence number."""
        with self.lock:
            return self.send_locked(name, body, kind, headers, deadline)

    def send_locked(self, name: str, body: Any, kind: int,
                    headers: dict[str, Any] | None, deadline: float,
                    failed: list[BaseException | None] | None = None) -> int:
        """``send`` holding ``lock``; given ``failed``, recovery and waits are the caller's."""
        target = self._targets.get(name) or self._open_target(name, deadline)
        if len(unacked := (out := target.out).unacked) >= self.window:  # an interrupted
            self._make_room(target, deadline)   # send's message is in it (Flow._make_room)
        seq = out.next_seq
        if kind == _SEND and not headers and not _traced():
            packv = self._packv     # the id and the body (unless Packed): the rest is the target's
            try:
                frame = _join((target.head, _U16(0xCD, seq) if 0xFF < seq <= 0xFFFF else
                               _U32(0xCE, seq) if 0xFFFF < seq <= 0xFFFFFFFF else packv(seq),
                               target.middle, body if body.__class__ is _Packed else packv(body)))
                if len(frame) > self._max_frame:
                    raise ValueError(frame)
            except (TypeError, ValueError, OverflowError):  # the full pack raises ProtocolError
                frame = self._pack(kind, target.stream, seq, self.name, name, 0, {}, _value(body))
        else:
            frame = self._pack(kind, target.stream, seq, self.name, name, 0, (  # + a trace's
                _traced() and _outgoing(headers)) or headers or _NO_HEADERS, _value(body))
        out.next_seq, batch = seq + 1, target.batch
        try:
            unacked.append(frame)
            if kind != _SEND:
                if batch:
                    target.write_batch()
                target.write([frame])
            elif batch:
                batch.append(frame)
                target.batch_bytes += len(frame)
                if len(batch) >= BATCH_MAX or target.batch_bytes >= self._batch_bytes:
                    target.write_batch()
            elif _monotonic() - target.written_at < QUIET:
                batch.append(frame)         # a burst: open a batch
                target.batch_bytes = len(frame)
                self._batches.arm()
            else:
                target.write([frame])
        except (TransportError, Timeout) as exc:
            if failed is not None:
                failed.append(exc)
                return seq
            self._recover(target, deadline, exc)
        except BaseException:   # (KeyboardInterrupt) taken, not known written: unstall
            self.unstall(target)
            raise
        if not seq & _EVERY or len(unacked) >= self.window:
            self._catch_up(target, deadline, failed)
        return seq

    def _catch_up(self, target: Target, deadline: float,
                  failed: list[BaseException | None] | None) -> None:
        """Every ``ACK_EVERY`` sends to ``target``, or with the window full: read what
        came back, follow a MOVED notice and wait while the window is full (not for
        a deadline that is no time: ``ValueError``, the message left in the window to
        go on). Given ``failed``, both are the caller's: a MOVED notice appended."""
        self._poll(target)
        if target.moved is not None:
            if failed is not None:
                failed.append(None)
                return
            self._recover(target, deadline, None)
        while failed is None and len(target.out.unacked) >= self.window:
            if deadline - deadline:     # a wait with no end (this send is taken)
                raise no_send_deadline(deadline)
            self._await_progress(target, deadline)

    def pin(self, name: str, address: str) -> None:
        """Send to ``name`` at ``address`` without asking the registry."""
        self._links.pins[name] = address

    def knows(self, name: str) -> bool:
        """True while this forwarder has a stream to ``name`` (not given up)."""
        return name in self._targets

    def flush(self, deadline: float, names: Collection[str] | None = None,
              pause: float | None = None) -> None:
        """Wait until all sent (to ``names`` only, if given) is acknowledged, or raise
        ``Timeout``; at ``pause``, return, giving nothing up (a group send's slice)."""
        drive(self.lock, self.flush_steps(deadline, names, pause))

    def flush_steps(self, deadline: float, names: Collection[str] | None = None,
                    pause: float | None = None) -> Steps[None]:
        """``flush`` as steps, driven like ``request_steps``; a deadline that is no
        time (nan, infinite: never passed) is refused before any wait."""
        if deadline - deadline:     # nan for nan and infinities, 0.0 for any time
            raise no_send_deadline(deadline)
        try:
            self._batches.write_all()
        except (TransportError, Timeout):
            pass    # the stall clock below resends
        for target in [t for t in self._targets.values() if names is None or t.name in names]:
            yield from self._acked_steps(target, deadline, target.out.settled, pause)

    def forget(self, name: str) -> None:
        """Drop the target ``name``: unacknowledged messages to it are given up."""
        with self.lock:
            self._forget(name)

    def _forget(self, name: str) -> None:
        target = self._drop_target(name)
        if target is not None and not any(t.conn is target.conn
                                          for t in self._targets.values()):
            self._links.drop(target.address)

    def _drop_target(self, name: str) -> Target | None:
        target = self._targets.pop(name, None)
        if target is not None:
            # the next stream numbers above this one: a late reply is never a new one's
            self._seq_floor = max(self._seq_floor, target.out.next_seq)
        return target

    def connection(self, name: str) -> Connection:
        """The connection that reaches ``name`` (a pollable reactor source)."""
        return self._targets[name].conn

    def poll(self, name: str) -> None:
        """Read what came back from ``name`` without blocking (acks, replies, notices);
        raises ``TransportError`` if the connection failed."""
        with self.lock:
            self._poll_target(self._targets[name])

    def _poll_target(self, target: Target) -> None:
        conn = target.conn
        while (frame := conn.recv_nowait()) is not None:
            self._absorb(frame)     # (a MOVED notice is recorded: conn stays)

    def unacknowledged(self) -> int:
        return sum(len(t.out) for t in self._targets.values())

    def close(self) -> None:
        if self._pid != os.getpid():    # inherited: the lock may be held by a thread
            self._close()               # of the parent, which is not in this process
            return
        self._links.closing = True      # (a send backing off holds the lock: it ends)
        with self.lock:
            self._close()

    def _close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self._pid != os.getpid():    # the connections are the parent's: no flush;
            from posa.transport.tcp.connection import TcpConnection  # (loaded lazily)
            for target in self._targets.values():   # tcp's (tls's) close closes the
                if isinstance(target.conn, TcpConnection):  # child's copies only; zmq,
                    target.conn.close()     # nats, inproc ones were closed at the fork
            return
        try:
            self._batches.write_all()
        except PosaError:
            pass    # given up, like the rest of what is unacknowledged
        self._links.close()
        self._targets.clear()

    # -- reading what comes back --------------------------------------------
    def _poll(self, target: Target) -> None:
        try:
            self._poll_target(target)
        except TransportError:
            pass  # noticed and handled on the next send

    def _await_progress(self, target: Target, deadline: float) -> None:
        """Block until an acknowledgement for ``target`` arrives (the caller holds
        ``lock``): ``_progress_steps`` waited for with ``select``."""
        run_held(self._progress_steps(target, deadline))

    def _absorb(self, frame: bytes) -> None:
        try:
            if self._auth is None:
                msg = self._codec.decode(frame)
            else:
                envelope, key_id = self._auth.open(frame)
                msg = self._codec.decode(envelope)
                self._auth.check(msg, key_id)
        except Unauthorized as exc:
            self._unverified(frame, exc)
            return
        except ProtocolError:
            return  # a corrupt answer is dropped; the stream's resend covers it
        kind = msg.kind
        if kind == _ACK:
            target = self._targets.get(msg.sender)
            if target is not None and msg.stream == target.stream:
                target.out.ack(msg.id)
        elif kind == _REPLY or kind == _ERROR:     # noqa: SIM109 (no tuple to build)
            if msg.headers and REFUSED_HEADER in msg.headers:
                self._refused(msg.sender, refusal_of(msg))
            key = (msg.sender, msg.correlation)
            self._replies[key] = msg
            target = self._targets.get(msg.sender)
            if kind == _REPLY and target is not None:
                target.out.ack(msg.correlation)  # handled in order: all before it arrived
            if len(self._replies) > 4096:  # replies nobody waits for any more
                self._replies.pop(next(iter(self._replies)))
            if self.on_answer is not None:
                self.on_answer(key)
        elif kind == _PROGRESS:
            progress = self._progress
            progress[(msg.sender, msg.correlation)] = _monotonic()
            if len(progress) > 4096:    # requests nobody waits for any more
                progress.pop(next(iter(progress)))
        elif kind == Kind.MOVED:
            target = self._targets.get(msg.sender)
            body = msg.body if isinstance(msg.body, dict) else {}
            address, epoch = body.get("address"), body.get("epoch")
            if (target is not None and isinstance(address, str) and isinstance(epoch, int)
                    and epoch > target.epoch and address != target.address
                    and (target.moved is None or epoch > target.moved[1])):
                target.moved = (address, epoch)     # followed by the next recovery
        elif kind == Kind.NOTIFY and self._on_notify is not None:
            self._on_notify(msg)

    def _unverified(self, frame: bytes, exc: Unauthorized) -> None:
        """An answer that failed verification: if it says why a target cannot be
        reached (a refusal, a missing key), that target is refused; else it is
        dropped like any forged frame (the stream's resend covers it)."""
        found = diagnose(frame, exc, self._codec, self._targets,
                         getattr(self._auth, "key_id", None))
        if found is not None:
            self._refused(*found)

    def _refused(self, name: str, error: Unauthorized | None) -> None:
        target = self._targets.get(name)
        if target is not None and error is not None and target.refused is None:
            target.refused = error

    def _refusal(self, target: Target) -> Unauthorized:
        """The refusal of ``target`` to raise; the target is dropped with its
        backlog (like a Timeout, a refusal is final for its stream)."""
        assert target.refused is not None
        if self._targets.get(target.name) is target:
            self._forget(target.name)
        return target.refused

    # -- resolving, connecting, recovering ----------------------------------
    def _open_target(self, name: str, deadline: float) -> Target:
        """``open_steps``, blocking (a send's or request's first contact): a
        deadline that is no time (nan, infinite) is refused, nothing sent."""
        if deadline - deadline:     # nan for nan and infinities, 0.0 for any time
            raise no_send_deadline(deadline)
        return run_held(self.open_steps(name, deadline))

    def open_steps(self, name: str, deadline: float) -> Steps[Target]:
        """First contact with ``name`` (resolve, connect, retry until ``deadline``)
        as steps; a driver that must not block runs them before ``send_locked``."""
        target = self._targets.get(name)
        if target is not None:
            return target
        if self.closed:
            raise Closed(f"the forwarder of {self.name!r} is closed")
        if self._pid != os.getpid():    # (a forwarder held across a fork by hand)
            raise Closed(f"this forwarder of {self.name!r} was made before a fork, in the "
                         "parent process: in the child, send through the Peer, Sender or "
                         "Client, which gives the child a forwarder of its own")
        address, epoch, conn = yield from self._links.open_steps(name, deadline)
        target = self._targets[name] = Target(
            name, address, epoch, conn, pinned=name in self._links.pins, sender=self.name,
            first_seq=self._seq_floor, codec=self._codec, authenticator=self._auth)
        return target

    def _recover(self, target: Target, deadline: float, cause: BaseException | None) -> None:
        """``_recover_steps``, blocking (the caller holds ``lock``)."""
        run_held(self._recover_steps(target, deadline, cause))

    def _recover_steps(self, target: Target, deadline: float, cause: BaseException | None,
                       pause: float | None = None) -> Steps[None]:
        """Re-resolve ``target``, resend its backlog until ``deadline`` (or ``pause``:
        then stop, giving nothing up), or give up."""
        self._poll(target)      # acknowledgements already received shrink the backlog
        until = deadline if pause is None or pause >= deadline else pause
        try:
            yield from self._links.relink_steps(target, until, cause, self._batch_bytes)
        except Timeout as exc:
            if until >= deadline:
                raise self._give_up(target, str(exc)) from None
        finally:
            self.generation += 1    # its connection may be another one now

    def _give_up(self, target: Target, why: str) -> Timeout:
        """Drop ``target`` and its backlog; the Timeout says how many (``Links.given_up``)."""
        if self._targets.get(target.name) is target:
            self._forget(target.name)
        return self._links.given_up(target, why)


