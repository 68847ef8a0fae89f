"""The NATS client protocol, sans-IO: bytes in, events out; commands out as bytes.

``Parser.feed`` takes what the socket gave and returns the events it completes,
in order, keeping a partial command for the next call:

    (INFO, dict)       the server's INFO (max_payload, connect_urls, ...)
    (MSG, Msg)         a MSG or an HMSG; ``Msg.status`` is the status an HMSG's
                       header carries ("503": no responders), else ""
    (PING, None)  (PONG, None)  (OK, None)
    (ERR, text)        a -ERR, its text without the quotes

Anything else (an unknown command, a malformed argument, a control line over
``MAX_CONTROL`` bytes, a message not ended by CRLF) raises ``ProtocolError``, and
so does every later ``feed``: the connection is unusable past it.

The commands a client sends are made by ``connect``, ``sub``, ``unsub`` and
``pub`` (the ``PUB`` line; the payload and a CRLF follow it), and ``PING``/``PONG``.
"""
from __future__ import annotations

import json
from typing import Any

from posa.errors import ProtocolError

__all__ = ["INFO", "MSG", "PING", "PONG", "OK", "ERR", "Msg", "Parser", "MAX_CONTROL",
           "connect", "sub", "unsub", "pub", "pub_head", "PING_CMD", "PONG_CMD", "CRLF"]

INFO, MSG, PING, PONG, OK, ERR = range(6)
MAX_CONTROL = 4096          # bytes of a control line, CRLF included
CRLF = b"\r\n"
PING_CMD, PONG_CMD = b"PING\r\n", b"PONG\r\n"
_SIMPLE = {b"PING": PING, b"PONG": PONG, b"+OK": OK}
Event = tuple[int, Any]


class Msg:
    """A message the server delivered to a subscription."""

    __slots__ = ("subject", "sid", "reply", "data", "status")

    def __init__(self, subject: str, sid: int, reply: str, data: bytes,
                 status: str = "") -> None:
        self.subject, self.sid, self.reply = subject, sid, reply
        self.data, self.status = data, status

    def __repr__(self) -> str:
        return (f"Msg({self.subject!r}, {self.sid}, {self.reply!r}, {self.data!r}, "
                f"{self.status!r})")


def _number(token: bytes, what: str) -> int:
    if not token.isdigit() or len(token) > 18:
        raise ProtocolError(f"the NATS server sent {what} {token[:40]!r}, not a number")
    return int(token)


def _status(head: bytes) -> str:
    """The status of an HMSG's header block (``NATS/1.0 503``), or ""."""
    first = head.split(CRLF, 1)[0]
    if not first.startswith(b"NATS/1.0"):
        raise ProtocolError(f"an HMSG's headers begin {first[:40]!r}, not NATS/1.0")
    code = first[8:].strip()[:3]
    return code.decode("ascii") if code.isdigit() else ""


