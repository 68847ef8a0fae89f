"""One recipient of a forwarder: its stream, its connection, and how frames go out.

A ``Target`` is what a forwarder knows about one name it sends to: the
registration it resolved to (address and epoch), the connection that reaches it,
the ``Outbound`` stream holding every frame until it is acknowledged, and the
open batch of SENDs not written yet.  Its frames go on the wire alone, or several
envelopes of its stream in one ``BATCH`` frame (``Codec.pack_batch`` joins them
without encoding them again), sealed if the forwarder authenticates.

A target made again (after ``forget``) starts a new stream with a fresh random
id, so that its sequence numbers are never taken for an old stream's.
Not thread-safe: it belongs to its forwarder's thread (and the reactor's late
write of an open batch, under the forwarder's lock).

``OpenBatches`` is that late write: an open batch goes out when it is full,
when its thread sends a request, flushes or waits, and at the latest ``LINGER``
s after it opened, from the reactor thread, which takes the forwarder's lock
only if it is free (else it tries again ``LINGER`` s later).
"""
from __future__ import annotations

import itertools
import secrets
import threading
import time

from posa.admission.gatekeeper import Authenticator
from posa.delivery.streams import Outbound
from posa.errors import Closed, PosaError, Unauthorized
from posa.runtime import reactor as reactor_module
from posa.runtime.reactor import Reactor
from posa.transport.base import Connection
from posa.wire.codec import Codec, Kind

__all__ = ["Target", "OpenBatches", "new_stream_id", "BATCH_MAX", "BATCH_BYTES", "LINGER"]

BATCH_MAX = 128         # envelopes in one BATCH frame at most
BATCH_BYTES = 32 * 1024 # bytes of envelopes in one BATCH frame at most (about)
LINGER = 0.001          # an open batch goes out at the latest this long after it opened
_monotonic = time.monotonic
_ids = itertools.count(1)
_SEND = Kind.SEND


def new_stream_id() -> int:
    """A stream id unlikely to repeat across processes and restarts."""
    return (int.from_bytes(secrets.token_bytes(6), "big") << 16 | next(_ids) & 0xFFFF) or 1


class Target:
    """The forwarder's state for one recipient name."""

    __slots__ = ("name", "address", "epoch", "conn", "out", "pinned", "stream",
                 "batch", "batch_bytes", "written_at", "sender", "moved", "refused", "_codec",
                 "_auth", "head", "middle")

    def __init__(self, name: str, address: str, epoch: int, conn: Connection, *,
                 pinned: bool, first_seq: int, sender: str, codec: Codec,
                 authenticator: Authenticator | None) -> None:
        self.name = name
        self.address = address
        self.epoch = epoch
        self.conn = conn
        self.out = Outbound(first_seq)
        self.pinned = pinned      # address given by the caller: never re-resolved
        self.stream = new_stream_id()
        self.batch: list[bytes] = []      # envelopes sent but not written yet, in order
        self.batch_bytes = 0
        self.written_at = 0.0
        self.sender = sender
        # a MOVED notice read and not yet acted on: (address, epoch); the next
        # recovery, which knows the caller's deadline, follows it
        self.moved: tuple[str, int] | None = None
        # an authentication failure read (``posa.admission.unverified``): final
        self.refused: Unauthorized | None = None
        self._codec = codec
        self._auth = authenticator
        # a SEND without headers to this name is ``head + pack(id) + middle +
        # pack(body)`` (``Codec.parts``): the send path packs only what changes
        self.head, self.middle = codec.parts(_SEND, self.stream, sender, name, 0, {})

    def write(self, frames: list[bytes]) -> None:
        """Put ``frames`` (envelopes of this stream, in order) on the wire as one
        frame: alone, or as a BATCH; sealed if authenticating."""
        data = frames[0] if len(frames) == 1 else self._codec.pack_batch(
            self.stream, self.sender, self.name, frames)
        if self._auth is not None:
            data = self._auth.seal(data)
        self.written_at = _monotonic()
        self.conn.send(data)

    def write_batch(self) -> None:
        """Write the open batch, and then close it: a write cut short (a signal
        handler's exception) leaves it open, to go out again (the receiver drops
        copies), not a gap that the frames after it wait behind."""
        self.write(self.batch)
        self.batch, self.batch_bytes = [], 0

    def resend(self, batch_bytes: int) -> None:
        """Write every unacknowledged frame again, oldest first, in batches of at
        most ``BATCH_MAX`` envelopes and about ``batch_bytes`` (the open batch
        too: it is part of the backlog, and closed once all is written)."""
        chunk: list[bytes] = []
        size = 0
        for frame in self.out.backlog():
            if chunk and (len(chunk) >= BATCH_MAX or size + len(frame) > batch_bytes):
                self.write(chunk)
                chunk, size = [], 0
            chunk.append(frame)
            size += len(frame)
        if chunk:
            self.write(chunk)
        self.batch, self.batch_bytes = [], 0


class OpenBatches:
    """Writes the open batches of one forwarder's targets, now or ``LINGER`` s
    after the first opened (from the reactor thread)."""

    def __init__(self, lock: threading.Lock, targets: dict[str, Target],
                 reactor: Reactor | None) -> None:
        self._lock = lock
        self._targets = targets
        self._reactor = reactor
        self._armed = False

    def write_all(self) -> None:
        """Write every open batch now (the caller holds the lock)."""
        for target in self._targets.values():
            if target.batch:
                target.write_batch()

    def arm(self) -> None:
        """Make the reactor write the open batches ``LINGER`` s from now."""
        if self._armed:
            return
        try:
            if self._reactor is None:
                self._reactor = reactor_module.default()
            self._reactor.call_later(LINGER, self._write_late)
        except Closed:
            self.write_all()    # no reactor any more: write at once
            return
        self._armed = True

    def _write_late(self) -> None:
        """Reactor thread: write what the sending thread left in open batches."""
        if not self._lock.acquire(blocking=False):
            assert self._reactor is not None
            self._reactor.call_later(LINGER, self._write_late)   # it is busy: later
            return
        try:
            self._armed = False
            for target in list(self._targets.values()):
                if target.batch:
                    try:
                        target.write_batch()
                    except PosaError:
                        pass  # still unacknowledged: the sending thread's next send,
                        # flush or request resends them (its ack clock runs)
        finally:
            self._lock.release()
