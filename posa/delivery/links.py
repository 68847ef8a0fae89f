"""Where a forwarder's names live and the connections that reach them.

``Links`` keeps one connection per address (several names at one address share
it), resolves a name to its addresses (through the registry's ``resolve``, or an
address pinned by the caller), and connects to the first address that answers.
A connection that failed is dropped, so that the next use connects again.

Recovery (``relink``) is the same for every cause (a failed send, an overdue
acknowledgement): ask the registry again past its cache, keep the target's
address if it is still registered, connect, and resend the unacknowledged
frames; the receiver drops what it already has.  Retries back off and end at
the message's deadline with an error that names the target.  A MOVED notice
(``switch``) needs no registry: it names the new address and epoch.
"""
from __future__ import annotations

import time
from collections.abc import Callable

from posa import transport
from posa.delivery.target import Target
from posa.errors import NameNotFound, PosaError, Timeout, TransportError
from posa.transport.base import Connection, Options

__all__ = ["Links", "Resolve"]

Resolve = Callable[[str, bool], tuple[tuple[str, ...], int]]
"""(name, fresh) -> (addresses, epoch); ``fresh`` asks past any cache."""


class Links:
    """Connections by address, and name resolution with pins, for one forwarder."""

    def __init__(self, resolve: Resolve, options: Options) -> None:
        self._resolve = resolve
        self._options = options
        self.pins: dict[str, str] = {}
        self._conns: dict[str, Connection] = {}

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

    def switch(self, target: Target, address: str, epoch: int, batch_bytes: int) -> None:
        """Point ``target`` at a new address and send its backlog there."""
        target.conn = self.connect(address)
        target.address = address
        target.epoch = epoch
        target.resend(batch_bytes)

    def relink(self, target: Target, deadline: float, cause: BaseException | None,
               batch_bytes: int) -> None:
        """Re-resolve ``target``, reconnect if it must, and resend its backlog,
        retrying until ``deadline`` (then ``Timeout``)."""
        delay = 0.005
        last: BaseException | None = cause
        while True:
            try:
                if cause is not None or last is not None:
                    self.drop(target.address)
                addresses: tuple[str, ...]
                if target.pinned:
                    addresses, epoch = (target.address,), target.epoch
                else:
                    addresses, epoch = self.resolve(target.name, True)
                address = target.address if target.address in addresses else addresses[0]
                if address != target.address or target.conn is not self.current(address):
                    address, conn = self.connect_any(target.name, (address,) + tuple(
                        a for a in addresses if a != address))
                    target.conn, target.address = conn, address
                target.epoch = max(target.epoch, epoch)
                target.resend(batch_bytes)
                return
            except (TransportError, Timeout, NameNotFound) as exc:
                last = exc
                cause = exc
            if time.monotonic() + delay >= deadline:
                raise Timeout(f"cannot deliver to {target.name!r}: {last}; gave up at the "
                              "message's deadline") from None
            time.sleep(delay)  # back off before asking the registry again
            delay = min(delay * 2, 0.2)
