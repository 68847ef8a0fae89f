"""A count of log lines held back is logged when its owner closes.

A listener (tcp, tls, zmq) and a peer's gatekeeper log the first refusal of a
cause at once and only count the next ones for an interval (``RefusalLog``);
the tcp writer does the same for the frames lost per address (``LossLog``).
The owner's close logs what it still holds back, once: a tcp or zmq listener's
close its refusals, a ``Peer``'s close its gatekeeper's refusals and the losses
counted so far.

Before: nothing logged a count held back when no later event came: a burst of
refused connections just before a close was reported as one.
"""
from __future__ import annotations

import logging
import socket
from collections.abc import Callable

import pytest

import posa
from posa import transport
from posa.transport.tcp import writer
from tests.support import wait_until

Lines = Callable[[], list[str]]
HELD = "only counted since the last such line"


@pytest.fixture
def lines(caplog: pytest.LogCaptureFixture) -> Lines:
    caplog.set_level(logging.INFO, logger="posa")
    return lambda: caplog.messages


def _held_lines(lines: Lines) -> list[str]:
    return [line for line in lines() if HELD in line]


def _send_garbage(address: str) -> None:
    host, port = address.split("//", 1)[1].rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=10.0) as sock:
        sock.sendall(b"GARBAGE!GARBAGE!")


def test_a_tcp_listeners_close_logs_its_refusals_held_back(lines: Lines) -> None:
    listener = transport.listen("tcp://127.0.0.1:0")
    try:
        for _ in range(3):
            _send_garbage(listener.address)

        def dropped() -> bool:
            listener.recv_nowait()
            return listener.rejections["garbage"] == 3
        wait_until(dropped, 20.0, "three connections dropped")
        assert _held_lines(lines) == []         # one line logged, two held back
    finally:
        listener.close()
    assert len(_held_lines(lines)) == 1
    assert "(the last of 2 of this kind" in _held_lines(lines)[0]
    listener.close()                            # once
    assert len(_held_lines(lines)) == 1


def test_a_zmq_listeners_close_logs_its_refusals_held_back(lines: Lines) -> None:
    zmq = pytest.importorskip("zmq")
    listener = transport.listen("zmq+tcp://127.0.0.1:0")
    dealer = zmq.Context.instance().socket(zmq.DEALER)
    try:
        dealer.connect(listener.address.replace("zmq+", ""))
        for _ in range(3):
            dealer.send_multipart([b"one", b"two"])    # not one frame: garbage

        def dropped() -> bool:
            listener.recv_nowait()
            return listener.rejections["garbage"] == 3
        wait_until(dropped, 20.0, "three messages dropped")
        assert _held_lines(lines) == []
    finally:
        dealer.close(linger=0)
        listener.close()
    assert len(_held_lines(lines)) == 1
    assert "(the last of 2 of this kind" in _held_lines(lines)[0]


def test_a_peers_close_logs_its_gatekeepers_refusals_and_the_losses_held_back(
        lines: Lines) -> None:
    peer = posa.Peer("reports", registry=posa.LocalRegistry(),
                     listen="tcp://127.0.0.1:0", linger=0.5)
    conn = transport.connect(peer.address)
    try:
        for _ in range(3):
            conn.send(b"not a posa message")
        wait_until(lambda: sum(peer.gatekeeper.rejections.values()) == 3, 20.0,
                   "three frames refused")
        writer.losses.lost("tcp://192.0.2.1:1", 2, "refused")
        writer.losses.lost("tcp://192.0.2.1:1", 3, "refused")
        assert _held_lines(lines) == []
    finally:
        conn.close()
        peer.close()
    held = _held_lines(lines)
    assert len(held) == 2, held
    assert any("rejected a frame" in line and "(the last of 2 of this kind" in line
               for line in held)
    assert any("tcp://192.0.2.1:1 are lost" in line and "(the last of 1 times, 3 frames"
               in line for line in held)


def test_a_closed_zmq_listeners_handshake_refusals_held_back_are_logged(
        lines: Lines) -> None:
    pytest.importorskip("zmq")
    listener = transport.listen("zmq+tcp://127.0.0.1:0",
                                transport.Options(first_frame_timeout=0.5))
    try:
        address = listener.address.replace("zmq+", "")
        socks = []
        for _ in range(3):      # a handshake that stalls: libzmq cuts it
            host, port = address.split("//", 1)[1].rsplit(":", 1)
            sock = socket.create_connection((host, int(port)), timeout=10.0)
            sock.sendall(b"\xff\x00")
            socks.append(sock)
        wait_until(lambda: listener.rejections["handshake-failed"] == 3, 20.0,
                   "three handshakes cut")
        for sock in socks:
            sock.close()
        assert _held_lines(lines) == []
    finally:
        listener.close()
    wait_until(lambda: _held_lines(lines), 20.0, "the count logged by the monitor thread")
    assert "(the last of 2 of this kind" in _held_lines(lines)[0]
