"""A connection that keeps failing does not flood the log.

A sender retries a recipient it cannot reach (a listener whose certificate does
not verify, one that resets every connection) dozens of times a second, on a new
connection each time, and each failed connection loses what it had queued. The
tcp writer logged "N frames queued ... are lost" for every one of them. It now
logs the first loss of an address at once, with the cause and what to do, only
counts the next ones for ``LOSS_INTERVAL`` seconds, and says how many there were
in its next line.
"""
from __future__ import annotations

import logging
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

import posa
from posa.errors import TransportError
from posa.transport import Options
from posa.transport.tcp import writer
from posa.transport.tcp.sockets import DIRECT_LIMIT
from posa.transport.tcp.writer import LOSS_INTERVAL, LossLog, QueuedWriter
from tests.support import wrong_ca

pytestmark = pytest.mark.timeout(60)

LOGGER = "posa.transport.tcp"


@pytest.fixture
def losses(monkeypatch: pytest.MonkeyPatch) -> Iterator[LossLog]:
    """A fresh loss log for the writers (no line held back by an earlier test)."""
    fresh = LossLog(writer.log)
    monkeypatch.setattr(writer, "losses", fresh)
    yield fresh


def fail_a_write(address: str) -> None:
    """A connection to ``address`` whose listener went away: a frame too large to
    be written with its header is queued, and the write fails (EPIPE)."""
    mine, theirs = socket.socketpair()
    theirs.close()
    conn = QueuedWriter(mine, address, Options())
    try:
        with pytest.raises(TransportError, match="closed the connection"):
            conn.send(b"x" * (DIRECT_LIMIT + 1))
    finally:
        mine.close()


def lost_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.name == LOGGER and "are lost" in r.getMessage()]


def test_a_hundred_failing_connections_to_one_address_log_one_line(
        losses: LossLog, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger=LOGGER)
    for _ in range(100):
        fail_a_write("tcp://192.0.2.1:7000")
    lines = lost_lines(caplog)
    assert len(lines) == 1
    assert lines[0].startswith("1 frames queued for tcp://192.0.2.1:7000 are lost: the "
                               "listener at tcp://192.0.2.1:7000 closed the connection")
    assert "connect again to go on" in lines[0]           # what to do
    assert f"repeats within {LOSS_INTERVAL:g} s are only counted" in lines[0]
    fail_a_write("tcp://192.0.2.2:7000")                  # another address: its own line
    assert len(lost_lines(caplog)) == 2


def test_the_next_line_says_how_many_losses_were_only_counted(
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger=LOGGER)
    now = [100.0]
    log = LossLog(logging.getLogger(LOGGER), clock=lambda: now[0])
    assert log.lost("tcp://h:1", 2, "refused")
    for _ in range(57):
        now[0] += 0.1
        assert not log.lost("tcp://h:1", 1, "refused")
    now[0] += LOSS_INTERVAL
    assert log.lost("tcp://h:1", 1, "refused")
    lines = lost_lines(caplog)
    assert len(lines) == 2
    assert lines[1] == ("1 frames queued for tcp://h:1 are lost: refused (and 57 more "
                        "times, 57 frames, since the last such line)")
    now[0] += LOSS_INTERVAL
    assert log.lost("tcp://h:1", 1, "refused")      # nothing held back: no count
    assert lost_lines(caplog)[2].endswith(f"(repeats within {LOSS_INTERVAL:g} s are only "
                                          "counted)")


def test_a_listener_whose_certificate_does_not_verify_is_logged_once(
        losses: LossLog, caplog: pytest.LogCaptureFixture, tmp_path: Path) -> None:
    caplog.set_level(logging.WARNING, logger=LOGGER)
    with wrong_ca(tmp_path, "flood") as (server, client):
        client.send("flood/server", "never", timeout=1.0)
        with pytest.raises(posa.Timeout, match="give it with --tls-ca"):
            client.flush(timeout=1.5)       # retried on a new connection all along
        lines = [line for line in lost_lines(caplog) if server.address in line]
        assert len(lines) == 1
        assert "the listener's certificate was refused" in lines[0]
        assert "give it with --tls-ca" in lines[0]
