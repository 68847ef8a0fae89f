"""The channel's side of its store: what is journaled, numbered and trimmed when.

``Keeping`` sits between ``EventChannel`` and a ``posa.channel.store`` store:

- ``journal_run`` runs on the reactor thread at the end of each turn (the
  peer's ``on_run``), before that turn's acknowledgements go out: it keeps the
  turn's publications in one transaction and queues their entry ids, in the
  order the ingest thread will take the messages (``entry_for``);
- ``record`` runs under the channel's lock when the core accepted (part of) a
  publication, and ``commit`` writes what was recorded since the last one in
  one transaction (the ingest thread commits when the inbox is empty, or every
  ``COMMIT_EVERY`` publications, and before it waits); only then may
  subscribers take the events (``ChannelCore.safe``);
- ``trim`` follows the core's retention (every sweep, twice a second).

With a ``MemoryStore`` nothing of this is installed and nothing costs.
"""
from __future__ import annotations

import logging
import threading
from collections import deque
from typing import Any

from posa.channel.core import ChannelCore, Published
from posa.channel.protocol import Publication
from posa.channel.store import HistoryStore
from posa.errors import Closed
from posa.wire.codec import Kind, Message

__all__ = ["Keeping", "is_publish"]

log = logging.getLogger("posa.channel.service")


def is_publish(msg: Message) -> bool:
    """True for what the channel treats as a publication (and journals)."""
    body = msg.body
    return msg.kind == Kind.SEND and type(body) is dict and body.get("op") == "publish"


def _raw(body: dict[str, Any]) -> Publication:
    """A publication as received, unchecked (the core checks it when numbering)."""
    topics, blob = body.get("topics"), body.get("bodies")
    return Publication(topics if isinstance(topics, (str, list)) else [],
                       blob=blob if type(blob) is bytes else b"\x90",
                       vias=body.get("vias"), origins=body.get("origins"),
                       pid=body.get("pid") if type(body.get("pid")) is int else None,
                       pseq=body.get("pseq") if type(body.get("pseq")) is int else None,
                       traces=body.get("traces"))


class Keeping:
    """Journal, history and retention of one channel in its store."""

    def __init__(self, store: HistoryStore) -> None:
        self.store = store
        self._entries: deque[int] = deque()
        self._journaled = threading.Condition()
        self._trimmed = 0
        self.errors = 0
        self._now = 0.0
        self._runs: list[tuple[Any, float, int | None, int | None]] = []
        self._whole: list[tuple[Any, float, int | None, int | None]] = []
        self._done: list[tuple[int, int]] = []

    def journal_run(self, run: list[Message]) -> None:
        """The reactor's turn ended: keep its publications (``Peer(on_run=...)``)."""
        pubs = [_raw(msg.body) for msg in run if is_publish(msg)]
        if not pubs:
            return
        try:
            ids = self.store.journal(pubs)
        except Exception as exc:
            self.errors += 1
            log.error("channel store: %d publication(s) not journaled: %s", len(pubs), exc)
            ids = [0] * len(pubs)
        with self._journaled:
            self._entries.extend(ids)
            self._journaled.notify_all()

    def entry_for(self, closing: threading.Event) -> int:
        """The journal entry of the next publication the ingest thread takes."""
        with self._journaled:
            while not self._entries:
                if closing.is_set():
                    raise Closed("the channel is closing")
                self._journaled.wait(0.25)
            return self._entries.popleft()

    def journal_one(self, pub: Publication) -> None:
        """Keep one publication that did not come through the reactor (upstream)."""
        try:
            pub.entry = self.store.journal([pub])[0]
        except Exception as exc:
            self.errors += 1
            log.error("channel store: an upstream publication was not journaled: %s", exc)

    def record(self, pub: Publication, result: Published | None) -> None:
        """The core settled (part of) ``pub``: note the run and the entry, for
        the next ``commit``."""
        run = result.run if result is not None else None
        entry = pub.entry
        if entry and result is not None and run is not None and result.rest is None \
                and pub.whole and not result.looped and not result.duplicate \
                and run.seqs is None:       # numbered as it is: bodies not written again
            self._done.append((entry, -2))
            self._whole.append((run, self._now, pub.pid, pub.pseq))
            return
        if run is not None:
            self._runs.append((run, self._now, pub.pid, pub.pseq))
        if entry:
            finished = result is None or result.rest is None
            self._done.append((entry, -1 if finished or result is None else result.consumed))

    @property
    def uncommitted(self) -> int:
        return len(self._done) + len(self._runs)

    def commit(self, core: ChannelCore, now: float) -> None:
        """Write what was noted since the last commit, in one transaction; then
        subscribers may take it (``core.safe``)."""
        self._now = now
        if self._done or self._runs:
            whole, runs, done = self._whole, self._runs, self._done
            self._whole, self._runs, self._done = [], [], []
            try:
                self.store.record(runs, done, core.seq, whole)
            except Exception as exc:
                self.errors += 1
                log.error("channel store: seqs up to %d not kept: %s", core.seq, exc)
        core.safe = core.seq

    def trim(self, core: ChannelCore) -> None:
        first = core.first_seq()
        if first > self._trimmed:
            try:
                self.store.trim(first)
                self._trimmed = first
            except Exception as exc:
                self.errors += 1
                log.error("channel store: history below seq %d not trimmed: %s", first, exc)
