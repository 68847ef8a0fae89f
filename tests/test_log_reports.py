"""A count of lines held back is reported though the events stop.

``LossLog`` (the tcp writer's "frames ... are lost" line) and ``RefusalLog`` (a
listener's or the gatekeeper's refusals) log the first event of a key at once
and only count the next ones for their interval. The count is logged when the
interval ended: at the next event of the same key, as before, or now at the next
event of any key, or by ``flush``. ``RefusalLog`` forgets a cause quiet for its
interval, so a new cause is logged once others went quiet.

Before: a count was logged only with a later event of its own key: when the
failures stopped it never was; and ``RefusalLog`` remembered every cause it
had seen for good, so after 256 causes a new one was never logged.
"""
from __future__ import annotations

import logging
from collections.abc import Callable

import pytest

from posa.transport.refusals import RefusalLog
from posa.transport.tcp.writer import LossLog

LOGGER = "posa.test.reports"
Lines = Callable[[], list[str]]
INTERVAL = 10.0


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def lines(caplog: pytest.LogCaptureFixture) -> Lines:
    """The lines logged so far."""
    caplog.set_level(logging.INFO, logger=LOGGER)
    return lambda: caplog.messages


def losses(clock: Clock) -> LossLog:
    return LossLog(logging.getLogger(LOGGER), INTERVAL, clock)


def refusals(clock: Clock) -> RefusalLog:
    return RefusalLog(logging.getLogger(LOGGER), interval=INTERVAL, clock=clock)


def test_a_loss_count_is_logged_at_a_loss_of_another_address(lines: Lines) -> None:
    clock = Clock()
    log = losses(clock)
    assert log.lost("tcp://a:1", 2, "refused")
    for _ in range(5):
        clock.now += 0.1
        assert not log.lost("tcp://a:1", 3, "reset")
    clock.now += INTERVAL
    assert log.lost("tcp://b:1", 1, "refused")      # a:1 stopped failing
    assert lines()[1:] == [
        "3 frames queued for tcp://a:1 are lost: reset (the last of 5 times, 15 frames, "
        "only counted since the last such line)",
        f"1 frames queued for tcp://b:1 are lost: refused (repeats within {INTERVAL:g} s "
        "are only counted)"]
    assert not log.lost("tcp://a:1", 1, "refused")  # within the interval its count's
    clock.now += INTERVAL                           # line began: counted
    assert log.lost("tcp://a:1", 1, "refused")
    assert lines()[-1].endswith("(and 1 more times, 1 frames, since the last such line)")
    clock.now += INTERVAL
    assert log.lost("tcp://b:1", 1, "refused")      # quiet for an interval: forgotten
    assert lines()[-1].endswith(f"(repeats within {INTERVAL:g} s are only counted)")


def test_the_same_address_still_says_its_count_in_its_next_line(lines: Lines) -> None:
    clock = Clock()
    log = losses(clock)
    assert log.lost("tcp://a:1", 1, "refused")
    clock.now += 1.0
    assert not log.lost("tcp://a:1", 4, "refused")
    clock.now += INTERVAL
    assert log.lost("tcp://a:1", 1, "refused")
    assert lines()[1:] == ["1 frames queued for tcp://a:1 are lost: refused (and 1 more "
                         "times, 4 frames, since the last such line)"]


def test_a_flush_logs_the_loss_counts_held_back(lines: Lines) -> None:
    clock = Clock()
    log = losses(clock)
    assert log.lost("tcp://a:1", 1, "refused")
    assert log.lost("tcp://b:1", 1, "refused")
    assert not log.lost("tcp://a:1", 2, "refused")
    log.flush()
    assert lines()[2:] == ["2 frames queued for tcp://a:1 are lost: refused (the last of 1 "
                         "times, 2 frames, only counted since the last such line)"]
    log.flush()                                     # nothing held back: no line
    assert len(lines()) == 3


def test_a_refusal_count_is_logged_at_a_refusal_of_another_cause(
        lines: Lines) -> None:
    clock = Clock()
    log = refusals(clock)
    assert log.refused("tls", "refused %s: handshake", "h1")
    for host in ("h2", "h3", "h4"):
        clock.now += 0.1
        assert not log.refused("tls", "refused %s: handshake", host)
    clock.now += INTERVAL
    assert log.refused("garbage", "dropped %d bytes", 7)      # tls stopped
    assert lines()[1:] == [
        "refused h4: handshake (the last of 3 of this kind only counted since the last "
        "such line)",
        f"dropped 7 bytes (more of this kind within {INTERVAL:g} s are only counted)"]
    assert not log.refused("tls", "refused %s: handshake", "h5")   # at most one line
    assert len(lines()) == 3                                        # per interval


def test_the_same_cause_still_says_its_count_in_its_next_line(lines: Lines) -> None:
    clock = Clock()
    log = refusals(clock)
    assert log.refused("tls", "refused %s", "h1")
    assert not log.refused("tls", "refused %s", "h2")
    clock.now += INTERVAL
    assert log.refused("tls", "refused %s", "h3")
    assert lines()[1:] == ["refused h3 (and 1 more of this kind since the last such line)"]


def test_a_flush_logs_the_refusal_counts_held_back(lines: Lines) -> None:
    clock = Clock()
    log = refusals(clock)
    assert log.refused("tls", "refused %s", "h1")
    assert not log.refused("tls", "refused %s", "h2")
    log.flush()
    assert lines()[1:] == ["refused h2 (the last of 1 of this kind only counted since the "
                         "last such line)"]


def test_causes_quiet_for_their_interval_are_forgotten(lines: Lines) -> None:
    """Memory stays bounded (256 causes within their interval); a new cause is
    logged once older ones went quiet, and those refused while all 256 were
    within their interval are counted in a line."""
    clock = Clock()
    log = refusals(clock)
    for n in range(256):
        assert log.refused(f"cause {n}", "cause %d", n)
    assert not log.refused("one more", "one more")          # all 256 within their interval
    assert len(lines()) == 256
    clock.now += INTERVAL
    assert log.refused("a new one", "a new one")
    assert lines()[256:] == [
        f"1 refusals of other causes were only counted (more than 256 causes within "
        f"{INTERVAL:g} s)",
        f"a new one (more of this kind within {INTERVAL:g} s are only counted)"]
    assert len(log._causes) == 1                            # the quiet ones forgotten
