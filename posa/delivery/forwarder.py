"""The Forwarder: sends to names, wherever they live now.

One forwarder belongs to one thread (a ``Peer`` keeps one per sending thread),
so the send path contends with no other sender and hands nothing to another
thread: it encodes, writes to its own connection (or joins a batch) and goes on;
its only lock is shared with the reactor's late write of an open batch.  What comes back on that connection
(acknowledgements, replies, "moved" notices) is read by the same thread, when it
sends, waits for a reply or flushes.

Strategy:
- A *target* per recipient name: the registration it was resolved to (cached:
  the registry is asked once, not per message), the connection, and an
  ``Outbound`` stream holding every frame until the receiver acknowledges it.
- A failed send, an acknowledgement overdue, or a ``MOVED`` notice makes the
  forwarder re-resolve the name and send the unacknowledged frames again on the
  new connection; the receiver drops the duplicates.  Retries end at the
  message's deadline with an error that names the target.
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
  release it only while they wait, after everything open has gone out.
"""
from __future__ import annotations

import itertools
import logging
import os
import secrets
import select
import threading
import time
from collections.abc import Callable, Generator
from typing import Any, TypeVar

from posa import transport
from posa.admission.gatekeeper import Authenticator
from posa.delivery.streams import Outbound
from posa.errors import (
    Closed,
    NameNotFound,
    PosaError,
    ProtocolError,
    Timeout,
    TransportError,
    Unauthorized,
    from_wire,
)
from posa.runtime import reactor as reactor_module
from posa.runtime.reactor import Reactor
from posa.transport.base import Connection, Options
from posa.wire.codec import Codec, Kind, Message

__all__ = ["Forwarder", "Sender"]

log = logging.getLogger("posa.delivery.forwarder")

ACK_EVERY = 128         # look for acknowledgements every this many sends per target
BATCH_MAX = 128         # envelopes in one BATCH frame at most
BATCH_BYTES = 32 * 1024 # bytes of envelopes in one BATCH frame at most (about)
QUIET = 0.0005          # a SEND to a target written to longer ago than this goes out alone
LINGER = 0.001          # an open batch goes out at the latest this long after it opened
_monotonic = time.monotonic
_NO_HEADERS: dict[str, Any] = {}    # packed for messages without headers; never changed
# the kinds the hot paths compare with, as module globals: looking a member up on
# its enum class costs ~0.1 us before Python 3.12
_SEND, _REQUEST, _REPLY, _ERROR, _ACK = (Kind.SEND, Kind.REQUEST, Kind.REPLY, Kind.ERROR,
                                        Kind.ACK)
_ids = itertools.count(1)


def new_stream_id() -> int:
    """A stream id unlikely to repeat across processes and restarts."""
    return (int.from_bytes(secrets.token_bytes(6), "big") << 16 | next(_ids) & 0xFFFF) or 1


class _Target:
    __slots__ = ("name", "address", "epoch", "conn", "out", "pinned", "since_poll", "stream",
                 "batch", "batch_bytes", "written_at")

    def __init__(self, name: str, address: str, epoch: int, conn: Connection,
                 pinned: bool, first_seq: int) -> None:
        self.name = name
        self.address = address
        self.epoch = epoch
        self.conn = conn
        self.out = Outbound(first_seq)
        self.pinned = pinned      # address given by the caller: never re-resolved
        self.since_poll = 0
        # a stream of its own: a target made again (after forget) starts a new
        # stream, so its sequence numbers are never taken for old ones
        self.stream = new_stream_id()
        self.batch: list[bytes] = []      # envelopes sent but not written yet, in order
        self.batch_bytes = 0
        self.written_at = 0.0


