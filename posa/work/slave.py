"""The slave of Master-Slave: a named peer that computes subtasks.

A ``Slave`` is a peer whose handler runs ``work(subtask)`` on a worker thread
and replies when it is done; the ``Master`` (``posa.work.masterslave``) finds
slaves by name or group pattern.
"""
from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from posa.errors import PosaError, Rejected
from posa.naming.registration import Registry
from posa.peer import DEFERRED, Peer
from posa.runtime.pools import Pool
from posa.wire.codec import Kind, Message

__all__ = ["Slave"]

log = logging.getLogger("posa.work.masterslave")


# -- slave -------------------------------------------------------------------------
class Slave:
    """A named peer that computes subtasks: ``work(subtask) -> answer``.

    Requests are handled on the reactor thread, which only hands the subtask to
    one of ``threads`` worker threads and replies when it is done (so the
    reactor never blocks). More than ``threads + backlog`` subtasks at once are
    refused with ``Rejected``. An exception in ``work`` reaches the master as
    ``RemoteError`` (or as itself, for a posa error)."""

    def __init__(self, name: str, work: Callable[[Any], Any], *,
                 registry: Registry | None = None, listen: str | None = None,
                 threads: int = 1, backlog: int = 64) -> None:
        self.work = work
        self.limit = threads + backlog
        self.stats = {"done": 0, "failed": 0}
        self._lock = threading.Lock()
        self._active = 0
        self._pool = Pool(threads, thread_name_prefix=f"posa-slave-{name}")
        self.peer = Peer(name, registry=registry, listen=listen)
        self.name = self.peer.name
        self.peer.serve(self._handle)

    def __enter__(self) -> Slave:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _handle(self, msg: Message) -> Any:
        if msg.kind != Kind.REQUEST:
            log.info("slave %s: ignoring a one-way message from %s; send requests",
                     self.name, msg.sender)
            return None
        with self._lock:
            if self._active >= self.limit:
                raise Rejected(f"slave {self.name!r} has {self._active} subtasks in hand "
                               "(its limit); retry later or start more slaves")
            self._active += 1
        self._pool.submit(self._compute, msg)
        return DEFERRED

    def _compute(self, msg: Message) -> None:
        ok = False
        try:
            answer = self.work(msg.body)
            ok = True
        except Exception as exc:
            log.info("slave %s: work raised on a subtask from %s: %r", self.name,
                     msg.sender, exc)
            answer = exc
        finally:
            with self._lock:
                self._active -= 1
                self.stats["done" if ok else "failed"] += 1
        self._answer(msg, answer, ok)

    def _answer(self, msg: Message, value: Any, ok: bool) -> None:
        try:
            if ok:
                self.peer.reply(msg, value)
            else:
                self.peer.reply_error(msg, value)
        except PosaError as exc:     # e.g. an answer that is not msgpack data
            self.peer.reply_error(msg, exc)

    def close(self) -> None:
        """Finish the subtasks in hand, reply to them, close the peer. In a forked
        child the workers (and the pool's lock, which the parent's reactor thread
        handing a subtask may have held at the fork) are the parent's: left alone."""
        self._pool.shutdown(wait=True)
        self.peer.close()
