"""What a ``nats://`` message carries, and how frames are cut and put back (sans-IO).

Every NATS message of the transport starts with a 9-byte header, kind and sequence::

    kind (1 byte)  seq (8 bytes, big-endian)  body

``DATA`` ends a frame and ``MORE`` is a chunk with more of it to follow: a frame
larger than what the server takes in one message (its ``max_payload``, 1 MiB by
default) travels as several. Each direction of a connection numbers its DATA and
MORE messages 0, 1, 2 ...; ``Reassembly`` puts frames back together and refuses a
gap (NATS dropped a message: slow consumer, a server gone) with ``Gap`` and a frame
over the receiver's ``max_frame_size`` with ``Oversize``, at the first chunk over it.
Either ends the connection: what was lost is resent by posa's streams on a new one.

The control kinds carry seq 0: ``HELLO`` (connection -> listener, the handshake),
``WELCOME`` (its answer), ``RESET`` (listener -> connection: you are dropped, the
body says why) and ``CLOSE`` (connection -> listener: forget me).
"""
from __future__ import annotations

import struct
from collections.abc import Iterator

__all__ = ["HEADER", "DATA", "MORE", "HELLO", "WELCOME", "RESET", "CLOSE", "KINDS",
           "pack", "unpack", "chunks", "Gap", "Oversize", "Reassembly"]

HEADER = struct.Struct(">BQ")
DATA, MORE, HELLO, WELCOME, RESET, CLOSE = b"DMHWRC"
KINDS = frozenset((DATA, MORE, HELLO, WELCOME, RESET, CLOSE))
_DATA = bytes((DATA,))
_seq = struct.Struct(">Q").unpack_from


def pack(kind: int, seq: int, body: bytes = b"") -> bytes:
    return HEADER.pack(kind, seq) + body


def unpack(payload: bytes) -> tuple[int, int, bytes]:
    """``(kind, seq, body)``; ``ValueError`` for what no posa endpoint sends."""
    if len(payload) < HEADER.size:
        raise ValueError(f"a message of {len(payload)} bytes is shorter than the "
                         f"{HEADER.size}-byte header of posa's nats:// transport")
    kind, seq = HEADER.unpack_from(payload)
    if kind not in KINDS:
        raise ValueError(f"message kind {kind} is not one of posa's nats:// transport")
    return kind, seq, payload[HEADER.size:]


def chunks(frame: bytes, room: int) -> Iterator[tuple[int, bytes]]:
    """``(kind, body)`` of each message that carries ``frame``, bodies of at most
    ``room`` bytes: MORE ... MORE DATA (a single DATA for a small frame)."""
    if len(frame) <= room:
        yield DATA, frame
        return
    view = memoryview(frame)
    last = len(frame) - room
    for start in range(0, len(frame), room):
        yield (DATA if start >= last else MORE), bytes(view[start:start + room])


class Gap(Exception):
    """A message is missing: the connection cannot deliver in order any more."""


class Oversize(Exception):
    """A frame grew over the receiver's ``max_frame_size``."""


class Reassembly:
    """One direction of one connection, as its receiver sees it."""

    __slots__ = ("expected", "limit", "_parts", "_size")

    def __init__(self, limit: int) -> None:
        self.expected = 0          # the seq the next DATA or MORE must carry
        self.limit = limit
        self._parts: list[bytes] = []
        self._size = 0

    def whole(self, payload: bytes) -> bytes | None:
        """The frame ``payload`` carries if it is the DATA message due next, with
        no chunk before it and within the limit (the common case, checked
        first); else ``None``: ``unpack`` and ``feed`` say what it is."""
        if payload[:1] != _DATA or self._parts or len(payload) - HEADER.size > self.limit \
                or len(payload) < HEADER.size or _seq(payload, 1)[0] != self.expected:
            return None
        self.expected += 1
        return payload[HEADER.size:]

    def feed(self, kind: int, seq: int, body: bytes) -> bytes | None:
        """The frame ``body`` completes, or ``None`` while chunks are missing.
        Raises ``Gap`` (seq is not the expected one) and ``Oversize``."""
        if seq != self.expected:
            raise Gap(f"message {seq} arrived where {self.expected} was due: NATS "
                      f"dropped {seq - self.expected} message(s) (a slow consumer or "
                      "a server gone)" if seq > self.expected else
                      f"message {seq} arrived again after {self.expected - 1}")
        self.expected = seq + 1
        size = self._size + len(body)
        if size > self.limit:
            self._parts.clear()
            raise Oversize(f"a frame of at least {size} bytes exceeds max_frame_size "
                           f"{self.limit}")
        if kind == DATA and not self._parts:
            return body
        self._parts.append(body)
        self._size = size
        if kind == MORE:
            return None
        frame = b"".join(self._parts)
        self._parts.clear()
        self._size = 0
        return frame
