"""The message envelope and its msgpack wire codec (sans-IO).

Wire format, fixed forever for version 1: one msgpack array of nine items

    index  field        msgpack type        meaning
    0      version      positive int        1
    1      kind         positive int        a ``Kind`` (numbers never change)
    2      stream       uint64              the sending forwarder's stream id (0: none)
    3      id           uint64              sequence number within the stream (0: none)
    4      sender       str                 sender's name ("" for anonymous clients)
    5      recipient    str                 recipient's name or group pattern
    6      correlation  uint64              id of the request a REPLY/ERROR answers (0: none)
    7      headers      map str -> any      deadline, auth, trace ... (see docs/protocol.md)
    8      body         any msgpack value   the application's data

A ``BATCH`` envelope carries several envelopes of one stream in one frame: its
body is an array whose items are complete envelopes (SEND or REQUEST, the same
stream, sender and recipient as the batch).  ``Codec.pack_batch`` joins envelopes
already encoded, without encoding them again; ``Codec.unbatch`` validates each as
if it had come alone.

Decoding takes untrusted bytes and returns a ``Message`` or raises
``ProtocolError``: never another exception, never unbounded allocation (msgpack's
own length limits are set from ``CodecLimits`` before it allocates), never pickle.
"""
from __future__ import annotations

import dataclasses
import enum
import struct
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import msgpack

from posa.errors import ProtocolError, code_of
from posa.transport.base import Options
from posa.wire.nesting import (
    CONTAINER_BYTES,
    WALK_ABOVE,
    depth_of,
    shallow,
    too_deep,
    within,
)

__all__ = ["Kind", "CodecLimits", "Message", "Codec", "Pack", "VERSION", "error_body",
           "error_fields"]

VERSION = 1
_U64 = (1 << 64) - 1


class Kind(enum.IntEnum):
    """Message kinds. The numbers are part of the wire protocol: never renumber."""

    SEND = 1      # one-way message to a name
    REQUEST = 2   # expects one REPLY or ERROR with correlation = this id
    REPLY = 3     # successful answer to a REQUEST
    ERROR = 4     # failed answer: body = [code, type name, text]
    ACK = 5       # cumulative acknowledgement: id = highest seq delivered in `stream`
    MOVED = 6     # the recipient moved: body = {"address": str, "epoch": int}
    EVENT = 7     # reserved (event-channel deliveries travel as SEND in a stream)
    NOTIFY = 8    # unsolicited news from a service on an open connection
    BATCH = 9     # several SEND/REQUEST envelopes of one stream: body = array of envelopes
    PROGRESS = 10  # the REQUEST `correlation` is still being handled (a keep-alive)


_KINDS = frozenset(int(k) for k in Kind)
# msgpack's own bytes for an unsigned int in (0xFF, 0xFFFF] and (0xFFFF, 0xFFFFFFFF]:
# ``U16(0xCD, n)``, ``U32(0xCE, n)``; a sender frames ids with them (``parts``)
# without a ``Packer`` call, which costs several times more
U16, U32 = struct.Struct(">BH").pack, struct.Struct(">BI").pack
_BATCHABLE = (Kind.SEND, Kind.REQUEST)
_SMALL_BUFFER: dict[str, Any] = {"buf_size": 1024} if msgpack.version >= (1, 1) else {}


@dataclass(frozen=True)
class CodecLimits:
    """Bounds applied to untrusted input. Pass your own to ``Codec``/transports."""

    max_frame_size: int = 16 * 1024 * 1024
    max_depth: int = 64
    max_str_len: int = 1024 * 1024
    max_bin_len: int = 16 * 1024 * 1024
    max_array_len: int = 1_000_000
    max_map_len: int = 100_000
    max_name_len: int = 255

    def options(self, base: Options | None = None) -> Options:
        """Transport ``Options`` (``base``, or the defaults) that refuse frames over
        these limits' ``max_frame_size``: the one place it is derived from."""
        return dataclasses.replace(base or Options(), max_frame_size=self.max_frame_size)

    def __post_init__(self) -> None:
        for field in ("max_frame_size", "max_depth", "max_str_len", "max_bin_len",
                      "max_array_len", "max_map_len", "max_name_len"):
            if getattr(self, field) <= 0:
                raise ValueError(f"CodecLimits.{field} must be positive")


