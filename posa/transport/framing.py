"""The byte stream of the ``tcp://`` transport, with no I/O: greeting and frames.

Wire format (fixed forever; also in docs/protocol.md)::

    greeting, once per direction, the connecting side first:
    +--------+-----------------+---------------+
    | "POSA" | version: u16 BE | flags: u16 BE |     8 bytes; version 1, flags 0
    +--------+-----------------+---------------+

    then any number of frames:
    +--------------------+------------------+
    | length: u32 BE     | payload          |     4 + length bytes
    +--------------------+------------------+

The listener checks the connecting side's greeting and answers with its own; the
connecting side checks the answer the same way.

Strategy. ``FrameDecoder`` takes the bytes a socket produced, in chunks of any
size, and returns every frame they complete. It parses all frames of a chunk in
one pass over one ``bytes`` object (a slice per frame, no per-byte loop), and
keeps only the incomplete tail. A tail that waits for the rest of a large frame
is kept as a list of chunks and joined once, when the frame is complete, so a
frame that arrives in many chunks is copied a bounded number of times. A length
prefix above ``max_frame_size`` is refused as soon as its four bytes are seen,
before anything is allocated for the payload: a peer cannot make the decoder
reserve memory by announcing a large frame.

Invariant: after ``feed`` raised ``ProtocolError`` the decoder is dead, every
later ``feed`` raises again, and ``failure`` names the cause as counted in a
listener's ``rejections`` (``"garbage"``, ``"oversize"``, ``"truncated"``). The
frames that the failing call completed before the bad bytes are valid and are
kept in ``frames_before_failure``, so what a peer delivers before it misbehaves
does not depend on how the stream was cut into chunks.
"""
from __future__ import annotations

import struct
from collections import deque
from collections.abc import Iterable
from typing import NoReturn

from posa.errors import ProtocolError

__all__ = ["MAGIC", "VERSION", "GREETING", "HEADER_SIZE", "MAX_LENGTH",
           "FrameDecoder", "SendQueue", "frame_header", "pack_length", "encode_frame",
           "encode_frames"]

MAGIC = b"POSA"
VERSION = 1
GREETING = MAGIC + struct.pack(">HH", VERSION, 0)
HEADER_SIZE = 4
MAX_LENGTH = 0xFFFF_FFFF          # the largest length a u32 prefix can carry

_HEADER = struct.Struct(">I")
_unpack_length = _HEADER.unpack_from     # (the length at the head of a buffer)
# ``frame_header`` unchecked: for a caller that bounded the length already
pack_length = _HEADER.pack
_GREETING_FIELDS = struct.Struct(">4sHH")
_JOIN_LIMIT = 64 * 1024      # frames up to this size are copied behind their header
_WRITE_SIZE = 256 * 1024     # SendQueue.head() joins small frames up to this size

Buffer = bytes | memoryview
_NO_JOIN: tuple[int, Buffer] = (0, b"")  # SendQueue: no join kept


def frame_header(length: int) -> bytes:
    """The 4-byte prefix of a frame of ``length`` payload bytes.

    Raises ``ProtocolError`` if ``length`` does not fit in the u32 prefix."""
    if not 0 <= length <= MAX_LENGTH:
        raise ProtocolError(f"a frame of {length} bytes cannot be encoded; the tcp "
                            f"framing carries at most {MAX_LENGTH} bytes per frame")
    return _HEADER.pack(length)


def encode_frame(payload: bytes) -> bytes:
    """One frame: length prefix followed by ``payload``."""
    return frame_header(len(payload)) + payload


def encode_frames(payloads: Iterable[bytes]) -> bytes:
    """Many frames as one ``bytes``, to hand to the socket in one write."""
    pack = _HEADER.pack
    parts: list[bytes] = []
    append = parts.append
    for payload in payloads:
        size = len(payload)
        if size > MAX_LENGTH:
            frame_header(size)  # raises with the explanation
        append(pack(size))
        append(payload)
    return b"".join(parts)


