"""What the gateway tests share: a real dispatcher, channel and gateway, an
HTTP client that checks every response against the OpenAPI document, and an
event-stream reader.  (No tests here.)"""
from __future__ import annotations

import http.client
import json
import re
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jsonschema

from tests.support import Proc, free_port, start_dispatcher

TOKEN = "test-token-for-everything-0123"
LIMITED = "test-token-for-app-names-only"
HASHED = "test-token-stored-as-a-digest"


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: Any
    raw: bytes = b""

    @property
    def type(self) -> str:
        return self.headers.get("content-type", "").split(";")[0]


@dataclass
class World:
    """A dispatcher, a channel ``events/gw`` and a gateway, as real processes."""

    dispatcher: str
    url: str
    host: str
    port: int
    procs: list[Proc] = field(default_factory=list)
    spec: dict[str, Any] = field(default_factory=dict)

    def close(self) -> None:
        for proc in reversed(self.procs):
            proc.close()

    # -- HTTP --------------------------------------------------------------
    def call(self, method: str, path: str, body: Any = None, *, token: str | None = TOKEN,
             headers: dict[str, str] | None = None, raw: bytes | None = None,
             timeout: float = 30.0) -> Reply:
        """One request on a fresh connection; the response checked against the spec."""
        conn = http.client.HTTPConnection(self.host, self.port, timeout=timeout)
        sent = dict(headers or {})
        if token is not None:
            sent["Authorization"] = f"Bearer {token}"
        data = raw if raw is not None else (None if body is None and method == "GET"
                                            else json.dumps(body).encode())
        if data is not None:
            sent.setdefault("Content-Type", "application/json")
        try:
            conn.request(method, path, body=data, headers=sent)
            response = conn.getresponse()
            payload = response.read()
            heads = {k.lower(): v for k, v in response.getheaders()}
        finally:
            conn.close()
        reply = Reply(response.status, heads, None, payload)
        if reply.type in ("application/json", "application/problem+json") and payload:
            reply.body = json.loads(payload)
        elif payload:
            reply.body = payload.decode()
        if self.spec:
            check_against_spec(self.spec, method, path, reply)
        return reply


def operation(spec: dict[str, Any], method: str, path: str) -> tuple[str, dict[str, Any]]:
    """The documented (template, operation) a concrete path falls under."""
    bare = path.split("?")[0]
    for template in sorted(spec["paths"], key=lambda t: (t.count("{"), -len(t))):
        pattern = "^" + re.sub(r"\{[^}]+\}", ".+", template) + "$"
        if re.match(pattern, bare) and method.lower() in spec["paths"][template]:
            return template, spec["paths"][template][method.lower()]
    raise AssertionError(f"{method} {bare} is not in the OpenAPI document")


def check_against_spec(spec: dict[str, Any], method: str, path: str, reply: Reply) -> None:
    """The status is documented for the operation, and so is the body's media type,
    and the body validates against its schema (JSON Schema 2020-12)."""
    template, op = operation(spec, method, path)
    documented = op["responses"].get(str(reply.status))
    assert documented is not None, (
        f"{method} {template} answered {reply.status}, not documented: {reply.body}")
    content = documented.get("content")
    if content is None:
        assert not reply.raw, f"{method} {template} {reply.status} has an undocumented body"
        return
    assert reply.type in content, f"{method} {template} {reply.status}: {reply.type}"
    if reply.type.endswith("json"):
        schema = dict(content[reply.type]["schema"], components=spec["components"])
        jsonschema.validate(reply.body, schema)


def start_world(tmp: Path, *gateway_args: str, history: int = 10000,
                channel_name: str = "events/gw", keys: Path | None = None) -> World:
    tokens = tmp / "tokens"
    import hashlib
    digest = hashlib.sha256(HASHED.encode()).hexdigest()
    tokens.write_text(f"# test tokens\n{TOKEN} tester **\n{LIMITED} limited app/**\n"
                      f"sha256:{digest} hashed app/** events/**\n")
    tokens.chmod(0o600)
    secured = ("--keys", str(keys)) if keys is not None else ()
    dispatcher, address = start_dispatcher(*secured)
    procs = [dispatcher]
    try:
        channel = Proc.posa("channel", channel_name, "--dispatcher", address,
                            "--history", str(history), *secured)
        procs.append(channel)
        channel.expect(f"channel {channel_name}")
        port = free_port()
        gateway = Proc.posa("gateway", "--listen", f"http://127.0.0.1:{port}",
                            "--dispatcher", address, "--tokens", str(tokens), *secured,
                            *gateway_args)
        procs.append(gateway)
        gateway.expect("posa gateway at")
    except BaseException:
        for proc in reversed(procs):
            proc.close()
        raise
    world = World(address, f"http://127.0.0.1:{port}", "127.0.0.1", port, procs)
    world.spec = world.call("GET", "/v1/openapi.json", token=None).body
    return world


def sse_events(sock: socket.socket, deadline: float) -> Iterator[dict[str, Any]]:
    """Parse Server-Sent Events from a socket (after the head; a chunked body is
    decoded, its framing checked) until it ends or the deadline passes; yields
    {"id", "event", "data"}, and {"event": "end"} when the body ended properly."""
    raw = b""
    buffer = b""
    chunked: bool | None = None
    while time.monotonic() < deadline:
        sock.settimeout(max(0.05, deadline - time.monotonic()))
        try:
            chunk = sock.recv(65536)
        except (TimeoutError, ConnectionResetError):
            return
        if not chunk:
            if chunked is False:
                yield {"event": "end"}
            return
        raw += chunk
        if chunked is None:
            if b"\r\n\r\n" not in raw:
                continue
            head, _, raw = raw.partition(b"\r\n\r\n")
            assert head.split(b" ")[1] == b"200", head
            chunked = b"transfer-encoding: chunked" in head.lower()
        if chunked:
            data, raw, ended = _dechunk(raw)
            buffer += data
        else:
            buffer, raw, ended = buffer + raw, b"", False
        while b"\n\n" in buffer:
            block, _, buffer = buffer.partition(b"\n\n")
            event: dict[str, Any] = {}
            for line in block.decode().splitlines():
                if line.startswith(":"):
                    continue
                key, _, value = line.partition(": ")
                event[key] = json.loads(value) if key == "data" else value
            if event:
                yield event
        if ended:
            yield {"event": "end"}
            return


def _dechunk(raw: bytes) -> tuple[bytes, bytes, bool]:
    """(the data of the whole chunks in ``raw``, the rest, whether the last came)."""
    data = b""
    while b"\r\n" in raw:
        size_line, _, rest = raw.partition(b"\r\n")
        size = int(size_line, 16)
        if len(rest) < size + 2:
            break
        assert rest[size:size + 2] == b"\r\n", "a chunk does not end with CRLF"
        data, raw = data + rest[:size], rest[size + 2:]
        if size == 0:
            return data, raw, True
    return data, raw, False


def open_stream(world: World, path: str, headers: dict[str, str] | None = None,
                rcvbuf: int | None = None, token: str = TOKEN,
                version: str = "1.0") -> socket.socket:
    """A raw GET of an event stream (HTTP/1.1: a chunked body)."""
    sock = socket.socket()
    if rcvbuf is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.connect((world.host, world.port))
    lines = [f"GET {path} HTTP/{version}", f"Host: {world.host}",
             f"Authorization: Bearer {token}"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
    return sock