class Message:
    """One envelope. ``body`` is any msgpack-able value; ``headers`` a str-keyed dict."""

    __slots__ = ("kind", "stream", "id", "sender", "recipient", "correlation",
                 "headers", "body", "route", "deadline")

    def __init__(self, kind: int, sender: str, recipient: str, body: Any = None, *,
                 id: int = 0, stream: int = 0, correlation: int = 0,
                 headers: dict[str, Any] | None = None) -> None:
        self.kind = kind
        self.stream = stream
        self.id = id
        self.sender = sender
        self.recipient = recipient
        self.correlation = correlation
        self.headers = headers if headers is not None else {}
        self.body = body
        self.route: Any = None  # where it came from, for replies; never on the wire
        self.deadline: float | None = None  # a request's, on this host's clock; not sent

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Message):
            return NotImplemented
        return (self.kind, self.stream, self.id, self.sender, self.recipient,
                self.correlation, self.headers, self.body) == (
                other.kind, other.stream, other.id, other.sender, other.recipient,
                other.correlation, other.headers, other.body)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        try:
            kind = Kind(self.kind).name
        except ValueError:
            kind = str(self.kind)
        return (f"Message({kind} {self.sender!r}->{self.recipient!r} id={self.id} "
                f"corr={self.correlation} body={self.body!r:.60})")


Pack = Callable[[int, int, int, str, str, int, dict[str, Any], Any], bytes]
"""(kind, stream, id, sender, recipient, correlation, headers, body) -> frame"""


