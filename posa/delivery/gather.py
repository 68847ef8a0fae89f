"""Scatter/gather: one request to many members, the answers gathered until a
quorum or the deadline.

A ``Gatherer`` sends the same request to every member it is given (each from a
thread of its pool, through that thread's forwarder: the requests are in
flight together) and waits until ``quorum`` members have answered or until
the deadline; members that fail (an error answer, a lost connection) count as
settled, so a gathering whose every member answered or failed ends at once. It
returns a ``Gathered`` in every case: the answers by member, the
members that did not answer (``missing``) and, for those that failed, why
(``errors``). Nothing is raised for a member that is slow, dead or refuses: a
partial result says who. Requests still open when the gathering ends are left
to finish or expire by their deadline (their answers are dropped); members not
yet asked by then are not asked.

Which members: the caller names them (``posa.work.gather`` lists a group's or
a service's from the registry). The asyncio form (``posa.work.gather``) runs the
same requests as tasks of a ``posa.aio.Peer``.
"""
from __future__ import annotations

import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from posa.admission.gatekeeper import Authenticator
from posa.delivery.links import Resolve
from posa.delivery.sender import Sender
from posa.errors import Closed, PosaError, Timeout
from posa.runtime.pools import Pool

__all__ = ["Gathered", "Gatherer", "quorum_of"]


@dataclass(frozen=True)
class Gathered:
    """What a scatter/gather brought back: ``answers`` (member -> reply body),
    ``missing`` (every member without an answer, in the order asked) and
    ``errors`` (member -> why, for the members that failed, refused or were
    still silent at the deadline: ``Timeout``; a member not waited for once
    the quorum was reached has no entry)."""

    members: tuple[str, ...]
    answers: dict[str, Any]
    quorum: int
    errors: dict[str, PosaError] = field(default_factory=dict)
    elapsed: float = 0.0

    @property
    def missing(self) -> list[str]:
        return [m for m in self.members if m not in self.answers]

    @property
    def reached(self) -> bool:
        """Whether at least ``quorum`` members answered."""
        return len(self.answers) >= self.quorum

    @property
    def complete(self) -> bool:
        return not self.missing

    def as_dict(self) -> dict[str, Any]:
        return {"answers": dict(self.answers), "missing": self.missing,
                "errors": {m: f"{type(e).__name__}: {e}" for m, e in self.errors.items()},
                "quorum": self.quorum, "reached": self.reached,
                "elapsed": round(self.elapsed, 6)}


def quorum_of(quorum: int | None, members: int) -> int:
    """``quorum`` checked against the number of members (None: all of them)."""
    if quorum is None:
        return members
    if not 1 <= quorum <= members:
        raise ValueError(f"quorum={quorum} with {members} member(s): give a quorum from 1 "
                         f"to {members}, or none to wait for every member")
    return quorum


class _Round:
    """One gathering's answers under a condition variable."""

    def __init__(self, members: tuple[str, ...], quorum: int) -> None:
        self.members, self.quorum = members, quorum
        self.answers: dict[str, Any] = {}
        self.errors: dict[str, PosaError] = {}
        self.cond = threading.Condition()
        self.over = False

    def settled(self) -> bool:
        return (len(self.answers) >= self.quorum
                or len(self.answers) + len(self.errors) == len(self.members))


class Gatherer:
    """Sends requests to many members at once and gathers the answers; ``threads``
    requests are in flight at a time (the rest wait for a free thread)."""

    def __init__(self, resolve: Resolve, *, authenticator: Authenticator | None = None,
                 threads: int = 16) -> None:
        if threads < 1:
            raise ValueError("threads must be at least 1")
        self.sender = Sender("", resolve=resolve, authenticator=authenticator)
        self._pool = Pool(threads, thread_name_prefix="posa-gather")
        self._rounds: set[_Round] = set()       # gatherings waiting: close wakes them
        self._closed = False

    def gather(self, members: Iterable[str], body: Any = None, *,
               quorum: int | None = None, timeout: float = 5.0,
               headers: dict[str, Any] | None = None) -> Gathered:
        """Ask every member, wait for ``quorum`` answers (default: all) or
        ``timeout`` s; see ``Gathered``. ``Closed`` if the gatherer is closed first."""
        names = tuple(dict.fromkeys(members))
        started = time.monotonic()
        rnd = _Round(names, quorum_of(quorum, len(names)))
        self._rounds.add(rnd)
        try:
            return self._gathered(rnd, body, headers, started, timeout)
        finally:
            self._rounds.discard(rnd)

    def _gathered(self, rnd: _Round, body: Any, headers: dict[str, Any] | None,
                  started: float, timeout: float) -> Gathered:
        names, deadline = rnd.members, started + timeout
        for member in names:
            self._pool.submit(self._ask, rnd, member, body, headers, deadline)
        with rnd.cond:
            while not rnd.settled():
                if self._closed:
                    rnd.over = True
                    raise Closed("the gatherer is closed")
                left = deadline - time.monotonic()
                if left <= 0:
                    for member in names:        # the deadline passed: say so for each
                        if member not in rnd.answers and member not in rnd.errors:
                            rnd.errors[member] = Timeout(f"no answer from {member!r} "
                                                         f"within {timeout:g} s")
                    break
                rnd.cond.wait(left)
            rnd.over = True
            return Gathered(names, dict(rnd.answers), rnd.quorum, dict(rnd.errors),
                            time.monotonic() - started)

    def _ask(self, rnd: _Round, member: str, body: Any,
             headers: dict[str, Any] | None, deadline: float) -> None:
        left = deadline - time.monotonic()
        if rnd.over or left <= 0:
            return                              # the gathering ended before its turn
        try:
            reply = self.sender.request(member, body, timeout=left, headers=headers,
                                        failfast=True)
        except Closed:
            return                              # closed under it: nobody is waiting
        except PosaError as exc:
            if isinstance(exc, Timeout):
                self.sender.forget(member)      # its late reply must not linger
            with rnd.cond:
                rnd.errors[member] = exc
                rnd.cond.notify_all()
            return
        with rnd.cond:
            rnd.answers[member] = reply.body
            rnd.cond.notify_all()

    def close(self) -> None:
        """Stop asking; requests still open end with the sender. Idempotent. In a
        forked child the pool (its threads, its lock) is left to the parent."""
        self._closed = True
        self._pool.shutdown(wait=False, cancel_futures=True)
        self.sender.close()
        for rnd in list(self._rounds):
            with rnd.cond:                      # a gathering waiting: Closed
                rnd.cond.notify_all()

    def __enter__(self) -> Gatherer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
