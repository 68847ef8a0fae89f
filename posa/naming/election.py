"""Leader election with fencing tokens, on any registry that keeps epochs: ``Election``.

    with posa.Election("jobs/scheduler", registry=registry) as term:
        while not term.lost.is_set():
            store.write(data, token=term.token)     # the store keeps a Fence

A candidate leads while it holds the registration of the election's name:
``register`` with a credential of its own (another candidate's is refused while
the lease lives), ``renew`` every third of the lease. Its fencing token is the
registration's epoch: the registry gives a name's next registration the next
epoch and never takes an epoch back (tombstones), so every new leader's token is
greater than every earlier one's, and no two terms share one.

The leader learns it has lost when a renewal is refused (``Unauthorized`` or
``NameNotFound``), or when ``lease × 0.9`` has passed since the last renewal it
sent was answered, counted from the moment it was sent, on the monotonic clock
(which a SIGSTOP does not stop): ``term.lost`` is set and ``on_lost`` called.
The registry frees the name a lease after it received that renewal, later, so a
leader that can still renew is the only one whose ``term.valid()`` is True.
A leader paused past its lease may act on its old token before it notices:
that is what the ``Fence`` a resource keeps is for; it refuses a write whose
token is older than the newest it has seen.

Promises by registry: ``LocalRegistry`` (one process) and ``NatsRegistry`` (a
replicated bucket; hosts' clocks within a fraction of a lease of each other)
give one leader at a time and growing tokens; a ``RegistryClient`` does too, as
long as its dispatcher keeps its epochs (``--state`` or ``--store nats://``: a
dispatcher restarted without either forgets them, and tokens could repeat).
A ``ZeroconfRegistry`` cannot: two partitions of a LAN each elect a leader, and
epochs are the owners' own, so an election on it is refused.
"""
from __future__ import annotations

import os
import secrets
import socket
import threading
import time
from collections.abc import Callable
from types import TracebackType

from posa.errors import NameNotFound, PosaError, Rejected, StaleEpoch, Timeout, Unauthorized
from posa.naming.registration import Registration, Registry

__all__ = ["Election", "Term", "Fence"]

_SAFETY = 0.9           # a term is valid for this fraction of the lease after a renewal


class Term:
    """One leadership: its ``token``, and ``lost`` (set once it ended)."""

    def __init__(self, name: str, token: int, lease: float, sent: float) -> None:
        self.name = name
        self.token = token
        self.lease = lease
        self.lost = threading.Event()
        self._valid_until = sent + lease * _SAFETY

    def valid(self) -> bool:
        """True while this process may still be the leader (checked on the clock,
        not only on ``lost``: a thread paused with the process has not set it yet)."""
        if not self.lost.is_set() and time.monotonic() >= self._valid_until:
            self.lost.set()
        return not self.lost.is_set()

    def __repr__(self) -> str:
        return f"Term({self.name!r}, token={self.token}, valid={self.valid()})"


class Election:
    """Campaign for ``name`` on ``registry``: ``with Election(...) as term`` blocks
    until this candidate leads (``Timeout`` after ``timeout`` s if given), renews
    the lease on a thread, and resigns on exit."""

    def __init__(self, name: str, *, registry: Registry, lease: float = 5.0,
                 timeout: float | None = None, address: str | None = None,
                 on_lost: Callable[[Term], None] | None = None) -> None:
        if type(registry).__module__.startswith("posa.naming.zeroconf"):
            raise Rejected("a ZeroconfRegistry cannot promise a single leader (two parts "
                           "of a split LAN each elect one); elect on a LocalRegistry, a "
                           "dispatcher's RegistryClient or a NatsRegistry")
        self.name, self.registry, self.lease, self.timeout = name, registry, lease, timeout
        self.address = address or f"election://{socket.gethostname()}/{os.getpid()}"
        self.on_lost = on_lost
        self._credential = "election-" + secrets.token_hex(16)
        self._stop = threading.Event()
        self._renewer: threading.Thread | None = None
        self.term: Term | None = None

    def __enter__(self) -> Term:
        return self.campaign()

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.resign()

    def campaign(self) -> Term:
        """Block until this candidate leads; return its term."""
        deadline = None if self.timeout is None else time.monotonic() + self.timeout
        changed = threading.Event()
        unwatch = self.registry.watch(lambda name, _: changed.set() if name == self.name
                                      else None)
        try:
            while True:
                changed.clear()
                sent = time.monotonic()
                try:
                    won = self.registry.register(self.name, [self.address], lease=self.lease,
                                                 credential=self._credential)
                except Unauthorized:
                    changed.wait(self._patience(deadline))
                    continue
                return self._lead(won, sent)
        finally:
            unwatch()

    def _patience(self, deadline: float | None) -> float:
        """How long to wait for the leader's registration to change or lapse."""
        try:
            wait = self.registry.lookup(self.name).expires_in
        except NameNotFound:
            wait = 0.0
        wait = min(max(wait, 0.01), self.lease / 4)
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0:
                raise Timeout(f"not elected leader of {self.name!r} within {self.timeout} s; "
                              "another candidate holds it")
            wait = min(wait, left)
        return wait

    def _lead(self, won: Registration, sent: float) -> Term:
        self.term = term = Term(self.name, won.epoch, self.lease, sent)
        self._stop.clear()
        self._renewer = threading.Thread(target=self._renew, args=(term,), daemon=True,
                                         name=f"posa-election-{self.name}")
        self._renewer.start()
        return term

    def _renew(self, term: Term) -> None:
        while not self._stop.wait(self.lease / 3):
            if not term.valid():
                break                       # paused past the lease: too late to renew
            sent = time.monotonic()
            try:
                renewed = self.registry.renew(self.name, credential=self._credential)
            except (Unauthorized, NameNotFound):
                term.lost.set()
                break
            except PosaError:
                continue                    # unreachable for now: valid() runs out
            if renewed.epoch != term.token:
                term.lost.set()
                break
            term._valid_until = sent + self.lease * _SAFETY
        if self._stop.is_set() and not term.lost.is_set():
            return
        term.lost.set()
        if self.on_lost is not None:
            self.on_lost(term)

    def resign(self) -> None:
        """Stop renewing and free the name now, if this candidate still holds it."""
        self._stop.set()
        if self._renewer is not None and self._renewer is not threading.current_thread():
            self._renewer.join()
        term, self.term = self.term, None
        if term is None:
            return
        term.lost.set()
        try:
            self.registry.unregister(self.name, credential=self._credential)
        except (Unauthorized, PosaError):
            pass                            # another leads already, or unreachable


class Fence:
    """What a resource keeps to refuse writes of deposed leaders: the newest
    token it has seen. Thread-safe."""

    def __init__(self, token: int = 0) -> None:
        self.token = token
        self._lock = threading.Lock()

    def check(self, token: int) -> None:
        """Accept ``token`` (and remember it) unless it is older than the newest
        seen: then ``StaleEpoch``."""
        if isinstance(token, bool) or not isinstance(token, int):
            raise Rejected(f"a fencing token is the int term.token, not {token!r}")
        with self._lock:
            if token < self.token:
                raise StaleEpoch(f"fenced: token {token} is older than {self.token}, the "
                                 "newest leader's; this writer lost its term")
            self.token = token