class Codec:
    """Encodes ``Message`` to bytes and decodes untrusted bytes to ``Message``.

    Thread-safe: each thread gets its own reusable msgpack ``Packer`` (``packb``
    allocates 256 KiB per call); ``packer()`` hands one to a caller that stays on
    one thread, its buffer 1 KiB (msgpack 1.1+) until a larger message grows it."""

    def __init__(self, limits: CodecLimits | None = None) -> None:
        self.limits = limits = limits or CodecLimits()
        self._local = threading.local()
        self._unpack_limits: dict[str, Any] = dict(
            max_str_len=limits.max_str_len, max_bin_len=limits.max_bin_len,
            max_array_len=limits.max_array_len, max_map_len=limits.max_map_len)
        self._unbounded_below = min(limits.max_str_len, limits.max_bin_len,
                                    limits.max_array_len, limits.max_map_len)

    def packer(self) -> Pack:
        """A pack function with a ``Packer`` of its own, for one thread: ``pack``
        without the per-call lookup of the thread's packer (the receiver's holds
        one; the forwarder's send path holds ``packers()``). The one place that
        lays out the envelope, with ``parts``, which frames the same bytes around
        a SEND's id (``test_codec.py::test_parts_frame_an_envelope_byte_for_byte_as_pack``)."""
        return self.packers()[0]

    def packers(self) -> tuple[Pack, Callable[[Any], bytes]]:
        """``packer()`` and the msgpack ``pack`` of one value that it uses, for one
        thread: with ``parts``, a sender frames an envelope from its id and body
        alone. That ``pack`` raises msgpack's errors; ``Pack`` turns them into
        ``ProtocolError`` (a caller falls back to it to raise)."""
        packer = msgpack.Packer(use_bin_type=True, **_SMALL_BUFFER)
        packb = packer.pack
        limit = self.limits.max_frame_size

        def pack(kind: int, stream: int, id: int, sender: str, recipient: str,
                 correlation: int, headers: dict[str, Any], body: Any) -> bytes:
            try:
                data: bytes = packb([VERSION, kind, stream, id, sender, recipient,
                                     correlation, headers, body])
            except (TypeError, ValueError, OverflowError) as exc:
                packer.reset()
                raise ProtocolError(
                    f"cannot encode the message body as msgpack ({exc}); send only None, "
                    "bool, int, float, str, bytes, lists and str-keyed dicts") from None
            if len(data) > limit:
                raise ProtocolError(
                    f"message of {len(data)} bytes exceeds max_frame_size {limit}; "
                    "split it or raise CodecLimits.max_frame_size")
            return data

        return pack, packb

    @staticmethod
    def parts(kind: int, stream: int, sender: str, recipient: str, correlation: int,
              headers: dict[str, Any]) -> tuple[bytes, bytes]:
        """The envelope's bytes around its id: ``head + pack(id) + middle +
        pack(body)`` is what ``pack`` makes of these fields, byte for byte (an
        array is its header and its items' bytes, in order). Raises ``ProtocolError``
        if the fields cannot be encoded."""
        try:
            packb = msgpack.Packer(use_bin_type=True, **_SMALL_BUFFER).pack
            return (b"\x99" + packb(VERSION) + packb(kind) + packb(stream),
                    packb(sender) + packb(recipient) + packb(correlation) + packb(headers))
        except (TypeError, ValueError, OverflowError) as exc:
            raise ProtocolError(f"cannot encode the envelope's fields ({exc})") from None

    def encode(self, msg: Message) -> bytes:
        """The wire bytes of ``msg``. Raises ``ProtocolError`` if it cannot be encoded."""
        return self.pack(msg.kind, msg.stream, msg.id, msg.sender, msg.recipient,
                         msg.correlation, msg.headers, msg.body)

    def pack(self, kind: int, stream: int, id: int, sender: str, recipient: str,
             correlation: int, headers: dict[str, Any], body: Any) -> bytes:
        """Encode the fields directly, without building a ``Message`` first.
        Raises ``ProtocolError`` if they cannot be encoded. Thread-safe."""
        try:
            pack: Pack = self._local.pack
        except AttributeError:
            pack = self._local.pack = self.packer()
        return pack(kind, stream, id, sender, recipient, correlation, headers, body)

    def pack_batch(self, stream: int, sender: str, recipient: str,
                   envelopes: list[bytes]) -> bytes:
        """One ``BATCH`` frame holding ``envelopes`` (encoded by ``pack``, all of
        ``stream`` from ``sender`` to ``recipient``), joined without re-encoding."""
        head = self.pack(Kind.BATCH, stream, 0, sender, recipient, 0, {}, None)
        n = len(envelopes)          # the body: an array of n items, already encoded
        array = (bytes([0x90 | n]) if n < 16 else b"\xdc" + n.to_bytes(2, "big")
                 if n < 1 << 16 else b"\xdd" + n.to_bytes(4, "big"))
        return b"".join([head[:-1], array, *envelopes])

    def unbatch(self, batch: Message, drop: str | None = None) -> list[Message]:
        """The messages inside the ``BATCH`` message ``batch`` (with its ``route``), each validated
        as if it had come alone (``max_depth`` applies to each), numbered consecutively, without
        the header ``drop`` (if given). Raises ``ProtocolError`` if any is invalid or not of
        the batch's stream, sender and recipient: a batch is taken whole or not at all."""
        body, stream, sender, recipient = batch.body, batch.stream, batch.sender, batch.recipient
        if type(body) is not list or not body or not stream:
            raise ProtocolError(_NOT_A_BATCH)
        depth = self.limits.max_depth - 1       # the envelope array itself is one level
        if not within(batch.headers, depth):
            raise too_deep(self.limits.max_depth)
        messages: list[Message] = []
        append, new, route, next_id = messages.append, _new_message, batch.route, 0
        for fields in body:
            if type(fields) is not list or len(fields) != 9:
                raise ProtocolError(_NOT_AN_ENVELOPE)
            version, kind, inner_stream, id, inner_sender, inner_to, correlation, headers, \
                inner_body = fields
            if not (type(kind) is int and (kind == 1 or kind == 2) and version == VERSION
                    and inner_stream == stream and type(inner_stream) is int
                    and type(id) is int and id > 0 and (id == next_id or not next_id)
                    and type(correlation) is int
                    and correlation >= 0 and inner_sender == sender
                    and inner_to == recipient and type(headers) is dict):
                raise ProtocolError(_NOT_OF_THE_BATCH)
            next_id = id + 1
            if headers:         # (rare: checked once where a message has none)
                if not within(headers, depth):
                    raise too_deep(self.limits.max_depth)
                headers.pop(drop, None)
            if type(inner_body) is dict:            # within, inlined for flat bodies
                for child in inner_body.values():
                    if type(child) in _CONTAINERS:
                        if depth_of(inner_body) > depth:
                            raise too_deep(self.limits.max_depth)
                        break
            elif type(inner_body) is list and not within(inner_body, depth):
                raise too_deep(self.limits.max_depth)
            msg = new(Message)      # as in decode: no __init__ on the hot path
            msg.kind = kind
            msg.stream = stream
            msg.id = id
            msg.sender = sender
            msg.recipient = recipient
            msg.correlation = correlation
            msg.headers = headers
            msg.body = inner_body
            msg.route, msg.deadline = route, None
            append(msg)
        return messages

    def decode(self, data: bytes | bytearray | memoryview) -> Message:
        """Decode untrusted bytes. Returns a ``Message`` or raises ``ProtocolError``."""
        limits = self.limits
        size = len(data)
        if size > limits.max_frame_size:
            raise ProtocolError(f"frame of {size} bytes exceeds max_frame_size "
                                f"{limits.max_frame_size}")
        try:
            # msgpack bounds every length by the frame's size; the configured
            # limits matter only for frames larger than the smallest of them.
            if size <= self._unbounded_below:
                fields = _unpackb(data)
            else:
                fields = _unpackb(data, **self._unpack_limits)
        except Exception as exc:  # ExtraData, StackError, FormatError, TypeError ...
            raise _unreadable(exc) from None
        try:    # (a map, string or bytes of 9 items unpacks too: the types refuse it)
            version, kind, stream, id, sender, recipient, correlation, headers, body = fields
        except (TypeError, ValueError):
            raise ProtocolError(_NOT_NINE) from None
        name_len = limits.max_name_len
        # the types in one comparison, the three numbers' signs in one: fewer steps
        if not ((type(kind), type(stream), type(id), type(correlation), type(sender),
                 type(recipient), type(headers)) == _FIELD_TYPES
                and version == VERSION and kind in _KINDS
                and stream | id | correlation >= 0
                and len(sender) <= name_len and len(recipient) <= name_len):
            raise ProtocolError(_what_is_wrong(fields, name_len) if type(fields) is list
                                else _NOT_NINE)
        depth = limits.max_depth
        if size > depth and kind != _BATCH and not (depth >= 3 and shallow(headers, body)) \
                and (size > WALK_ABOVE or size - len(
                bytes(data).translate(None, CONTAINER_BYTES)) > depth) \
                and depth_of(fields) > depth:
            raise too_deep(depth)
        msg = _new_message(Message)
        msg.kind = kind
        msg.stream = stream
        msg.id = id
        msg.sender = sender
        msg.recipient = recipient
        msg.correlation = correlation
        msg.headers = headers
        msg.body = body
        msg.route = msg.deadline = None
        return msg


