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
"""
from __future__ import annotations

import logging
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
from posa.naming.protocol import DISPATCHER, page_to_wire
from posa.naming.registration import resolver
from posa.wire.codec import Message

__all__ = ["Federation", "MAX_HOPS", "FEDERATED_TIMEOUT"]

log = logging.getLogger("posa.dispatch.dispatcher")

MAX_HOPS = 4
FEDERATED_TIMEOUT = 2.0          # s at most to wait for one federated dispatcher


class Federation:
    """The dispatchers one dispatcher asks; ``reply``/``fail`` answer a request."""

    def __init__(self, node: str, *, authenticator: Authenticator | None,
                 reply: Callable[[Message, Any], None],
                 fail: Callable[[Message, PosaError], None], stats: dict[str, int]) -> None:
        self.node = node
        self.peers: list[tuple[str, Sender]] = []      # (address, sender)
        self._authenticator = authenticator
        self._reply, self._fail, self._stats = reply, fail, stats

    def connect(self, address: str) -> None:
        """Federate with the dispatcher at ``address``; ``TransportError`` at once if
        it is not an address a transport serves (not at every lookup it would miss)."""
        try:
            transport.get(transport.split(address)[0])
        except TransportError as exc:
            raise TransportError(f"federated dispatcher {address!r}: {exc}") from None
        self.peers.append((address, Sender(
            f"{DISPATCHER}/{self.node}", resolve=resolver(None, pins={DISPATCHER: address}),
            authenticator=self._authenticator)))

    def close(self) -> None:
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
        a failure is logged here."""
        ttl = msg.headers.get("ttl")
        budget = (0.8 * ttl / 1000 if isinstance(ttl, int) and ttl > 0
                  else FEDERATED_TIMEOUT * len(self.peers))
        deadline = time.monotonic() + budget
        for address, sender in list(self.peers):
            remaining = min(FEDERATED_TIMEOUT, deadline - time.monotonic())
            try:
                if remaining <= 0:
                    raise Timeout(f"no time left of the request's {budget:.1f} s")
                yield address, sender.request(DISPATCHER, body, timeout=remaining,
                                              failfast=True).body, None
            except PosaError as exc:
                if not isinstance(exc, NameNotFound):
                    log.info("federated %s failed at %s: %s", body["op"], address, exc)
                yield address, None, exc

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


def _advice(unreachable: list[str]) -> str:
    return ("; ".join(unreachable) + " (the answer may be held there); start that "
            "dispatcher again or check the network to it")


def _unreachable(address: str, error: PosaError) -> str:
    """Why the federated dispatcher at ``address`` gave no answer, for an error text."""
    if isinstance(error, Unreachable):
        return f"the dispatcher at {address} could not tell either ({error})"
    return (f"the federated dispatcher at {address} is unreachable "
            f"({type(error).__name__}: {error})")