class Forwarder:
    """Sends to names for one thread. Not thread-safe by design: only the reactor's
    late write of open batches shares it, under ``lock``."""

    def __init__(self, name: str, *, resolve: Callable[[str, bool], tuple[tuple[str, ...], int]],
                 codec: Codec, options: Options, window: int = 1024,
                 ack_timeout: float = 1.0,
                 on_notify: Callable[[Message], None] | None = None,
                 authenticator: Authenticator | None = None,
                 reactor: Reactor | None = None) -> None:
        self.name = name
        self.lock = threading.Lock()
        self._reactor = reactor
        self._tail_armed = False
        self._batch_bytes = min(BATCH_BYTES, options.max_frame_size // 2)
        self._auth = authenticator
        self._resolve = resolve
        self._codec = codec
        self._pack = codec.packer()     # this thread's own: no per-call thread lookup
        self._options = options
        self.window = window
        self.ack_timeout = ack_timeout
        self._on_notify = on_notify
        self._targets: dict[str, _Target] = {}
        self._pins: dict[str, str] = {}
        self._conns: dict[str, Connection] = {}
        self._replies: dict[tuple[str, int], Message] = {}
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
                    headers: dict[str, Any] | None, deadline: float) -> int:
        """``send`` for a caller that holds ``lock`` (the hot path of ``Peer.send``)."""
        target = self._targets.get(name)
        if target is None:
            target = self._open_target(name, deadline)
        out = target.out
        seq = out.next_seq
        frame = self._pack(kind, target.stream, seq, self.name, name, 0,
                           headers or _NO_HEADERS, body)
        out.next_seq = seq + 1
        unacked = out.unacked
        unacked.append(frame)
        batch = target.batch
        try:
            if kind != _SEND:
                if batch:
                    self._write_batch(target)
                self._write(target, [frame])
            elif batch:
                batch.append(frame)
                target.batch_bytes += len(frame)
                if len(batch) >= BATCH_MAX or target.batch_bytes >= self._batch_bytes:
                    self._write_batch(target)
            elif _monotonic() - target.written_at < QUIET:
                batch.append(frame)         # a burst: open a batch
                target.batch_bytes = len(frame)
                self._arm_tail()
            else:
                self._write(target, [frame])
        except (TransportError, Timeout) as exc:
            self._recover(target, deadline, exc)
        polls = target.since_poll = target.since_poll + 1
        if polls >= ACK_EVERY or len(unacked) >= self.window:
            target.since_poll = 0
            self._poll(target)
            while len(unacked) >= self.window:
                self._await_progress(target, deadline)
        return seq

    def _write(self, target: _Target, frames: list[bytes]) -> None:
        """Put ``frames`` (envelopes of ``target``'s stream, in order) on the wire
        as one frame: alone, or as a BATCH; sealed if authenticating."""
        data = frames[0] if len(frames) == 1 else self._codec.pack_batch(
            target.stream, self.name, target.name, frames)
        if self._auth is not None:
            data = self._auth.seal(data)
        target.written_at = _monotonic()
        target.conn.send(data)

    def _write_batch(self, target: _Target) -> None:
        frames, target.batch, target.batch_bytes = target.batch, [], 0
        self._write(target, frames)

    def _write_open_batches(self) -> None:
        for target in self._targets.values():
            if target.batch:
                self._write_batch(target)

    def _arm_tail(self) -> None:
        """Make the reactor write the open batches ``LINGER`` s from now."""
        if self._tail_armed:
            return
        try:
            if self._reactor is None:
                self._reactor = reactor_module.default()
            self._reactor.call_later(LINGER, self._write_tail)
        except Closed:
            self._write_open_batches()    # no reactor any more: write at once
            return
        self._tail_armed = True

    def _write_tail(self) -> None:
        """Reactor thread: write what the sending thread left in open batches."""
        if not self.lock.acquire(blocking=False):
            assert self._reactor is not None
            self._reactor.call_later(LINGER, self._write_tail)   # it is busy: later
            return
        try:
            self._tail_armed = False
            for target in list(self._targets.values()):
                if target.batch:
                    try:
                        self._write_batch(target)
                    except PosaError:
                        pass  # still unacknowledged: the sending thread's next send,
                        # flush or request resends them (its ack clock runs)
        finally:
            self.lock.release()

    def pin(self, name: str, address: str) -> None:
        """Send to ``name`` at ``address`` without asking the registry."""
        self._pins[name] = address

    def request(self, name: str, body: Any, *, timeout: float,
                headers: dict[str, Any] | None = None, failfast: bool = False) -> Message:
        """Send a REQUEST and wait for its REPLY; raises the ERROR it gets back.

        With ``failfast`` a broken connection raises ``TransportError`` at once
        instead of being retried until the deadline (the caller fails over)."""
        return _drive(self.lock, self.request_steps(name, body, timeout=timeout,
                                                    headers=headers, failfast=failfast))

    def request_steps(self, name: str, body: Any, *, timeout: float,
                      headers: dict[str, Any] | None = None, failfast: bool = False
                      ) -> Generator[tuple[Connection, float], bool, Message]:
        """A request as steps: it yields ``(connection, seconds)`` whenever it must
        wait for input, expects to be sent whether the connection became readable,
        and returns the reply. ``request`` drives it with ``select``; ``posa.aio``
        with the event loop, so the protocol is written once. Drivers hold ``lock``
        while a step runs and release it while they wait."""
        deadline = time.monotonic() + timeout
        hdrs = {"ttl": int(timeout * 1000)}
        if headers:
            hdrs.update(headers)
        seq = self.send_locked(name, body, _REQUEST, hdrs, deadline)
        key = (name, seq)
        target = self._targets[name]
        while True:
            reply = self._replies.pop(key, None)
            if reply is not None:
                if reply.kind == _ERROR:
                    code, kind, text = _error_fields(reply.body)
                    raise from_wire(code, kind, text)
                return reply
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise Timeout(f"no reply from {name!r} within {timeout} s "
                              f"(at {target.address}); is its handler slow or stuck?")
            conn = target.conn
            try:
                # nothing queued: wait for the descriptor, which fires for the next
                # frame (posa/transport/base.py); no receive that would find nothing
                if not conn.pending():
                    if not (yield conn, min(remaining, self.ack_timeout)):
                        if target.out.unacked and target.out.first_unacked() <= seq:
                            self._recover(target, deadline, None)  # not delivered yet
                        continue
                frame = conn.recv_nowait()
            except TransportError as exc:
                if failfast:
                    self._drop_connection(target.address)
                    self._drop_target(name)
                    raise TransportError(f"lost the connection to {name!r} at "
                                         f"{target.address} while waiting for a reply: "
                                         f"{exc}") from None
                self._recover(target, deadline, exc)
                continue
            if frame is not None:
                self._absorb(frame)
            target = self._targets.get(name, target)

    def flush(self, deadline: float) -> None:
        """Wait until every message sent so far is acknowledged (or raise ``Timeout``)."""
        _drive(self.lock, self.flush_steps(deadline))

    def flush_steps(self, deadline: float) -> Generator[tuple[Connection, float], bool, None]:
        """``flush`` as steps, driven like ``request_steps``."""
        try:
            self._write_open_batches()
        except (TransportError, Timeout):
            pass    # the stall clock below resends
        for target in list(self._targets.values()):
            acked, stall_until = target.out.acked, time.monotonic() + self.ack_timeout
            while target.out.unacked:
                now = time.monotonic()
                if now >= deadline:
                    raise Timeout(
                        f"{len(target.out)} message(s) to {target.name!r} at "
                        f"{target.address} were not acknowledged in time; the peer may "
                        "be overloaded or gone")
                if target.out.acked != acked:       # progress: the stall clock restarts
                    acked, stall_until = target.out.acked, now + self.ack_timeout
                if now >= stall_until:
                    self._recover(target, deadline, None)
                    stall_until = time.monotonic() + self.ack_timeout
                    continue
                conn = target.conn
                try:
                    frame = conn.recv_nowait()
                except TransportError as exc:
                    self._recover(target, deadline, exc)
                    continue
                if frame is not None:
                    self._absorb(frame)
                elif not conn.pending():
                    yield conn, min(deadline, stall_until) - now

    def forget(self, name: str) -> None:
        """Drop the target ``name``: unacknowledged messages to it are given up."""
        with self.lock:
            self._forget(name)

    def _forget(self, name: str) -> None:
        target = self._drop_target(name)
        if target is not None and not any(t.conn is target.conn
                                          for t in self._targets.values()):
            self._drop_connection(target.address)

    def _drop_target(self, name: str) -> _Target | None:
        target = self._targets.pop(name, None)
        if target is not None:
            # the next stream numbers its messages above this one's, so that a late
            # reply to one of its requests can never be taken for a new one's
            self._seq_floor = max(self._seq_floor, target.out.next_seq)
        return target

    def connection(self, name: str) -> Connection:
        """The connection that reaches ``name`` (a pollable reactor source)."""
        return self._targets[name].conn

    def poll(self, name: str) -> None:
        """Read what came back from ``name`` without blocking (acks, replies, notices).

        Raises ``TransportError`` if the connection failed."""
        with self.lock:
            self._poll_target(self._targets[name])

    def _poll_target(self, target: _Target) -> None:
        conn = target.conn
        frame = conn.recv_nowait()
        while frame is not None:
            self._absorb(frame)
            if target.conn is not conn:
                return
            frame = conn.recv_nowait()

    def take_reply(self, name: str, seq: int) -> Message | None:
        """The reply ``name`` sent to request ``seq``, if it came (removed)."""
        return self._replies.pop((name, seq), None)

    def peek_reply(self, name: str, seq: int) -> Message | None:
        """The reply ``name`` sent to request ``seq``, if it came (kept)."""
        return self._replies.get((name, seq))

    def unacknowledged(self) -> int:
        return sum(len(t.out) for t in self._targets.values())

    def close(self) -> None:
        with self.lock:
            self._close()

    def _close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self._pid != os.getpid():
            return  # connections belong to the parent process
        try:
            self._write_open_batches()
        except PosaError:
            pass    # given up, like the rest of what is unacknowledged
        for conn in self._conns.values():
            try:
                conn.close()
            except PosaError:
                pass
        self._conns.clear()
        self._targets.clear()

    # -- reading what comes back --------------------------------------------
    def _poll(self, target: _Target) -> None:
        try:
            self._poll_target(target)
        except TransportError:
            pass  # noticed and handled on the next send

    def _await_progress(self, target: _Target, deadline: float) -> None:
        """Block until an acknowledgement for ``target`` arrives; resend if overdue."""
        if target.batch:
            try:
                self._write_batch(target)
            except (TransportError, Timeout):
                pass    # the stall clock below resends
        before = target.out.acked
        stall_until = time.monotonic() + self.ack_timeout
        while target.out.acked == before and target.out.unacked:
            now = time.monotonic()
            if now >= deadline:
                raise Timeout(
                    f"{len(target.out)} message(s) to {target.name!r} at {target.address} "
                    "were not acknowledged in time; the peer may be overloaded or gone")
            if now >= stall_until:
                self._recover(target, deadline, None)
                stall_until = time.monotonic() + self.ack_timeout
                continue
            try:
                frame = target.conn.recv(min(deadline, stall_until) - now)
            except Timeout:
                continue
            except TransportError as exc:
                self._recover(target, deadline, exc)
                continue
            self._absorb(frame)

    def _absorb(self, frame: bytes) -> None:
        try:
            if self._auth is None:
                msg = self._codec.decode(frame)
            else:
                envelope, key_id = self._auth.open(frame)
                msg = self._codec.decode(envelope)
                self._auth.check(msg, key_id)
        except (ProtocolError, Unauthorized):
            return  # a corrupt or forged answer is dropped; the stream's resend covers it
        kind = msg.kind
        if kind == _ACK:
            target = self._targets.get(msg.sender)
            if target is not None and msg.stream == target.stream:
                target.out.ack(msg.id)
        elif kind == _REPLY or kind == _ERROR:
            self._replies[(msg.sender, msg.correlation)] = msg
            target = self._targets.get(msg.sender)
            if kind == _REPLY and target is not None:
                target.out.ack(msg.correlation)  # handled in order: all before it arrived
            if len(self._replies) > 4096:  # replies nobody waits for any more
                self._replies.pop(next(iter(self._replies)))
        elif kind == Kind.MOVED:
            target = self._targets.get(msg.sender)
            body = msg.body if isinstance(msg.body, dict) else {}
            address, epoch = body.get("address"), body.get("epoch")
            if (target is not None and isinstance(address, str) and isinstance(epoch, int)
                    and epoch > target.epoch and address != target.address):
                self._switch(target, address, epoch)
        elif kind == Kind.NOTIFY and self._on_notify is not None:
            self._on_notify(msg)

    # -- resolving, connecting, recovering ----------------------------------
    def _open_target(self, name: str, deadline: float) -> _Target:
        if self.closed:
            raise Closed(f"the forwarder of {self.name!r} is closed")
        if self._pid != os.getpid():
            raise Closed("this peer was created in the parent process; create peers "
                         "after fork, in the process that uses them")
        pinned = self._pins.get(name)
        if pinned is not None:
            addresses, epoch = (pinned,), 0
        else:
            addresses, epoch = self._resolve(name, False)
        address, conn = self._connect_any(name, addresses)
        target = self._targets[name] = _Target(name, address, epoch, conn, pinned is not None,
                                               self._seq_floor)
        return target

    def _connect_any(self, name: str, addresses: tuple[str, ...]) -> tuple[str, Connection]:
        failures = []
        for address in addresses:
            try:
                return address, self._connect(address)
            except TransportError as exc:
                failures.append(str(exc))
        raise TransportError(f"cannot reach {name!r} at any of its addresses: "
                             + "; ".join(failures or ["it has none"]))

    def _connect(self, address: str) -> Connection:
        conn = self._conns.get(address)
        if conn is None:
            conn = self._conns[address] = transport.connect(address, self._options)
        return conn

    def _drop_connection(self, address: str) -> None:
        conn = self._conns.pop(address, None)
        if conn is not None:
            try:
                conn.close()
            except PosaError:
                pass

    def _switch(self, target: _Target, address: str, epoch: int) -> None:
        """Point ``target`` at a new address and send its backlog there."""
        target.conn = self._connect(address)
        target.address = address
        target.epoch = epoch
        self._resend(target)

    def _resend(self, target: _Target) -> None:
        """Write every unacknowledged frame of ``target`` again, oldest first (the
        open batch too: it is part of the backlog)."""
        target.batch, target.batch_bytes = [], 0
        chunk: list[bytes] = []
        size = 0
        for frame in target.out.backlog():
            if chunk and (len(chunk) >= BATCH_MAX or size + len(frame) > self._batch_bytes):
                self._write(target, chunk)
                chunk, size = [], 0
            chunk.append(frame)
            size += len(frame)
        if chunk:
            self._write(target, chunk)

    def _recover(self, target: _Target, deadline: float, cause: BaseException | None) -> None:
        """Re-resolve ``target`` and resend its backlog, retrying until ``deadline``."""
        delay = 0.005
        last: BaseException | None = cause
        self._poll(target)      # acknowledgements already received shrink the backlog
        while True:
            try:
                if cause is not None or last is not None:
                    self._drop_connection(target.address)
                if target.pinned:
                    addresses, epoch = (target.address,), target.epoch
                else:
                    addresses, epoch = self._resolve(target.name, True)
                address = target.address if target.address in addresses else addresses[0]
                if address != target.address or target.conn is not self._conns.get(address):
                    address, conn = self._connect_any(target.name, (address,) + tuple(
                        a for a in addresses if a != address))
                    target.conn, target.address = conn, address
                target.epoch = max(target.epoch, epoch)
                self._resend(target)
                return
            except (TransportError, Timeout, NameNotFound) as exc:
                last = exc
                cause = exc
            if time.monotonic() + delay >= deadline:
                raise Timeout(f"cannot deliver to {target.name!r}: {last}; gave up at the "
                              "message's deadline") from None
            time.sleep(delay)  # back off before asking the registry again
            delay = min(delay * 2, 0.2)


