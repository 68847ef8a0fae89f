"""Where a forwarder's names live and the connections that reach them.

``Links`` keeps one connection per address (several names at one address share
it), resolves a name to its addresses (through the registry's ``resolve``, or an
address pinned by the caller), and connects to the first address that answers.
A connection that failed is dropped, so that the next use connects again.

Every wait here ends by the caller's deadline. A connection blocks a write for
at most ``write_bound`` s (``Options.send_timeout`` capped at the forwarder's
acknowledgement timeout), and a connect waits no longer: a write that cannot go
is treated as a stall (re-resolve, resend) by a loop that checks the deadline
between tries; no write starts after the deadline.

Recovery (``relink``) is the same for every cause (a failed or stuck write, an
overdue acknowledgement, a ``MOVED`` notice): ask the registry again past its
cache, keep the target's address if it is still registered, connect, and resend
the unacknowledged frames; the receiver drops what it already has.  A MOVED
notice is a hint, not a fact: it may have waited in a socket while the sender
was idle and the peer moved on several times since, so the registry's answer
wins when it is as new or newer, and the notice is used only when the registry
has not caught up (or cannot be asked).  Retries back off and end at the
message's deadline with ``Timeout`` naming the target and, if its connection
failed since the last acknowledgement, that failure (a certificate that does
not verify, a refused connection: the retries go on, for a listener put right
in time, but the caller learns why they failed).  First contact
(``open``) retries the same way: a peer that crashed while its lease runs is
still registered, and one that restarts before the deadline is reached.
"""
from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Callable

from posa import transport
from posa.delivery.target import Target
from posa.delivery.waiting import Steps
from posa.errors import Closed, NameNotFound, PosaError, Timeout, TransportError
from posa.transport.base import Connection, Options

__all__ = ["Links", "Resolve", "Retry", "Unanswered"]

Resolve = Callable[[str, bool], tuple[tuple[str, ...], int]]
"""(name, fresh) -> (addresses, epoch); ``fresh`` asks past any cache."""


class Unanswered(TransportError):
    """A ``Resolve`` that must not wait (a delivery thread's) has asked the registry
    elsewhere and has no answer yet: the steps back off and resolve again (a
    driver may resume them as soon as the answer is in). It counts as no try."""

_FAILED = (TransportError, Timeout, NameNotFound)


@functools.lru_cache(maxsize=64)
def _bounded(options: Options, bound: float) -> Options:
    """``options`` (without TLS settings) with writes bounded by ``bound`` s, one
    for equal options in a process (they are frozen): every idle forwarder held a
    copy of its own."""
    return dataclasses.replace(options, send_timeout=bound)


class Retry:
    """Backing off between tries until a deadline: ``pause`` says how long to
    wait before the next try, or raises ``Timeout`` naming ``what`` and the
    last failure. The deadline is the message's, or the end of a group send's
    slice (which gives nothing up): the text says neither."""

    def __init__(self, deadline: float, what: str) -> None:
        self.deadline, self.what, self.delay = deadline, what, 0.005

    def pause(self, last: BaseException | None) -> float:
        """The seconds to back off before the next try (a step yields them)."""
        delay = self.delay
        if time.monotonic() + delay >= self.deadline:
            raise Timeout(f"cannot deliver to {self.what}: {last}; no try got through "
                          "in the time it had") from None
        self.delay = min(delay * 2, 0.2)
        return delay