class FrameDecoder:
    """Turns the bytes of one connection, in chunks of any size, into frames.

    ``greeting=True`` (the default) expects the 8-byte greeting before the first
    frame. ``feed`` returns the frames completed so far, in order, and raises
    ``ProtocolError`` for a stream that is not posa's (bad greeting: ``failure``
    is ``"garbage"``) or announces a frame over ``max_frame_size``
    (``"oversize"``); the frames that call completed before the bad bytes are
    then in ``frames_before_failure``. ``finish`` is called at end of stream and
    raises (``"truncated"``) if it cut a greeting or frame short.
    """

    __slots__ = ("max_frame_size", "failure", "frames_before_failure", "greeted",
                 "_error", "_parts", "buffered", "_need")

    def __init__(self, max_frame_size: int, *, greeting: bool = True) -> None:
        if not 0 < max_frame_size <= MAX_LENGTH:
            raise ValueError(f"max_frame_size must be in 1..{MAX_LENGTH}, "
                             f"not {max_frame_size}")
        self.max_frame_size = max_frame_size
        self.failure: str | None = None
        self.frames_before_failure: list[bytes] = []
        # True once the peer's greeting was received and accepted (attributes, not
        # properties, like ``buffered``: the listener reads both on every read)
        self.greeted = not greeting
        self._error = ""
        self._parts: list[bytes] = []   # the incomplete tail, in arrival order
        self.buffered = 0               # bytes in _parts: of an incomplete greeting or
        #                                 frame (0 between frames)
        self._need = 0                  # bytes _parts must reach before parsing

    def feed(self, data: bytes | bytearray | memoryview) -> list[bytes]:
        """Add ``data`` to the stream; return every frame it completes.

        ``data`` is copied: a caller may reuse its buffer once this returns.
        Raises ``ProtocolError`` if the stream is not a valid posa tcp stream."""
        if not self._parts and self.greeted and self.failure is None and len(data) >= 4:
            (size,) = _unpack_length(data)      # the common read: exactly one frame
            if size + 4 == len(data) and size <= self.max_frame_size:
                return [bytes(data[4:])]
        if self.failure is not None:
            raise ProtocolError(self._error)
        if not data:
            return []
        if self._parts:
            self._parts.append(bytes(data))
            self.buffered += len(data)
            if self.buffered < self._need:
                return []
            buf = b"".join(self._parts)
            self._parts = []
            self.buffered = 0
        else:
            buf = bytes(data)
        pos = 0
        if not self.greeted:
            pos = self._check_greeting(buf)
            if not self.greeted:
                return []
        frames: list[bytes] = []
        append = frames.append
        unpack_from = _HEADER.unpack_from
        limit = self.max_frame_size
        end = len(buf)
        while end - pos >= 4:
            (size,) = unpack_from(buf, pos)
            if size > limit:
                self._fail("oversize",
                           f"the peer announced a frame of {size} bytes, over the "
                           f"limit of {limit} (Options.max_frame_size); raise the "
                           "limit on both sides or send smaller frames", frames)
            start = pos + 4
            stop = start + size
            if stop > end:
                self._keep(buf, pos, stop - pos)
                return frames
            append(buf[start:stop])
            pos = stop
        if pos < end:
            self._keep(buf, pos, 4)
        return frames

    def finish(self) -> None:
        """The stream ended. Raises ``ProtocolError`` if it ended mid-greeting or
        mid-frame; ``failure`` is then ``"truncated"``."""
        if self.failure is not None or not self.buffered:
            return
        what = "frame" if self.greeted else "greeting"
        self._fail("truncated", f"the connection closed in the middle of a {what} "
                                f"({self.buffered} of {self._need} bytes received); "
                                "the peer stopped or crashed while sending")

    def _keep(self, buf: bytes, pos: int, need: int) -> None:
        tail = buf[pos:] if pos else buf
        self._parts = [tail]
        self.buffered = len(tail)
        self._need = need

    def _check_greeting(self, buf: bytes) -> int:
        """Consume the greeting at the head of ``buf``; return where frames start."""
        head = buf[:8]
        if not MAGIC.startswith(head[:4]):
            self._fail("garbage", f"not a posa tcp peer: expected greeting {MAGIC!r}, "
                                  f"got {bytes(head)!r}; check that the address "
                                  "points to a posa tcp listener")
        if len(head) < 8:
            self._keep(buf, 0, 8)
            return len(buf)
        _, version, flags = _GREETING_FIELDS.unpack(head)
        if version != VERSION:
            self._fail("garbage", f"the peer speaks posa tcp version {version}; this "
                                  f"side speaks version {VERSION}: run the same posa "
                                  "version on both sides")
        if flags:
            self._fail("garbage", f"the peer's greeting sets unknown flags "
                                  f"{flags:#06x}; this side supports none: run the "
                                  "same posa version on both sides")
        self.greeted = True
        return 8

    def _fail(self, failure: str, message: str,
              frames: list[bytes] | None = None) -> NoReturn:
        self.failure = failure
        self.frames_before_failure = frames or []
        self._error = message
        self._parts = []
        self.buffered = 0
        raise ProtocolError(message)


