"""Federation: asking the other dispatchers what this one does not hold.

A lookup (or ``pick``) that misses locally is asked of each federated dispatcher
in turn, with ``via`` (the dispatchers it passed) and ``hops`` so that it never
loops and never travels more than ``MAX_HOPS``; a page of ``names`` is gathered
from all of them and merged with this dispatcher's own page
(``posa.naming.pages.merge``). A federated dispatcher that cannot be asked
(refused, broken, silent within the request's budget) makes the answer
``Unreachable``, naming it, unless another one has the name: an unknown answer
is never a ``NameNotFound``. Everything here runs on worker threads: the
reactor never waits on the network.

A federated dispatcher found dead (its connection refused or lost, or silent for
all of ``FEDERATED_TIMEOUT``) is not asked again by every request, each waiting
for it in turn: ``Standing`` remembers it, and until it answers again it is
reported unreachable at once. Once its back-off has passed (doubling from
``BACKOFF[0]`` to ``BACKOFF[1]`` s while it stays dead) the next request that
would ask it starts a ``ping`` of it on a thread of its own, through a sender of
its own, and answers without waiting for it; the ping that is answered puts it
back in use.
"""
from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from posa import transport
from posa.admission.gatekeeper import Authenticator
from posa.delivery.sender import Sender
from posa.errors import (
    NameNotFound,
    PosaError,
    ProtocolError,
    Timeout,
    TransportError,
    Unreachable,
)
from posa.naming.pages import merge
from posa.naming.protocol import DISPATCHER, OPS, page_to_wire
from posa.naming.registration import resolver
from posa.wire.codec import Message

__all__ = ["Federation", "Standing", "MAX_HOPS", "FEDERATED_TIMEOUT", "BACKOFF"]

log = logging.getLogger("posa.dispatch.dispatcher")

MAX_HOPS = 4
FEDERATED_TIMEOUT = 2.0          # s at most to wait for one federated dispatcher
BACKOFF = (0.25, 4.0)   # s before a dispatcher found dead is pinged: the first, the longest


class Standing:
    """The federated dispatchers found dead, and when each is to be pinged again
    (told the time by its caller; any thread)."""

    def __init__(self, first: float = BACKOFF[0], longest: float = BACKOFF[1]) -> None:
        self._first, self._longest = first, longest
        # address -> (found dead at, the error, the back-off, ping due at, pinging)
        self._down: dict[str, tuple[float, PosaError, float, float, bool]] = {}
        self._lock = threading.Lock()

    def verdict(self, address: str, now: float) -> tuple[PosaError | None, bool]:
        """(the error to report at once for ``address``, or None: ask it; whether
        to ping it now, which is then taken to be under way)."""
        with self._lock:
            down = self._down.get(address)
            if down is None:
                return None, False
            since, error, wait, due, pinging = down
            ping = not pinging and now >= due
            if ping:
                self._down[address] = (since, error, wait, due, True)
        return TransportError(
            f"not asked: it failed {now - since:.1f} s ago ({type(error).__name__}: "
            f"{error}) and is pinged until it answers"), ping

    def failed(self, address: str, error: PosaError, now: float) -> None:
        """``address`` could not be asked (or pinged) at ``now``."""
        with self._lock:
            down = self._down.get(address)
            since, wait = (now, self._first) if down is None else (
                down[0], min(down[2] * 2, self._longest))
            self._down[address] = (since, error, wait, now + wait, False)

    def answered(self, address: str) -> bool:
        """``address`` answered: in use again. True if it was down."""
        with self._lock:
            return self._down.pop(address, None) is not None