def error_body(exc: BaseException) -> list[Any]:
    """The body of an ERROR answering with ``exc``: [code, type name, text]."""
    return [code_of(exc), type(exc).__name__, str(exc)]


def error_fields(body: Any) -> tuple[int, str, str]:
    """(code, type name, text) of an ERROR's body; a malformed one says so."""
    if isinstance(body, list) and len(body) == 3:
        code, kind, text = body
        if isinstance(code, int) and isinstance(kind, str) and isinstance(text, str):
            return code, kind, text
    return 0, "PosaError", f"malformed error reply: {body!r:.80}"


_new_message = object.__new__
_CONTAINERS = frozenset((dict, list))     # what msgpack decodes a map and an array to
_FIELD_TYPES = (int, int, int, int, str, str, dict)   # kind .. headers, as decode checks
_BATCH = Kind.BATCH
_unpackb = msgpack.unpackb


_NOT_NINE = "envelope must be a msgpack array of 9 items (see docs/protocol.md)"
_NOT_A_BATCH = ("a BATCH must carry a non-empty array of envelopes of one stream "
                "(stream != 0); see docs/protocol.md")
_NOT_AN_ENVELOPE = ("every item of a BATCH must be an envelope: a msgpack array of 9 "
                    "items (see docs/protocol.md)")
_NOT_OF_THE_BATCH = ("every envelope in a BATCH must be a SEND or REQUEST of the batch's "
                     "stream, sender and recipient, with consecutive sequence numbers and "
                     "a headers map (see docs/protocol.md)")


def _unreadable(exc: Exception) -> ProtocolError:
    """The error for a frame msgpack could not read (``exc`` is what it raised)."""
    if isinstance(exc, msgpack.ExtraData):
        return ProtocolError("frame has bytes after the envelope")
    if isinstance(exc, msgpack.StackError):
        return ProtocolError("frame nests containers too deeply")
    if isinstance(exc, ValueError):
        if "incomplete" in str(exc).lower():
            return ProtocolError("frame ends in the middle of the envelope")
        return ProtocolError(f"frame is not valid msgpack ({exc}): it is truncated "
                             "or corrupt")
    return ProtocolError(f"frame is not valid msgpack ({type(exc).__name__}: {exc})")


def _what_is_wrong(fields: list[Any], name_len: int) -> str:
    """The reason a decoded envelope failed validation, for the error message."""
    version, kind, stream, id, sender, recipient, correlation, _, _ = fields
    if version != VERSION:
        return f"unsupported envelope version {version!r:.20}; this posa speaks {VERSION}"
    if type(kind) is not int or kind not in _KINDS:
        return f"unknown message kind {kind!r:.20}"
    for label, value in (("stream", stream), ("id", id), ("correlation", correlation)):
        if type(value) is not int or value < 0:
            return f"envelope field {label} must be an unsigned 64-bit integer"
    if type(sender) is not str or type(recipient) is not str:
        return "envelope sender and recipient must be strings"
    if len(sender) > name_len or len(recipient) > name_len:
        return f"a name is longer than {name_len} characters"
    return "envelope headers must be a map with string keys"
