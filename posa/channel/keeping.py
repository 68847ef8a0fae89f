"""The channel's side of its store: what is journaled, numbered and trimmed when.

``Keeping`` sits between ``EventChannel`` and a ``posa.channel.store`` store:

- ``journal_run`` runs on the reactor thread at the end of each turn (the
  peer's ``on_run``), before that turn's messages are delivered or
  acknowledged: it keeps the turn's publications in one transaction and queues
  their entry ids, in the order the ingest thread will take the messages
  (``entry_for``); when the store cannot, the turn's publications are refused
  (neither delivered nor acknowledged: their publishers send them again);
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
import sqlite3
import threading
import time
from collections import deque
from typing import Any

from posa.channel.core import ChannelCore, Published
from posa.channel.protocol import Publication
from posa.channel.store import HistoryStore
from posa.errors import Closed
from posa.wire.codec import Kind, Message

__all__ = ["Keeping", "is_publish"]

log = logging.getLogger("posa.channel.service")
RETRY = (0.05, 1.0)     # the first and the longest wait before journaling a turn again


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

    def __init__(self, store: HistoryStore, closing: threading.Event | None = None,
                 core: ChannelCore | None = None) -> None:
        self.store = store
        self.closing = closing if closing is not None else threading.Event()
        if core is not None:        # subscribers take what the store holds; more once kept
            core.safe = core.seq
        self._entries: deque[int] = deque()
        self._journaled = threading.Condition()
        self._trimmed, self._trim_failing = 0, False
        self.errors = 0
        self._now = 0.0
        self._runs: list[tuple[Any, float, int | None, int | None]] = []
        self._whole: list[tuple[Any, float, int | None, int | None]] = []
        self._done: list[tuple[int, int]] = []
        self._retry_at, self._wait = 0.0, RETRY[0]  # after a failed commit: when to try again
        self._refusing, self._journal_at, self._journal_wait = False, 0.0, RETRY[0]

    def journal_run(self, run: list[Message]) -> list[Message] | None:
        """The reactor's turn ended: keep its publications (``Peer(on_run=...)``).
        Returns them if the store could not: the peer neither delivers nor
        acknowledges them, and takes them again when their publishers resend."""
        msgs = [msg for msg in run if is_publish(msg)]
        if not msgs:
            return None
        ids = self._journal([_raw(msg.body) for msg in msgs])
        if ids is None:
            return msgs
        with self._journaled:
            self._entries.extend(ids)
            self._journaled.notify_all()
        return None

    def _journal(self, pubs: list[Publication]) -> list[int] | None:
        """The entries of a turn's publications, or None while the store cannot
        take them (a full disk, an I/O error, damage: ``sqlite3.Error``): then the
        turn is refused, and no acknowledgement goes out for an event not stored;
        publishers wait (their ``flush`` times out) and send again until there is
        room. After a failure the store is tried again after a wait (doubling up
        to ``RETRY[1]``); turns before then are refused at once. The reactor
        never waits for the store to have room."""
        if self._refusing and time.monotonic() < self._journal_at:
            return None
        try:
            ids = self.store.journal(pubs)
        except sqlite3.Error as exc:
            self.errors += 1
            if not self._refusing:
                log.error("channel store: %d publication(s) not journaled, not "
                          "acknowledged until they are (their publishers send them "
                          "again; the store is tried every %g s at most): %s",
                          len(pubs), RETRY[1], exc)
            self._journal_wait = min(self._journal_wait * 2, RETRY[1]) \
                if self._refusing else RETRY[0]
            self._refusing, self._journal_at = True, time.monotonic() + self._journal_wait
            return None
        except Exception as exc:        # not the disk: this publication never will be
            self.errors += 1
            log.error("channel store: %d publication(s) not journaled: %s", len(pubs), exc)
            return [0] * len(pubs)
        if self._refusing:
            log.warning("channel store: journaled again; acknowledging")
            self._refusing = False
        return ids

    def entry_for(self, closing: threading.Event) -> int:
        """The journal entry of the next publication the ingest thread takes."""
        with self._journaled:
            while not self._entries:
                if closing.is_set():
                    raise Closed("the channel is closing")
                self._journaled.wait(0.25)
            return self._entries.popleft()

    def journal_one(self, pub: Publication) -> bool:
        """Keep one publication that did not come through the reactor (upstream):
        while the store cannot take it (``sqlite3.Error``) the upstream's thread
        waits and tries again (doubling up to ``RETRY[1]``; its subscription's
        buffer fills meanwhile, under its policy). False: the channel closed
        first, and the events are not taken."""
        wait, said = RETRY[0], False
        while True:
            try:
                pub.entry = self.store.journal([pub])[0]
                return True
            except sqlite3.Error as exc:
                self.errors += 1
                if not said:
                    log.error("channel store: an upstream publication was not journaled, "
                              "not taken until it is (tried again every %g s at most): %s",
                              RETRY[1], exc)
                    said = True
            except Exception as exc:    # not the disk: it never will be
                self.errors += 1
                log.error("channel store: an upstream publication was not journaled: %s",
                          exc)
                return True
            if self.closing.wait(wait):
                return False
            wait = min(wait * 2, RETRY[1])

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
        """Notes to commit (none while waiting to try a failed commit again)."""
        if self._retry_at and time.monotonic() < self._retry_at:
            return 0
        return len(self._done) + len(self._runs)

    def commit(self, core: ChannelCore, now: float) -> None:
        """Write what was noted since the last commit, in one transaction; then
        subscribers may take it (``core.safe``). A commit that fails keeps its
        notes for the next (tried again after a wait, growing to ``RETRY[1]``),
        and subscribers take nothing numbered after the last kept seq: a seq
        given out is one the store keeps, a restart gives it to no other event."""
        self._now = now
        if self._done or self._runs:
            if self._retry_at and time.monotonic() < self._retry_at:
                return
            try:
                self.store.record(self._runs, self._done, core.seq, self._whole)
            except Exception as exc:
                self.errors += 1
                if not self._retry_at:
                    log.error("channel store: seqs up to %d not kept, held back from "
                              "subscribers until they are: %s", core.seq, exc)
                self._wait = min(self._wait * 2, RETRY[1]) if self._retry_at else RETRY[0]
                self._retry_at = time.monotonic() + self._wait
                return
            self._whole, self._runs, self._done = [], [], []
            self._retry_at = 0.0
        core.safe = core.seq

    def trim(self, core: ChannelCore) -> None:
        first = core.first_seq()
        if first > self._trimmed:
            try:
                self.store.trim(first)
            except Exception as exc:        # tried again each sweep: said once a run
                self.errors += 1
                if not self._trim_failing:
                    log.error("channel store: history below seq %d not trimmed (tried "
                              "again): %s", first, exc)
                self._trim_failing = True
                return
            self._trimmed, self._trim_failing = first, False
