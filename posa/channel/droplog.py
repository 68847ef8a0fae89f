"""Rate-limited log records for what a channel drops (pure but for logging).

``DropLog.observe`` is given the channel's cumulative drop counts per cause
(``drop-oldest``, ``drop-newest``, ``disconnect``, ``fail``, ``undeliverable``)
and the time; it writes at most one WARNING per cause per ``interval``
seconds, with the count since that cause's previous record, so a flood of
drops costs a few lines, and a single drop is still seen.
"""
from __future__ import annotations

import logging

__all__ = ["DropLog"]


class DropLog:
    """At most one record per cause per ``interval`` seconds, with a count."""

    def __init__(self, channel: str, logger: logging.Logger, interval: float = 10.0) -> None:
        self.channel = channel
        self.log = logger
        self.interval = interval
        self._logged: dict[str, int] = {}      # cause -> count when last logged
        self._at: dict[str, float] = {}        # cause -> when last logged
        self.records = 0

    def pending(self, totals: dict[str, int]) -> int:
        """Drops not yet in a record."""
        return sum(n - self._logged.get(cause, 0) for cause, n in totals.items())

    def observe(self, totals: dict[str, int], now: float) -> None:
        for cause, total in totals.items():
            new = total - self._logged.get(cause, 0)
            if new <= 0 or now - self._at.get(cause, -self.interval) < self.interval:
                continue
            self.log.warning("channel %s: %d event(s) dropped (%s) since the last such "
                             "record", self.channel, new, cause)
            self._logged[cause] = total
            self._at[cause] = now
            self.records += 1