class SendQueue(deque[tuple[int, Buffer]]):
    """Encoded frames waiting for a socket, handed out as few large writes.

    ``push`` encodes a frame; ``head`` is the next buffer to write (small frames
    joined into one buffer of up to 256 KiB, a large frame on its own, never
    copied); ``consume(n)`` drops the ``n`` bytes the socket took.

    The queue itself is a deque of its entries (frames, and raw pieces pushed with
    ``push_raw``), each ``(end, buffer)``: the stream offset at which the entry
    ends, and its bytes. A large frame's buffer is its payload alone: the 4 bytes
    between the previous entry's end and the payload are its header, made when
    they are written. So ``len()`` and truth testing, on a sender's hot path, cost
    no Python call: ``len()`` is the number of entries not yet written in full,
    what a high-water mark counts. Change it only through the methods below.

    Interrupts. An exception raised between any two bytecodes of a method (a
    signal handler's ``KeyboardInterrupt``) leaves the queue whole: every change
    is one store. ``push`` appends one entry, built before; ``consume`` moves
    ``_written``, the offset of the first byte not yet written, and only then
    drops the entries that end before it, which the next ``head`` or ``consume``
    finishes if that was cut; ``head`` keeps its join as one ``(offset, bytes)``,
    good while ``_written`` is inside it. The entries themselves never change, so
    what the queue gives depends only on them and ``_written``.
    """

    __slots__ = ("_joined", "_written")

    def __init__(self) -> None:
        super().__init__()
        self._written = 0                   # offset of the first byte not yet written
        self._joined: tuple[int, Buffer] = _NO_JOIN   # head()'s last join, at its offset

    def push(self, payload: bytes) -> int:
        """Queue one frame; return ``len()``. Raises ``ProtocolError`` if the frame
        exceeds the u32 prefix."""
        size = len(payload)
        if size <= _JOIN_LIMIT:
            self.append((size + 4 + (self[-1][0] if self else self._written),
                         _HEADER.pack(size) + payload))
        else:
            frame_header(size)              # (refuses what the prefix cannot carry)
            self.append((size + 4 + (self[-1][0] if self else self._written), payload))
        return len(self)

    def push_raw(self, data: Buffer) -> None:
        """Queue bytes already encoded (a greeting, the rest of a cut write)."""
        self.append(((self[-1][0] if self else self._written) + len(data), data))

    def head(self) -> Buffer:
        """The next bytes to write (the queue must not be empty)."""
        end, first = self[0]
        if end - len(first) == self._written and (len(self) == 1
                                                  or len(first) > _JOIN_LIMIT):
            return first
        return self._gather()

    def _gather(self) -> Buffer:
        """``head`` but for a whole entry alone: the rest of an entry written in
        part or of a join, a large frame's header, small entries joined."""
        written = self._written
        while self[0][0] <= written:            # what a cut consume() left
            self.popleft()
            if not self:
                return b""
        at, joined = self._joined
        if at <= written < at + len(joined):    # a write the kernel refused is
            return memoryview(joined)[written - at:] if written > at else joined
        entries = iter(self)                    # retried without joining again
        end, data = next(entries)
        begin = end - len(data)
        if written < begin:                     # a large frame's header, made here
            return _HEADER.pack(len(data))[written - begin:]
        first = memoryview(data)[written - begin:] if written > begin else data
        if len(data) > _JOIN_LIMIT or len(self) == 1:
            return first
        parts = [first]
        last = end
        for end, data in entries:
            if len(data) > _JOIN_LIMIT:         # on its own, but for its header
                if end - len(data) > last:
                    parts.append(_HEADER.pack(len(data)))
                break
            parts.append(data)
            last = end
            if end - written >= _WRITE_SIZE:
                break
        if len(parts) == 1:
            return first
        joined = b"".join(parts)
        self._joined = (written, joined)
        return joined

    def consume(self, sent: int) -> None:
        """Drop the first ``sent`` bytes, which the socket took."""
        written = self._written + sent
        self._written = written
        while self:
            if self[0][0] > written:
                return
            self.popleft()
        self._joined = _NO_JOIN

    def clear(self) -> None:
        """Forget every queued byte."""
        if self:
            self._written = self[-1][0]     # all written: the rest drops the entries
        super().clear()
        self._joined = _NO_JOIN