class Parser:
    """What one connection's server sends, as events."""

    __slots__ = ("_parts", "_have", "_need", "_failed")

    def __init__(self) -> None:
        self._parts: list[bytes] = []   # what a partial command has so far
        self._have = 0                  # their bytes
        self._need = 0                  # bytes the partial command needs at least
        self._failed: str | None = None

    def feed(self, data: bytes) -> list[Event]:
        """The events ``data`` completes. Raises ``ProtocolError``."""
        if self._failed is not None:
            raise ProtocolError(self._failed)
        parts = self._parts
        if parts:
            self._have += len(data)
            parts.append(data)
            if self._have < self._need:       # a large message still arriving
                return []
            buf = b"".join(parts)
            parts.clear()
        else:
            buf = data
        events: list[Event] = []
        pos = self._need = 0
        size = len(buf)
        try:
            while pos < size:                   # each turn consumes at least 3 bytes
                end = buf.find(CRLF, pos, pos + MAX_CONTROL)
                if end < 0:
                    if size - pos >= MAX_CONTROL:
                        raise ProtocolError(f"a control line of over {MAX_CONTROL} bytes "
                                            f"from the NATS server: {buf[pos:pos + 40]!r}")
                    break
                if buf.startswith(b"MSG ", pos):       # the common case, first
                    consumed = self._message(buf, end + 2, False, buf[pos + 4:end], events)
                else:
                    consumed = self._command(buf, pos, end, events)
                if consumed < 0:
                    self._need = -consumed - pos
                    break
                pos = consumed
        except ProtocolError as exc:
            self._failed = str(exc)
            self._have = self._need = 0
            raise
        if pos < size:
            self._parts.append(buf[pos:] if pos else buf)
            self._have = size - pos
        else:
            self._have = self._need = 0
        return events

    def _command(self, buf: bytes, pos: int, end: int, events: list[Event]) -> int:
        """Where the command at ``pos`` (control line up to ``end``) ends, having
        appended its event; minus where it will end when its payload is not all
        there yet."""
        line = buf[pos:end]
        op, _, rest = line.partition(b" ")
        op = op.upper()
        if op == b"MSG" or op == b"HMSG":
            return self._message(buf, end + 2, op == b"HMSG", rest, events)
        simple = _SIMPLE.get(op)
        if simple is not None and not rest.strip():
            events.append((simple, None))
        elif op == b"INFO":
            events.append((INFO, _info(rest)))
        elif op == b"-ERR":
            events.append((ERR, rest.strip().strip(b"'").decode("utf-8", "replace")))
        else:
            raise ProtocolError(f"the NATS server sent {line[:40]!r}, no command "
                                "a client understands")
        return end + 2

    def _message(self, buf: bytes, start: int, headers: bool, rest: bytes,
                 events: list[Event]) -> int:
        args = rest.split()
        count = len(args) - headers
        if count != 3 and count != 4:       # (no tuple to build per message)
            raise ProtocolError(f"the NATS server sent a {'H' if headers else ''}MSG "
                                f"with arguments {rest[:80]!r}")
        token = args[-1]
        if not token.isdigit() or len(token) > 18:      # (``_number``, inline)
            _number(token, "a message size")
        stop = start + int(token)
        if len(buf) < stop + 2:
            return -(stop + 2)
        if buf[stop:stop + 2] != CRLF:
            raise ProtocolError(f"a message of {stop - start} bytes from the NATS server "
                                "is not followed by CRLF")
        if headers:
            head = _number(args[-2], "a header size")
            if head > stop - start:
                raise ProtocolError(f"an HMSG's headers ({head} bytes) exceed its size "
                                    f"{stop - start}")
            status = _status(buf[start:start + head])
        else:
            head, status = 0, ""
        sid = args[1]
        events.append((MSG, Msg(args[0].decode("utf-8", "replace"),
                                int(sid) if sid.isdigit() and len(sid) < 19 else
                                _number(sid, "a subscription id"),
                                args[2].decode("utf-8", "replace") if count == 4 else "",
                                buf[start + head:stop], status)))
        return stop + 2


def _info(rest: bytes) -> dict[str, Any]:
    try:
        info = json.loads(rest)
    except (ValueError, UnicodeDecodeError):
        info = None
    if not isinstance(info, dict):
        raise ProtocolError(f"the NATS server's INFO is not a JSON object: {rest[:80]!r}")
    return info


def connect(name: str) -> bytes:
    """The CONNECT command: no echo of +OK, headers and "no responders" statuses."""
    options = {"verbose": False, "pedantic": False, "headers": True,
               "no_responders": True, "protocol": 1, "lang": "python-posa",
               "version": "1", "name": name}
    return b"CONNECT " + json.dumps(options, separators=(",", ":")).encode() + CRLF


def sub(subject: str, sid: int) -> bytes:
    return b"SUB %s %d\r\n" % (subject.encode(), sid)


def unsub(sid: int) -> bytes:
    return b"UNSUB %d\r\n" % sid


def pub(subject: str, reply: str, size: int) -> bytes:
    """The PUB line of a message of ``size`` bytes (the payload and CRLF follow)."""
    return b"PUB %s %s %d\r\n" % (subject.encode(), reply.encode(), size)


def pub_head(subject: str, reply: str) -> bytes:
    """The PUB line up to the size: made once per subject, not once per message."""
    return b"PUB %s %s " % (subject.encode(), reply.encode())