class Links:
    """Connections by address, and name resolution with pins, for one forwarder."""

    def __init__(self, resolve: Resolve, options: Options, write_bound: float) -> None:
        self._resolve = resolve
        bound = options.send_timeout
        bound = write_bound if bound is None else min(bound, write_bound)
        if options.tls is None:
            self._options = _bounded(options, bound)
        else:   # TLS settings keep sessions: never taken for another's that is equal
            self._options = dataclasses.replace(options, send_timeout=bound)
        self.pins: dict[str, str] = {}
        self.closing = False    # set, from any thread and without its lock, as the
        # forwarder closes: a try backing off (holding that lock or not) ends
        self._conns: dict[str, Connection] = {}
        self._stale: dict[str, None] = {}   # names given up on: resolved afresh next
        # time (a dict: an empty set is 216 bytes, an empty dict 64)
        # name -> (its target, the target's acknowledged count then, the last failure
        # of its link): what given_up names, if that stream acknowledged nothing since
        self._failed: dict[str, tuple[Target, int, BaseException]] = {}

    def resolve(self, name: str, fresh: bool) -> tuple[tuple[str, ...], int]:
        """The addresses of ``name`` and the epoch of its registration (0 if pinned)."""
        pinned = self.pins.get(name)
        if pinned is not None:
            return (pinned,), 0
        return self._resolve(name, fresh)

    def connect(self, address: str) -> Connection:
        """The connection to ``address``, made if there is none."""
        conn = self._conns.get(address)
        if conn is None:
            conn = self._conns[address] = transport.connect(address, self._options)
        return conn

    def connect_any(self, name: str, addresses: tuple[str, ...]) -> tuple[str, Connection]:
        """The first of ``addresses`` that connects, with its connection; raises
        ``TransportError`` naming ``name`` if none does."""
        failures = []
        for address in addresses:
            try:
                return address, self.connect(address)
            except TransportError as exc:
                failures.append(str(exc))
        raise TransportError(f"cannot reach {name!r} at any of its addresses: "
                             + "; ".join(failures or ["it has none"]))

    def open_steps(self, name: str, deadline: float) -> Steps[tuple[str, int, Connection]]:
        """First contact: resolve ``name`` and connect, retrying (re-resolving)
        until ``deadline`` while the peer or the registry cannot be reached, as
        steps that yield each back-off as ``(None, seconds)``. An unknown name
        raises ``NameNotFound`` at once."""
        retry = Retry(deadline, repr(name))
        fresh = self._stale.pop(name, 0) is None
        first = True
        while True:
            self._going_on(name)
            try:
                addresses, epoch = self.resolve(name, fresh)
                address, conn = self.connect_any(name, addresses)
                return address, epoch, conn
            except NameNotFound as exc:     # unknown: at once; gone while we tried:
                if first:                   # it may come back
                    raise
                last: BaseException = exc
            except Unanswered as exc:       # being asked: the answer comes as it would
                last = exc
                yield None, retry.pause(last)
                continue
            except TransportError as exc:   # the peer, or the registry, unreachable
                last = exc
            yield None, retry.pause(last)
            first, fresh = False, True

    def _going_on(self, name: str) -> None:
        """Before each try: ``Closed`` if the forwarder is closing (a try backing off
        would go on until its deadline, and a connection made then would be left)."""
        if self.closing:
            raise Closed(f"the peer or client sending to {name!r} was closed while it "
                         "tried to reach it")

    def given_up(self, target: Target, why: str) -> Timeout:
        """The ``Timeout`` for a target its forwarder dropped with its backlog
        (``why`` it did): none of those messages is sent again (a copy already
        written may still arrive, once, where it was written), and the next
        send to the name resolves it afresh and starts a new stream."""
        self._stale[target.name] = None
        failed = self._failed.pop(target.name, None)
        if failed is not None and failed[0] is target and failed[1] == target.out.acked \
                and str(failed[2]) not in why:
            why = f"{why}; the last error: {failed[2]}"     # nothing acknowledged since
        return Timeout(f"{why}; gave up {len(target.out)} unacknowledged message(s) "
                       f"to {target.name!r}: not known to be delivered, and posa will "
                       "not send them again")

    def current(self, address: str) -> Connection | None:
        """The connection to ``address`` if there is one."""
        return self._conns.get(address)

    def drop(self, address: str) -> None:
        """Close and forget the connection to ``address``."""
        conn = self._conns.pop(address, None)
        if conn is not None:
            try:
                conn.close()
            except PosaError:
                pass

    def close(self) -> None:
        """Close every connection."""
        for address in list(self._conns):
            self.drop(address)

    def relink_steps(self, target: Target, deadline: float, cause: BaseException | None,
                     batch_bytes: int) -> Steps[None]:
        """Re-resolve ``target`` (or follow its MOVED notice), reconnect if it
        must, and resend its backlog, retrying until ``deadline`` (then
        ``Timeout``), as steps that yield each back-off as ``(None, seconds)``.
        A broken connection is replaced; a stuck one is kept."""
        retry = Retry(deadline, repr(target.name))
        hint, target.moved = target.moved, None
        last = cause
        while True:
            self._going_on(target.name)
            try:
                if isinstance(last, TransportError) and not isinstance(last, Unanswered):
                    self._failed[target.name] = (target, target.out.acked, last)
                    self.drop(target.address)
                addresses, epoch = self._where(target, hint)
                address = target.address if target.address in addresses else addresses[0]
                if address != target.address or target.conn is not self.current(address):
                    address, conn = self.connect_any(target.name, (address,) + tuple(
                        a for a in addresses if a != address))
                    target.conn, target.address = conn, address
                target.epoch = max(target.epoch, epoch)
                target.resend(batch_bytes)
                return
            except _FAILED as exc:
                last = exc
            hint = None                 # the notice led nowhere: ask the registry
            yield None, retry.pause(last)

    def _where(self, target: Target, hint: tuple[str, int] | None
               ) -> tuple[tuple[str, ...], int]:
        """Where ``target`` lives now: the registry's answer, or the MOVED notice
        ``hint`` if it is newer than what the registry says (or it cannot say)."""
        if target.pinned:
            return ((hint[0],), hint[1]) if hint else ((target.address,), target.epoch)
        try:
            addresses, epoch = self.resolve(target.name, True)
        except _FAILED:
            if hint is None:
                raise
            return (hint[0],), hint[1]
        if hint is not None and hint[1] > epoch:
            return (hint[0],), hint[1]
        if not addresses:
            raise NameNotFound(f"{target.name!r} is registered with no address")
        return addresses, epoch