class Federation:
    """The dispatchers one dispatcher asks; ``reply``/``fail`` answer a request."""

    def __init__(self, node: str, *, authenticator: Authenticator | None,
                 reply: Callable[[Message, Any], None],
                 fail: Callable[[Message, PosaError], None], stats: dict[str, int]) -> None:
        self.node = node
        self.peers: list[tuple[str, Sender]] = []      # (address, sender)
        self.standing = Standing()
        self._closed = False
        self._authenticator = authenticator
        self._reply, self._fail, self._stats = reply, fail, stats

    def connect(self, address: str) -> None:
        """Federate with the dispatcher at ``address``; ``TransportError`` at once if
        it is not an address a transport serves (not at every lookup it would miss)."""
        try:
            transport.get(transport.split(address)[0])
        except TransportError as exc:
            raise TransportError(f"federated dispatcher {address!r}: {exc}") from None
        self.peers.append((address, self._sender(address)))

    def _sender(self, address: str) -> Sender:
        return Sender(f"{DISPATCHER}/{self.node}", authenticator=self._authenticator,
                      resolve=resolver(None, pins={DISPATCHER: address}))

    def close(self) -> None:
        """Close the senders; no ping starts after (one under way ends within
        ``FEDERATED_TIMEOUT``, its sender closed)."""
        self._closed = True
        for _, sender in self.peers:
            sender.close()

    def forwards(self, fields: dict[str, Any]) -> bool:
        """True if a request with these ``via``/``hops`` is to be asked further."""
        return bool(self.peers) and self.node not in fields["via"] and (
            fields["hops"] < MAX_HOPS)

    def forwarded(self, fields: dict[str, Any]) -> dict[str, Any]:
        """The fields a request travels on with: this dispatcher added to ``via``."""
        return dict(fields, via=list(fields["via"]) + [self.node], hops=fields["hops"] + 1)

    def ask(self, msg: Message, body: dict[str, Any]
            ) -> Iterator[tuple[str, Any, PosaError | None]]:
        """Ask every federated dispatcher ``body`` within the budget of request
        ``msg``: yields (address, the reply's body or None, the error or None);
        a failure is logged here. One known dead (``Standing``) is not asked:
        its error comes at once."""
        ttl = msg.headers.get("ttl")
        budget = (0.8 * ttl / 1000 if isinstance(ttl, int) and ttl > 0
                  else FEDERATED_TIMEOUT * len(self.peers))
        deadline = time.monotonic() + budget
        for address, sender in list(self.peers):
            now = time.monotonic()
            known, ping = self.standing.verdict(address, now)
            if ping:
                self._ping_later(address)
            if known is not None:
                yield address, None, known
                continue
            remaining = min(FEDERATED_TIMEOUT, deadline - now)
            try:
                if remaining <= 0:
                    raise Timeout(f"no time left of the request's {budget:.1f} s")
                reply = sender.request(DISPATCHER, body, timeout=remaining, failfast=True)
            except PosaError as exc:
                if not isinstance(exc, NameNotFound):
                    log.info("federated %s failed at %s: %s", body["op"], address, exc)
                if _dead(exc, remaining):
                    self.standing.failed(address, exc, time.monotonic())
                yield address, None, exc
            else:
                self.standing.answered(address)     # (it may have been found dead meanwhile)
                yield address, reply.body, None

    def _ping_later(self, address: str) -> None:
        """Ping the dispatcher at ``address``, found dead, on a thread of its own."""
        if self._closed:
            return
        threading.Thread(target=self._ping, args=(address,), daemon=True,
                         name=f"posa-federation-ping-{address}").start()

    def _ping(self, address: str) -> None:
        """Ping ``address`` through a sender of its own (closed after: no thread's
        forwarder nor connection outlives the ping), within ``FEDERATED_TIMEOUT``."""
        sender = self._sender(address)
        try:
            sender.request(DISPATCHER, OPS.request("ping"), timeout=FEDERATED_TIMEOUT,
                           failfast=True)
        except PosaError as exc:
            self.standing.failed(address, exc, time.monotonic())
        else:
            if self.standing.answered(address):
                log.info("the federated dispatcher at %s answers again", address)
        finally:
            sender.close()

    def find(self, msg: Message, body: dict[str, Any], what: str) -> None:
        """Answer ``msg`` with the first federated answer to ``body`` (a lookup or
        a pick of ``what``)."""
        self._stats["federated_lookups"] += 1
        unreachable: list[str] = []
        for address, reply, error in self.ask(msg, body):
            if error is None:
                self._reply(msg, reply)
                return
            if not isinstance(error, NameNotFound):
                unreachable.append(_unreachable(address, error))
        if unreachable:
            self._fail(msg, Unreachable(
                f"{what!r} is not held at dispatcher {self.node}, and " + _advice(unreachable)))
        else:
            self._fail(msg, NameNotFound(
                f"no live registration for {what!r} here or at the federated dispatchers"))

    def gather_page(self, msg: Message, body: dict[str, Any], here: list[dict[str, Any]],
                    cursor: str | None) -> None:
        """Answer ``msg`` with this dispatcher's page (``here``, ``cursor``) merged
        with the page every federated dispatcher answers to ``body``."""
        self._stats["federated_lookups"] += 1
        pages = [(here, cursor)]
        unreachable: list[str] = []
        for address, reply, error in self.ask(msg, body):
            if error is None:
                page = reply.get("page") if isinstance(reply, dict) else None
                after = reply.get("next") if isinstance(reply, dict) else None
                if isinstance(page, list) and isinstance(after, (str, type(None))):
                    pages.append((page, after))
                    continue
                error = ProtocolError("its answer is not a page of names")
            unreachable.append(_unreachable(address, error))
        if unreachable:
            self._fail(msg, Unreachable(
                f"the names matching {body['pattern']!r} cannot all be listed: "
                + _advice(unreachable)))
        else:
            self._reply(msg, page_to_wire(*merge(pages, body["limit"])))


def _dead(error: PosaError, waited: float) -> bool:
    """True if ``error`` shows the dispatcher asked dead: its connection refused or
    lost, or no answer in all of ``FEDERATED_TIMEOUT`` (``waited``); not one that
    answered with an error, nor one that could not tell (``Unreachable``)."""
    if isinstance(error, Timeout):
        return waited >= FEDERATED_TIMEOUT
    return isinstance(error, TransportError) and not isinstance(error, Unreachable)


def _advice(unreachable: list[str]) -> str:
    return ("; ".join(unreachable) + " (the answer may be held there); start that "
            "dispatcher again or check the network to it")


def _unreachable(address: str, error: PosaError) -> str:
    """Why the federated dispatcher at ``address`` gave no answer, for an error text."""
    if isinstance(error, Unreachable):
        return f"the dispatcher at {address} could not tell either ({error})"
    return (f"the federated dispatcher at {address} is unreachable "
            f"({type(error).__name__}: {error})")
