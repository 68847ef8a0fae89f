"""The addresses a peer receives at: its listeners, as sources of the reactor.

A peer listens on one or more addresses (any transports).  Each listener is a
source of the process's reactor; when it is readable the reactor calls the
peer's ``drain`` for that endpoint.  The set changes in three ways:

- pause / resume: while the inbox is full a listener is not read, so senders'
  windows fill and they wait (flow control instead of unbounded memory);
- close: no listener is read again (a draining peer still reads them: it
  refuses new requests and answers the rest, see ``posa.delivery.intake``);
- replace (a move): new endpoints become current; the old ones keep delivering
  what reaches them for a grace period, then close.

Everything but ``open`` and ``replace`` runs on the reactor thread.
"""
from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from functools import partial

from posa import transport
from posa.delivery.receiver import Endpoint
from posa.errors import InvalidName, PosaError
from posa.runtime.reactor import Reactor
from posa.transport.base import Options

__all__ = ["Listening"]


class Listening:
    """The endpoints of one peer: current, paused, and retiring after a move."""

    def __init__(self, owner: str, reactor: Reactor, options: Options,
                 drain: Callable[[Endpoint], None]) -> None:
        self.owner = owner
        self.reactor = reactor
        self.options = options
        self._drain = drain
        self.current: list[Endpoint] = []
        self.paused: list[Endpoint] = []
        self._retiring: list[Endpoint] = []   # moved away from, closing after a grace
        self.accepting = True

    def open(self, listen: str | Sequence[str]) -> list[Endpoint]:
        """Listen on every address of ``listen`` and read them from the reactor;
        on failure nothing stays open. Raises ``InvalidName`` for no address."""
        opened: list[Endpoint] = []
        try:
            for address in [listen] if isinstance(listen, str) else listen:
                listener = transport.listen(address, self.options)
                endpoint = Endpoint(listener, listener.address)
                opened.append(endpoint)
                self.reactor.add_source(listener, partial(self._drain, endpoint))
        except BaseException:
            self.close(opened)
            raise
        if not opened:
            raise InvalidName(f"peer {self.owner!r} needs at least one address to listen on")
        return opened

    def close(self, endpoints: Sequence[Endpoint], wait: float = 10.0) -> float:
        """Stop reading these endpoints and close their listeners, waiting at most
        ``wait`` s in all for the reactor to stop reading them (a reactor held by a
        handler stops when it is let go). Returns what is left of ``wait``."""
        for endpoint in endpoints:
            start = time.monotonic()
            try:
                self.reactor.remove_source(endpoint.listener, timeout=wait)
            except PosaError:
                pass
            wait = max(wait - (time.monotonic() - start), 0.0)
            if endpoint in self.paused:
                self.paused.remove(endpoint)
            endpoint.listener.close()
        return wait

    def pause(self, endpoint: Endpoint, low: Callable[[], bool] | None = None) -> None:
        """Read ``endpoint`` no more until ``resume``; with ``low``, read it again
        after this turn if ``low()`` then: a reader that took the inbox below half
        before the pause was made did not see it, and would not resume it."""
        if endpoint not in self.paused:
            self.paused.append(endpoint)
            self.reactor.remove_source(endpoint.listener)
            if low is not None:
                self.reactor.call_soon(self.resume_soon, low)

    def resume_soon(self, low: Callable[[], bool]) -> None:
        """(any thread) Have the reactor read the paused endpoints again if
        ``low()``: the inbox was taken below half."""
        if self.paused and low():
            self.reactor.call_soon(self.resume)

    def resume(self) -> None:
        """Read the paused endpoints again (unless no longer accepting)."""
        paused, self.paused = self.paused, []
        for endpoint in paused:
            if self.accepting:
                self.reactor.add_source(endpoint.listener, partial(self._drain, endpoint))

    def replace(self, new: list[Endpoint], grace: float) -> list[Endpoint]:
        """Make ``new`` current; the old endpoints close ``grace`` s from now.
        Returns the old ones."""
        old, self.current = self.current, new
        for endpoint in old:
            self._retiring.append(endpoint)
            self.reactor.call_later(grace, partial(self._retire, endpoint))
        return old

    def _retire(self, endpoint: Endpoint) -> None:
        try:
            self._retiring.remove(endpoint)     # (one step: close_all may race it)
        except ValueError:
            return
        self.close([endpoint])

    def close_all(self, wait: float = 10.0) -> None:
        """Close every endpoint, current and retiring (not on the reactor thread),
        waiting at most ``wait`` s in all for the reactor."""
        self.accepting = False
        wait = self.close(self.current, wait)
        for endpoint in list(self._retiring):
            wait = self.close([endpoint], wait)     # (closed, then forgotten: an
            try:                                    # interrupted close_all ends it)
                self._retiring.remove(endpoint)
            except ValueError:
                pass                                # (the reactor retired it meanwhile)

    def rejections(self) -> dict[str, int]:
        """Connections the current listeners dropped, by cause (garbage, oversize ...)."""
        counts: dict[str, int] = {}
        for endpoint in self.current:
            for cause, count in endpoint.listener.rejections.items():
                counts[cause] = counts.get(cause, 0) + count
        return counts
