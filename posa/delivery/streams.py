"""Reliable streams between a forwarder and a receiver (sans-IO).

Every message a forwarder sends to one recipient name carries the forwarder's
``stream`` id and a sequence number ``id`` (1, 2, 3 ...).  The receiver delivers
each stream strictly in sequence order, drops duplicates, holds a bounded number
of early arrivals, and answers with cumulative ``ACK`` messages (one for many
messages; a REPLY to the newest one acknowledges instead: ``posa.delivery.receiver``).
The forwarder keeps every frame until it is acknowledged and sends the
unacknowledged tail again after a failure or a move.

That is what makes migration and reconnection lossless and duplicate-free:
a frame may travel twice (through the old and the new address), but it is
delivered once, in order.

    forwarder                          receiver
    Outbound.unacked += (seq, frame) ─▶ Inbound.accept(msg) -> deliver in order
    Outbound.ack(n)           ◀──────  ACK(stream, id=n) for many messages
    Outbound.backlog() (resend)  ───▶  duplicates dropped, gaps filled
"""
from __future__ import annotations

from collections.abc import Collection, Iterator

from posa.wire.codec import Message

__all__ = ["Outbound", "Inbound"]


class Outbound:
    """The forwarder's side of one stream: sequence numbers and unacked frames.

    The forwarder numbers each message ``next_seq`` (then increments it) and
    appends its frame to ``unacked`` itself: two attribute updates on the send
    path instead of two method calls.  Sequence numbers are consecutive, so a
    frame's number is implied by its place: ``unacked[i]`` is number
    ``acked + 1 + i`` (invariant: ``next_seq == acked + 1 + len(unacked)``), and
    the send path stores no (seq, frame) pair. ``unacked`` is a list: an
    acknowledgement releases its frames with one slice deletion, and an
    emptied list holds no storage (an idle stream costs a few bytes, an empty
    deque a 600-byte block)."""

    __slots__ = ("next_seq", "acked", "unacked")

    def __init__(self, first_seq: int = 1) -> None:
        self.next_seq = first_seq
        self.acked = first_seq - 1
        self.unacked: list[bytes] = []

    def ack(self, upto: int) -> int:
        """Release every frame with seq <= ``upto``; returns how many. An
        acknowledgement of numbers not sent yet releases what was sent."""
        if upto >= self.next_seq:
            upto = self.next_seq - 1
        released = upto - self.acked
        if released <= 0:
            return 0
        self.acked = upto
        del self.unacked[:released]
        return released

    def first_unacked(self) -> int:
        """The number of the oldest unacknowledged frame (``next_seq`` if none)."""
        return self.acked + 1

    def backlog(self) -> Iterator[bytes]:
        """The frames to send again, oldest first."""
        return iter(list(self.unacked))

    def settled(self) -> bool:
        """True when nothing sent is waiting for its acknowledgement."""
        return not self.unacked

    def __len__(self) -> int:
        return len(self.unacked)


class _State:
    __slots__ = ("expected", "early")

    def __init__(self, expected: int) -> None:
        self.expected = expected
        self.early: dict[int, Message] = {}


class Inbound:
    """The receiver's side of every stream: ordering and duplicate detection.

    Bounded: at most ``max_streams`` streams are remembered (the least recently
    started is forgotten first) and at most ``max_early`` early arrivals per
    stream are held; an early arrival beyond that is dropped and comes again
    from the forwarder's backlog.
    """

    def __init__(self, max_streams: int = 65536, max_early: int = 4096) -> None:
        self.max_streams = max_streams
        self.max_early = max_early
        self._streams: dict[tuple[str, int], _State] = {}
        self.duplicates = 0
        self.dropped_early = 0

    def accept(self, msg: Message) -> tuple[Message, ...]:
        """The messages that may be delivered now, in order (often just ``msg``)."""
        key = (msg.sender, msg.stream)
        state = self._streams.get(key)
        seq = msg.id
        if state is None:
            if len(self._streams) >= self.max_streams:
                del self._streams[next(iter(self._streams))]
            state = self._streams[key] = _State(seq)
        expected = state.expected
        if seq == expected:
            state.expected = seq + 1
            if not state.early:
                return (msg,)
            ready = [msg]
            early = state.early
            nxt = seq + 1
            while nxt in early:
                ready.append(early.pop(nxt))
                nxt += 1
            state.expected = nxt
            return tuple(ready)
        if seq < expected or seq in state.early:
            self.duplicates += 1
            return ()
        if len(state.early) >= self.max_early:
            self.dropped_early += 1
            return ()
        state.early[seq] = msg
        return ()

    def refused(self, sender: str, stream: int, seq: int) -> None:
        """Message ``seq`` of a stream was refused before ordering (a rate limit,
        after authentication).  An unknown stream starts there: the frames after
        it wait for it to come again from the sender's backlog, instead of the
        next one to arrive being taken for the stream's start (and ``seq``
        acknowledged without ever being delivered)."""
        key = (sender, stream)
        if stream and key not in self._streams:
            if len(self._streams) >= self.max_streams:
                del self._streams[next(iter(self._streams))]
            self._streams[key] = _State(seq)

    def forget(self, run: list[Message], refused: Collection[Message]) -> list[Message]:
        """The application could not take the ``refused`` messages of ``run`` (what
        ``accept`` gave for one turn): of each stream, from the first refused one
        on, they are forgotten, as if they never came (the stream expects that one
        again, so nothing after it is acknowledged; the sender's backlog brings
        them again). Returns the rest of ``run``, still to deliver, in order. A
        refused message of no stream is dropped."""
        ids = {id(msg) for msg in refused}
        cut: dict[tuple[str, int], int] = {}
        rest = []
        for msg in run:
            key = (msg.sender, msg.stream)
            if key in cut:
                continue
            if id(msg) not in ids:
                rest.append(msg)
            elif msg.stream:
                cut[key] = msg.id
        for key, seq in cut.items():
            state = self._streams.get(key)
            if state is not None and state.expected > seq:
                state.expected = seq
        return rest

    def acked(self, sender: str, stream: int) -> int:
        """The cumulative sequence number to acknowledge for a stream."""
        state = self._streams.get((sender, stream))
        return 0 if state is None else state.expected - 1

    def __len__(self) -> int:
        return len(self._streams)
