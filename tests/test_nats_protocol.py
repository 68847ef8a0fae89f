"""The NATS protocol codec (posa.transport.nats.protocol), sans-IO: what a server
sends, cut anywhere, parses to the same events; any bytes give events or one
ProtocolError, and every feed after it raises again; the client's commands."""
from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from posa.errors import ProtocolError
from posa.transport.nats import protocol
from posa.transport.nats.protocol import ERR, INFO, MSG, OK, PING, PONG, Msg, Parser

token = st.text("abcxyz0123_-", min_size=1, max_size=8)
subjects = st.lists(token, min_size=1, max_size=4).map(".".join)
payloads = st.binary(max_size=300)


def encoded_msg(subject: str, sid: int, reply: str, data: bytes, status: str) -> bytes:
    tail = f" {reply}" if reply else ""
    if not status:
        return f"MSG {subject} {sid}{tail} {len(data)}\r\n".encode() + data + b"\r\n"
    head = f"NATS/1.0 {status}\r\n\r\n".encode()
    return (f"HMSG {subject} {sid}{tail} {len(head)} {len(head) + len(data)}\r\n".encode()
            + head + data + b"\r\n")


@st.composite
def server_commands(draw: Any) -> tuple[bytes, tuple[int, Any]]:
    kind = draw(st.sampled_from(["info", "msg", "hmsg", "ping", "pong", "ok", "err"]))
    if kind == "info":
        info = {"max_payload": draw(st.integers(1, 1 << 24)),
                "connect_urls": draw(st.lists(st.just("127.0.0.1:4222"), max_size=2))}
        return b"INFO " + json.dumps(info).encode() + b"\r\n", (INFO, info)
    if kind in ("msg", "hmsg"):
        subject, data = draw(subjects), draw(payloads)
        sid, reply = draw(st.integers(1, 10**9)), draw(st.one_of(st.just(""), subjects))
        status = draw(st.sampled_from(["503", "100"])) if kind == "hmsg" else ""
        return encoded_msg(subject, sid, reply, data, status), (
            MSG, (subject, sid, reply, data, status))
    if kind == "err":
        text = draw(st.text("abc xyz", min_size=1, max_size=20)).strip() or "x"
        return f"-ERR '{text}'\r\n".encode(), (ERR, text)
    simple = {"ping": (b"PING\r\n", PING), "pong": (b"PONG\r\n", PONG), "ok": (b"+OK\r\n", OK)}
    wire, event = simple[kind]
    return wire, (event, None)


def plain(events: list[tuple[int, Any]]) -> list[tuple[int, Any]]:
    return [(kind, (value.subject, value.sid, value.reply, value.data, value.status))
            if isinstance(value, Msg) else (kind, value) for kind, value in events]


def feed_in_pieces(parser: Parser, wire: bytes, cuts: list[int]) -> list[tuple[int, Any]]:
    events: list[tuple[int, Any]] = []
    start = 0
    for cut in sorted(set(cuts)) + [len(wire)]:
        events += parser.feed(wire[start:cut])
        start = cut
    return events


@settings(max_examples=300, deadline=None)
@given(st.lists(server_commands(), max_size=12), st.data())
def test_what_a_server_sends_parses_the_same_however_it_is_cut(
        commands: list[tuple[bytes, tuple[int, Any]]], data: st.DataObject) -> None:
    wire = b"".join(encoded for encoded, _ in commands)
    cuts = data.draw(st.lists(st.integers(0, len(wire)), max_size=20))
    assert plain(feed_in_pieces(Parser(), wire, cuts)) == [event for _, event in commands]


@settings(max_examples=500, deadline=None)
@given(st.lists(st.binary(max_size=64) | st.sampled_from(
    [b"MSG a 1 3\r\n", b"abc\r\n", b"PING\r\n", b"HMSG a 1 5 3\r\n", b"INFO {}\r\n",
     b"\r\n", b"-ERR\r\n", b"MSG a 1 99999999999999999999\r\n"]), max_size=12))
def test_any_bytes_give_events_or_one_protocol_error(chunks: list[bytes]) -> None:
    parser = Parser()
    failed = False
    for chunk in chunks:
        try:
            events = parser.feed(chunk)
        except ProtocolError:
            failed = True
            break
        assert all(kind in (INFO, MSG, PING, PONG, OK, ERR) for kind, _ in events)
    if failed:
        with pytest.raises(ProtocolError):
            parser.feed(b"PING\r\n")           # unusable past the error


def test_a_control_line_over_the_limit_is_a_protocol_error() -> None:
    with pytest.raises(ProtocolError, match="control line"):
        Parser().feed(b"INFO " + b"x" * protocol.MAX_CONTROL)


@pytest.mark.parametrize("wire", [
    b"MSG a 1 3\r\nabcX\r\n",               # not ended by CRLF
    b"HMSG a 1 9 3\r\nNATS/1.0\r\n\r\n",    # headers larger than the message
    b"HMSG a 1 5 5\r\nHTTP/\r\n",           # headers not NATS/1.0
    b"BOGUS\r\n", b"MSG a x 3\r\nabc\r\n", b"INFO [1]\r\n", b"PING now\r\n"])
def test_malformed_commands_are_protocol_errors(wire: bytes) -> None:
    with pytest.raises(ProtocolError):
        Parser().feed(wire)


def test_no_responders_is_an_hmsg_with_status_503() -> None:
    [(kind, msg)] = Parser().feed(b"HMSG _INBOX.x 7 16 16\r\nNATS/1.0 503\r\n\r\n\r\n")
    assert kind == MSG and (msg.subject, msg.sid, msg.data, msg.status) == (
        "_INBOX.x", 7, b"", "503")


def test_the_clients_commands() -> None:
    connect = protocol.connect("posa-1")
    assert connect.startswith(b"CONNECT ") and connect.endswith(b"\r\n")
    options = json.loads(connect[8:])
    assert options["verbose"] is False and options["pedantic"] is False
    assert options["headers"] is True and options["no_responders"] is True
    assert options["protocol"] == 1 and options["name"] == "posa-1"
    assert protocol.sub("posa.a", 3) == b"SUB posa.a 3\r\n"
    assert protocol.unsub(3) == b"UNSUB 3\r\n"
    assert protocol.pub("posa.a", "_INBOX.b", 12) == b"PUB posa.a _INBOX.b 12\r\n"
    assert protocol.pub("posa.a", "", 0) == b"PUB posa.a  0\r\n"
