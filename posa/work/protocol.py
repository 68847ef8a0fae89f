"""The work queue's wire protocol: one table for the queue and its clients.

Requests go to the queue's name; every body is a map with an ``op`` field
(docs/protocol.md, "The work queue's requests", is generated from ``QUEUE``):

    op       request fields                           reply
    next     max, wait, done: [[key, result, secs]],   {"items": [[key, token, attempt,
             failed: [[key, token, reason]]            data]], "visibility": secs}
    put      items: [[key, data]]                      {"accepted": n, "added": m}
    extend   leases: [[key, token]]   (one-way send)   -
    wake     -                        (one-way send)   answers the sender's held ``next``
    metrics  -                                         the metrics map
    dead     -                                         [[key, attempts, reason]]

The queue (``posa.work.queue``) parses every request with ``QUEUE.parse`` and
dispatches through ``QUEUE.bind``; its clients (``posa.work.worker``,
``posa.work.client``) build their requests with ``QUEUE.request`` (the worker's
per-item ``next`` with ``next_request``, tested equal to it), so neither side
can drift from the other. A malformed request (not a map, an unknown
``op``, a field of the wrong type, a list entry of the wrong shape) is refused
as a whole with ``Rejected`` saying what to send. Numbers out of range are
clamped (``MAX_ITEMS``, ``MAX_WAIT``), not refused: a worker asking for more
than the queue hands out at once gets what there is.

Pure: no I/O.
"""
from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from posa.wire.schema import Field, Op, OpTable

__all__ = ["QUEUE", "MAX_ITEMS", "MAX_WAIT", "items_reply", "next_request"]

MAX_ITEMS = 10_000          # items one ``next`` may ask for
MAX_WAIT = 3600.0           # seconds one ``next`` may be held


def _done_rows(rows: list[Any]) -> bool:
    """Each row is [key (str), result, seconds (a number)]."""
    for row in rows:
        if (type(row) is not list or len(row) != 3 or type(row[0]) is not str
                or not isinstance(row[2], (int, float))):
            return False
    return True


def _failed_rows(rows: list[Any]) -> bool:
    """Each row is [key (str), token (int), reason]."""
    for row in rows:
        if (type(row) is not list or len(row) != 3 or type(row[0]) is not str
                or type(row[1]) is not int):
            return False
    return True


def _lease_rows(rows: list[Any]) -> bool:
    """Each row is [key (str), token (int)]."""
    for row in rows:
        if (type(row) is not list or len(row) != 2 or type(row[0]) is not str
                or type(row[1]) is not int):
            return False
    return True


def _item_rows(rows: list[Any]) -> bool:
    """Each row is [key (str), data]."""
    for row in rows:
        if type(row) is not list or len(row) != 2 or type(row[0]) is not str:
            return False
    return True


_NUMBER = (int, float)

QUEUE = OpTable("work-queue", [
    Op("next", (
        Field("max", int, 1),
        Field("wait", _NUMBER, 0.0),
        Field("done", list, (), _done_rows,
              "a list of [key (a string), result, seconds (a number)]"),
        Field("failed", list, (), _failed_rows,
              "a list of [key (a string), token (an integer), reason]"),
    ), doc="settle `done` (`[[key, result, secs]]`) and `failed` (`[[key, token, "
           "reason]]`), then lease up to `max` items (default 1, 0..10000), holding the "
           "request up to `wait` seconds (default 0, at most its time to live) if there "
           "are none; replies `{items: [[key, token, attempt, data]], visibility: secs}`"),
    Op("put", (
        Field("items", list, check=_item_rows,
              must="a list of [key (a string), data]"),
    ), doc="queue the items (`[[key, data]]`) that fit, in order; replies `{accepted: "
           "n, added: m}`: the first n were taken, m of them new (known keys are ignored)"),
    Op("extend", (
        Field("leases", list, (), _lease_rows,
              "a list of [key (a string), token (an integer)]"),
    ), oneway=True, doc="the leases (`[[key, token]]`) run `visibility` seconds from now"),
    Op("wake", oneway=True, doc="answer the sender's held `next` at once (it is stopping)"),
    Op("metrics", doc="replies the queue's metrics map (docs/work.md, Progress)"),
    Op("dead", doc="replies the dead letters: `[[key, attempts, reason]]`, oldest first"),
])


def items_reply(rows: Iterable[list[Any]], visibility: float) -> dict[str, Any]:
    """The reply to ``next``: the leased items as ``[key, token, attempt, data]``
    rows and the queue's visibility timeout."""
    return {"items": rows if isinstance(rows, list) else list(rows),
            "visibility": visibility}


def next_request(max_items: int, wait: float, done: list[list[Any]],
                 failed: list[list[Any]]) -> dict[str, Any]:
    """The body of ``next``, as ``QUEUE.request("next", ...)`` builds it. A
    worker sends one per item (or per ``prefetch`` items): written out, it costs
    a tenth of the generic builder; tests/test_workqueue.py keeps the two equal."""
    return {"op": "next", "max": max_items, "wait": wait, "done": done, "failed": failed}
