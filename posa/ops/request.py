"""The HTTP/1.x requests the ops server reads, and the answers it writes, with no I/O.

The ops server answers small ``GET``s (``/health``, ``/metrics``), so this is a
tight parse of a request line and its header fields, nothing more:

- the head of one request (request line and fields, without the empty line that
  ends it) may take at most ``max_header_bytes`` bytes; a longer one is refused as
  soon as the bytes that arrived show it (``header-too-large``, 431), so an
  endless header costs the limit, not memory;
- the request line is ``METHOD SP TARGET SP HTTP/1.0|1.1``; field lines are
  ``name: value`` with a token name; anything else is ``bad-request`` (400);
- a request with a body (``Content-Length`` other than 0, ``Transfer-Encoding``)
  is ``bad-request``: nothing the server answers takes one;
- several requests may arrive back to back on one connection (pipelining): each
  ``next_request`` takes one head off the buffer and keeps the rest.

Invariant: after ``next_request`` raised ``ProtocolError`` the reader is dead,
every later call raises again, and ``failure`` names the cause (as counted in the
server's ``rejections``) and the status to answer with.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import NoReturn

from posa.errors import ProtocolError

__all__ = ["Request", "RequestReader", "response", "REASONS"]

_REQUEST_LINE = re.compile(rb"([!#$%&'*+.^_`|~0-9A-Za-z-]+) ([\x21-\x7e]+) HTTP/1\.([01])")
_FIELD = re.compile(rb"([!#$%&'*+.^_`|~0-9A-Za-z-]+):[ \t]*([\x20-\x7e\t\x80-\xff]*?)[ \t]*")
MAX_FIELDS = 100

REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
           408: "Request Timeout", 431: "Request Header Fields Too Large",
           500: "Internal Server Error", 503: "Service Unavailable"}


@dataclass(frozen=True)
class Request:
    """One request head: method, target (path and query), minor version, fields
    (names in lower case; a repeated field keeps its last value)."""

    method: str
    target: str
    minor: int
    fields: dict[str, str] = field(default_factory=dict)

    @property
    def path(self) -> str:
        return self.target.split("?", 1)[0]

    @property
    def keep_alive(self) -> bool:
        """HTTP/1.1 keeps the connection unless ``Connection: close``; HTTP/1.0
        closes it unless ``Connection: keep-alive``."""
        tokens = {t.strip().lower() for t in self.fields.get("connection", "").split(",")}
        return "keep-alive" in tokens if self.minor == 0 else "close" not in tokens


class RequestReader:
    """Bytes in (``feed``), request heads out (``next_request``)."""

    def __init__(self, max_header_bytes: int = 8192) -> None:
        self.max_header_bytes = max_header_bytes
        self._buffer = bytearray()
        self.failure: tuple[str, int] | None = None   # (cause, status) once dead

    @property
    def pending(self) -> bool:
        """True while part of a request has arrived and is not yet taken."""
        return bool(self._buffer)

    def feed(self, data: bytes) -> None:
        self._buffer += data

    def next_request(self) -> Request | None:
        """The next complete request, or None until more bytes come.

        Raises ``ProtocolError`` (see ``failure``) for a head over the limit or
        malformed."""
        if self.failure is not None:
            raise ProtocolError(f"the request was refused ({self.failure[0]})")
        if self._buffer.startswith((b"\r", b"\n")):     # empty lines before a request
            self._buffer = bytearray(self._buffer.lstrip(b"\r\n"))
        end = self._buffer.find(b"\r\n\r\n", 0, self.max_header_bytes + 4)
        if end < 0:
            if len(self._buffer) >= self.max_header_bytes + 4:   # no end can come in time
                self._fail("header-too-large", 431,
                           f"a request head over {self.max_header_bytes} bytes")
            return None
        head = bytes(self._buffer[:end])
        del self._buffer[:end + 4]
        return self._parse(head)

    def _parse(self, head: bytes) -> Request:
        line, *lines = head.split(b"\r\n")
        match = _REQUEST_LINE.fullmatch(line)
        if match is None:
            self._fail("bad-request", 400, "not an HTTP/1.0 or HTTP/1.1 request line")
        if len(lines) > MAX_FIELDS:
            self._fail("header-too-large", 431, f"more than {MAX_FIELDS} header fields")
        fields: dict[str, str] = {}
        for text in lines:
            found = _FIELD.fullmatch(text)
            if found is None:
                self._fail("bad-request", 400, "a header field that is not 'name: value'")
            fields[found.group(1).decode().lower()] = found.group(2).decode("latin-1")
        if fields.get("content-length", "0").strip() != "0" or "transfer-encoding" in fields:
            self._fail("bad-request", 400, "a request body (nothing here takes one)")
        method, target, minor = match.group(1), match.group(2), match.group(3)
        return Request(method.decode(), target.decode(), int(minor), fields)

    def _fail(self, cause: str, status: int, what: str) -> NoReturn:
        self.failure = (cause, status)
        self._buffer.clear()
        raise ProtocolError(f"refused {what} ({cause})")


def response(status: int, content_type: str, body: bytes, *, keep_alive: bool,
             head_only: bool = False, extra: tuple[tuple[str, str], ...] = ()) -> bytes:
    """The bytes of an HTTP/1.1 answer (``head_only`` for HEAD: no body)."""
    lines = [f"HTTP/1.1 {status} {REASONS.get(status, 'Error')}",
             f"Content-Type: {content_type}", f"Content-Length: {len(body)}",
             "Connection: " + ("keep-alive" if keep_alive else "close"),
             "Cache-Control: no-store",
             *(f"{name}: {value}" for name, value in extra)]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + (b"" if head_only else body)