_T = TypeVar("_T")


def _drive(lock: threading.Lock, steps: Generator[tuple[Connection, float], bool, _T]) -> _T:
    """Run protocol steps holding ``lock``, waiting for each connection with
    ``select`` without it."""
    try:
        with lock:
            conn, wait = next(steps)
        while True:
            ready = _readable(conn, wait)
            with lock:
                conn, wait = steps.send(ready)
    except StopIteration as done:
        return done.value  # type: ignore[no-any-return]


def _readable(conn: Connection, timeout: float) -> bool:
    """Wait up to ``timeout`` s for ``conn``'s descriptor; True if it fired."""
    try:
        return bool(select.select([conn.fileno()], [], [], timeout)[0])
    except (OSError, ValueError, PosaError):
        return True  # closed under us: the next receive says how


def _error_fields(body: Any) -> tuple[int, str, str]:
    if isinstance(body, list) and len(body) == 3:
        code, kind, text = body
        if isinstance(code, int) and isinstance(kind, str) and isinstance(text, str):
            return code, kind, text
    return 0, "PosaError", f"malformed error reply: {body!r:.80}"


class Sender:
    """Sends to names on behalf of ``name``, from any number of threads.

    Each thread gets a ``Forwarder`` of its own (its own stream, connections and
    order), so sends never contend for a lock. ``Peer`` sends through one; a
    publisher or client that receives nothing uses one directly (``name`` may be
    empty for an anonymous sender)."""

    def __init__(self, name: str, *, resolve: Callable[[str, bool], tuple[tuple[str, ...], int]],
                 codec: Codec | None = None, options: Options | None = None,
                 window: int = 1024, ack_timeout: float = 1.0,
                 on_notify: Callable[[Message], None] | None = None,
                 authenticator: Authenticator | None = None,
                 pins: dict[str, str] | None = None, reactor: Reactor | None = None) -> None:
        self.name = name
        self.pins = dict(pins or {})
        self.codec = codec or Codec()
        self.options = options or Options(max_frame_size=self.codec.limits.max_frame_size)
        self._make = lambda: Forwarder(name, resolve=resolve, codec=self.codec,
                                       options=self.options, window=window,
                                       ack_timeout=ack_timeout, on_notify=on_notify,
                                       authenticator=authenticator, reactor=reactor)
        self._local = threading.local()
        self._all: list[Forwarder] = []
        self._lock = threading.Lock()
        self.closed = False

    def forwarder(self) -> Forwarder:
        """This thread's forwarder."""
        fwd = getattr(self._local, "fwd", None)
        if fwd is None or fwd.closed:
            if self.closed:
                raise Closed(f"the sender {self.name!r} is closed")
            fwd = self._local.fwd = self._make()
            for pinned, address in self.pins.items():
                fwd.pin(pinned, address)
            with self._lock:
                self._all.append(fwd)
        return fwd  # type: ignore[no-any-return]

    def send(self, name: str, body: Any, *, headers: dict[str, Any] | None = None,
             timeout: float = 5.0, kind: int = Kind.SEND) -> int:
        """Send reliably to one name; returns the message's sequence number."""
        return self.forwarder().send(name, body, kind=kind, headers=headers,
                                     deadline=time.monotonic() + timeout)

    def request(self, name: str, body: Any, *, timeout: float = 5.0,
                headers: dict[str, Any] | None = None, failfast: bool = False) -> Message:
        """Send a request to one name and return the reply message."""
        return self.forwarder().request(name, body, timeout=timeout, headers=headers,
                                        failfast=failfast)

    def forget(self, name: str) -> None:
        """For this thread: drop what is known about ``name`` (its next send resolves
        it again); its unacknowledged messages are given up."""
        self.forwarder().forget(name)

    def flush(self, timeout: float = 5.0) -> None:
        """Wait until everything this thread sent is acknowledged."""
        self.forwarder().flush(time.monotonic() + timeout)

    def unacknowledged(self) -> int:
        """Messages sent by every thread and not yet acknowledged (approximate)."""
        with self._lock:
            forwarders = list(self._all)
        return sum(fwd.unacknowledged() for fwd in forwarders)

    def close(self, linger: float = 0.0) -> None:
        """Flush this thread's messages for up to ``linger`` s, then close every
        forwarder. Call it when the other sending threads are done."""
        if self.closed:
            return
        mine = getattr(self._local, "fwd", None)
        if mine is not None and linger > 0:
            try:
                mine.flush(time.monotonic() + linger)
            except PosaError as exc:
                log.warning("%s: closing with undelivered messages: %s", self.name, exc)
        self.closed = True
        with self._lock:
            forwarders, self._all = self._all, []
        for fwd in forwarders:
            fwd.close()
