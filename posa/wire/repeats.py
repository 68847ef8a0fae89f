"""Stream-less requests that repeat but for their id, decoded once (sans-IO).

A client that asks the same question again and again outside any stream (an
uncached lookup, ``posa.naming.lookups``) sends envelopes that differ in their
id alone. ``Repeats`` keeps the decoded fields of such an envelope, keyed by its
bytes after the id, and makes the ``Message`` of each repeat from them: the
message ``Codec.decode`` returns for those bytes, without unpacking and checking
them again (a fifth of what a dispatcher spent on a lookup).

Kept: a REQUEST of stream 0 whose id is packed in four bytes (``0xce``, as
``LookupLine`` packs it), of at most ``MAX_BYTES``, with a map for a body and no
container in its headers or body. Each message gets copies of the headers and
body, so no one sees what another changed in its own. At most ``MAX_HELD``
are kept; when full they are forgotten all at once. Anything else is decoded
whole, so a frame is refused here exactly as ``Codec.decode`` refuses it.
"""
from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Any

from posa.wire.codec import VERSION, Kind, Message
from posa.wire.nesting import shallow

__all__ = ["Repeats", "MAX_BYTES", "MAX_HELD"]

MAX_BYTES = 512         # a lookup of a name of up to 400 characters
MAX_HELD = 1024         # distinct envelopes kept (about half a megabyte at most)

# an envelope of 9, this version, a REQUEST, stream 0, then a 4-byte id
_HEAD = bytes((0x99, VERSION, Kind.REQUEST, 0, 0xCE))
_ID_AT = len(_HEAD)
_ID_END = _ID_AT + 4
_REQUEST = int(Kind.REQUEST)
_id_of = struct.Struct(">I").unpack_from
_new_message = object.__new__

_Held = tuple[str, str, int, dict[str, Any], dict[str, Any]]


class Repeats:
    """``decode`` for the frames of one receiving side: ``Codec.decode`` (given)
    but for the repeats of stream-less requests, made from what was kept.
    Meant for one thread (the one admitting frames); safe from several."""

    __slots__ = ("_decode", "_held")

    def __init__(self, decode: Callable[[bytes], Message]) -> None:
        self._decode = decode
        self._held: dict[bytes, _Held] = {}

    def decode(self, frame: bytes) -> Message:
        """The message in ``frame``, as ``Codec.decode`` returns it (and raises)."""
        held = (self._held.get(frame[_ID_END:])
                if frame.__class__ is bytes and frame[:_ID_AT] == _HEAD else None)
        if held is None:
            msg = self._decode(frame)
            self._keep(frame, msg)
            return msg
        sender, recipient, correlation, headers, body = held
        msg = _new_message(Message)     # as Codec.decode makes it
        msg.kind = _REQUEST
        msg.stream = 0
        msg.id = _id_of(frame, _ID_AT)[0]
        msg.sender = sender
        msg.recipient = recipient
        msg.correlation = correlation
        msg.headers = headers.copy()
        msg.body = body.copy()
        msg.route = msg.deadline = None
        return msg

    def _keep(self, frame: bytes, msg: Message) -> None:
        """Keep what ``msg``, decoded from ``frame``, holds, if it may repeat."""
        body = msg.body
        if (frame.__class__ is bytes and len(frame) <= MAX_BYTES
                and frame[:_ID_AT] == _HEAD and type(body) is dict
                and shallow(msg.headers, body)):
            held = self._held
            if len(held) >= MAX_HELD:
                held.clear()
            held[frame[_ID_END:]] = (msg.sender, msg.recipient, msg.correlation,
                                     msg.headers.copy(), body.copy())
