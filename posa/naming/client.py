"""The registry of a dispatcher service, reached over the network.

``RegistryClient`` implements the ``Registry`` interface by asking a
``posa dispatcher`` (given several, the first that answers: see the class); it
keeps a local cache so a repeated lookup costs a dict read, not a round trip.
The cache is kept true by the dispatcher's change notices: a watch connection,
driven by the process's reactor (never blocking it), receives a NOTIFY for
every change.  A dispatcher that stops or restarts closes that connection: the
cache is dropped at once and the watch made again within moments (retried at
0.1, 0.2, 0.4 ... s, then every second; a ``watch()`` call tries at once).  A
ping every ``ping_interval`` seconds (10 by default) only catches what closes
no connection: a dispatcher silent for three pings, or answering as another
instance; either way the cache is dropped and the watch made again.  Cache
entries also expire with their lease, so staleness is bounded even if notices
are lost.  Without a cache the watch connection is made by the first
``watch()``, which returns once the dispatcher has taken the subscription, so
every change made after it returns is reported.  An address on a wildcard host
is registered as the interfaces' addresses (``posa.naming.hosts``).
"""
from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, TypeVar

import msgpack

from posa.admission.gatekeeper import Authenticator
from posa.delivery.forwarder import Forwarder
from posa.delivery.sender import Sender
from posa.errors import PosaError, ProtocolError, Rejected, Timeout, TransportError, Unreachable
from posa.naming import shared
from posa.naming.hosts import dispatcher_addresses, reachable
from posa.naming.lookups import Lines
from posa.naming.pages import PAGE_ENTRIES, walk
from posa.naming.protocol import (
    DISPATCHER,
    OPS,
    notice_from_wire,
    page_from_wire,
    registration_from_wire,
)
from posa.naming.registration import DEFAULT_LEASE, Registration, check_addresses
from posa.runtime import reactor as reactor_module
from posa.runtime.reactor import Reactor
from posa.transport.base import Options
from posa.wire.codec import Codec, Kind, Message

__all__ = ["RegistryClient"]

PING_INTERVAL = 10.0    # s between liveness pings of the watch connection
RETRY_FIRST = 0.1       # s before the first attempt to make a lost watch again
RETRY_MAX = 1.0         # s between attempts at most, while the dispatcher is away
_T = TypeVar("_T")


def _check_meta(name: str, meta: Mapping[str, Any]) -> None:
    """``Rejected`` (as a registry says it) for meta that is not msgpack data."""
    try:
        msgpack.packb(dict(meta))
    except (TypeError, ValueError, OverflowError) as exc:
        raise Rejected(f"meta for {name!r} is not msgpack data ({exc}); use dicts, "
                       "lists, str, bytes, numbers, bools and None") from None


class RegistryClient:
    """``Registry`` backed by a ``posa dispatcher`` at ``address``; given several
    (a list, or comma-separated), by the first that answers, the next when it
    does not answer within ``failover_after`` s (dispatchers sharing a store:
    ``--store nats://…``).
    Thread-safe."""

    def __init__(self, address: str | Sequence[str], *, timeout: float = 5.0, cache: bool = True,
                 ping_interval: float = PING_INTERVAL, reactor: Reactor | None = None,
                 options: Options | None = None, codec: Codec | None = None,
                 authenticator: Authenticator | None = None,
                 failover_after: float = 3.0) -> None:
        self.addresses = dispatcher_addresses(address)
        self.address = self.addresses[0]       # the dispatcher asked now
        self.timeout, self.failover_after = timeout, failover_after
        self.codec = codec or shared.client_codec()     # (made once per process,
        self.options = options or shared.client_options(timeout)    # not per client)
        self._authenticator = authenticator
        self._sender = self._sender_to(self.address)
        self._lines = Lines(codec=self.codec, options=self.options,
                            authenticator=authenticator)    # uncached lookups' own
        self._cache: dict[str, tuple[Registration, float]] = {}
        self._lock = threading.Lock()
        self._watchers: dict[int, Callable[[str, Registration | None], None]] = {}
        self._next_watcher, self._closed, self._pid = 0, False, os.getpid()
        self._reactor = reactor or reactor_module.default()
        self._watch: Forwarder | None = None
        self._instance: str | None = None
        self._taken = False     # the dispatcher answered the watch (shared.wait_taken)
        self._ping_seq = self._silent = 0
        self._caching, self._ping_interval = cache, ping_interval
        self._ticker: Any = None
        self._retry: float | None = None        # the next re-subscribe delay, if one waits
        self._tick_soon = False                 # a tick is queued: none more is
        if cache:
            self._keep_watch()

    def __enter__(self) -> RegistryClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the Registry interface ------------------------------------------------
    def _call(self, op: str, **fields: Any) -> Any:
        """Ask the dispatcher (see ``_failing_over``)."""
        return self._failing_over(lambda sender, _, timeout: sender.request(
            DISPATCHER, OPS.request(op, **fields), timeout=timeout).body)

    def _failing_over(self, ask: Callable[[Sender, str, float], _T]) -> _T:
        """``ask(sender, address, timeout)`` of the dispatcher. With several, one
        that does not answer within ``failover_after`` s is left for the next,
        round and round until ``timeout``. A request repeated so may have been
        done by the first: a register without an epoch may then take two epochs."""
        deadline = time.monotonic() + self.timeout
        single = len(self.addresses) == 1
        for _ in range(1000):
            sender, address = self._sender, self.address
            left = deadline - time.monotonic()
            try:
                return ask(sender, address, self.timeout if single
                           else max(0.01, min(left, self.failover_after)))
            except (Unreachable, ValueError):   # the dispatcher answered that what it
                raise                           # asked is not; or a setting to fix
            except (Timeout, TransportError):
                if self._closed or single or time.monotonic() >= deadline:
                    raise
                self._fail_over(address)
        raise Timeout(f"no dispatcher of {', '.join(self.addresses)} answered")

    def _sender_to(self, address: str) -> Sender:
        return Sender("", resolve=shared.pinned_dispatcher(address),
                      codec=self.codec, options=self.options,
                      authenticator=self._authenticator)

    def _resolve(self, name: str, fresh: bool) -> tuple[tuple[str, ...], int]:
        return shared.pinned_dispatcher(self.address)(name, fresh)

    def _fail_over(self, address: str) -> None:
        """``address`` did not answer: ask the next dispatcher from now on."""
        with self._lock:
            if self.address != address or self._closed or len(self.addresses) == 1:
                return                      # another thread moved on already
            at = self.addresses.index(address)
            self.address = self.addresses[(at + 1) % len(self.addresses)]
            old, self._sender = self._sender, self._sender_to(self.address)
        old.close()
        if self._ticker is not None:
            self._reactor.call_soon(self._drop_watch)   # watch the new one

    def register(self, name: str, addresses: Sequence[str], *, credential: str,
                 epoch: int | None = None, lease: float = DEFAULT_LEASE,
                 meta: Mapping[str, Any] | None = None) -> Registration:
        if meta:
            _check_meta(name, meta)
        registration = registration_from_wire(self._call(   # addresses others can use:
            "register", name=name, addresses=list(reachable(check_addresses(name, addresses))),
            credential=credential,
            epoch=epoch, lease=lease, meta=dict(meta) if meta else None))
        self._remember(registration)
        return registration

    def renew(self, name: str, *, credential: str) -> Registration:
        return registration_from_wire(self._call("renew", name=name, credential=credential))

    def unregister(self, name: str, *, credential: str) -> None:
        self._call("unregister", name=name, credential=credential)
        self.forget(name)

    def lookup(self, name: str) -> Registration:
        cached = self._cache.get(name)
        if cached is not None and cached[1] > time.monotonic():
            return cached[0]
        if len(self.addresses) == 1:    # this thread's line (posa.naming.lookups), at once
            registration = self._lines.line(self.address).lookup(name, self.timeout)
        else:
            registration = self._failing_over(
                lambda _, address, timeout: self._lines.line(address).lookup(name, timeout))
        if self._caching:
            self._remember(registration)
        return registration

    def names(self, pattern: str = "**") -> list[Registration]:
        """Every live registration matching ``pattern``, sorted: the pages, walked."""
        return [r for page in self.pages(pattern) for r in page]

    def page(self, pattern: str = "**", after: str | None = None, *,
             limit: int = PAGE_ENTRIES) -> tuple[list[Registration], str | None]:
        """One page of ``names(pattern)``: the registrations named above the cursor
        ``after`` (None: from the first), and the next page's cursor (None after
        the last). See ``posa.naming.pages`` for what a walk promises."""
        return page_from_wire(self._call("names", pattern=pattern, after=after,
                                         limit=limit))

    def pages(self, pattern: str = "**", *, limit: int = PAGE_ENTRIES
              ) -> Iterator[list[Registration]]:
        """Every page of ``names(pattern)``, first to last, one request each."""
        return walk(lambda after: self.page(pattern, after, limit=limit))

    def pick(self, service: str, *, exclude: Sequence[str] = ()) -> Registration:
        """A live server of ``service``, chosen by the dispatcher (round robin by weight)."""
        return registration_from_wire(self._call("pick", service=service,
                                                 exclude=list(exclude)))

    def services(self) -> dict[str, list[str]]:
        """Every service with its servers' names, read page by page."""
        services: dict[str, list[str]] = {}
        cursor: str | None = None
        while True:
            body = self._call("services", after=cursor)
            if not isinstance(body, dict) or not isinstance(body.get("services"), dict):
                raise ProtocolError("malformed page of services from the dispatcher")
            for service, names in body["services"].items():
                services.setdefault(service, []).extend(names)
            after = body.get("next")
            if after is None:
                return services
            if not isinstance(after, str) or (cursor is not None and after <= cursor):
                raise ProtocolError(f"a page cursor of services went from {cursor!r} to "
                                    f"{after!r}; the dispatcher must move it forward")
            cursor = after

    def watch(self, callback: Callable[[str, Registration | None], None]) -> Callable[[], None]:
        """Call ``callback(name, registration or None)`` (on the reactor thread) for
        every change the dispatcher reports; return a function that unsubscribes. It
        returns once the dispatcher took the subscription (``Timeout`` if not within
        ``timeout``, ``Closed`` if the client is closed first), so later changes are
        reported; on the reactor thread it cannot wait, and the subscription follows."""
        with self._lock:
            key = self._next_watcher
            self._next_watcher += 1
            self._watchers[key] = callback

        def unsubscribe() -> None:
            with self._lock:
                self._watchers.pop(key, None)
        self._keep_watch()
        if not self._reactor.in_reactor_thread() and not shared.wait_taken(
                lambda: self._taken, self.timeout, lambda: self._closed):
            unsubscribe()
            raise Timeout(f"the dispatcher at {self.address} did not take a watch within "
                          f"{self.timeout} s; is it running?")
        return unsubscribe

    def forget(self, name: str) -> None:
        """Drop ``name`` from the cache: the next lookup asks the dispatcher."""
        self._cache.pop(name, None)

    def close(self) -> None:
        here = self._pid == os.getpid()     # (in a forked child the watch, its reactor
        with self._lock if here else threading.Lock():  # and the lock are the parent's)
            if self._closed:
                return
            self._closed = True
        if self._ticker is not None and here:
            self._ticker.cancel()
            self._reactor.call(self._drop_watch)
            shared.notify_taken()           # a watch() waiting to be taken: Closed
        self._sender.close()
        self._lines.close()
        self._cache.clear()

    # -- the cache ---------------------------------------------------------------
    def _remember(self, registration: Registration) -> None:
        if not self._caching or self._instance is None:
            return  # no cache, or no live watch: an entry could go stale unnoticed
        with self._lock:
            old = self._cache.get(registration.name)
            if old is None or old[0].epoch <= registration.epoch:
                self._cache[registration.name] = (
                    registration, time.monotonic() + max(0.0, registration.expires_in))

    def _notified(self, msg: Message) -> None:
        try:
            notice = notice_from_wire(msg.body)
        except ProtocolError:
            self.forget(msg.body["name"])
            return
        if notice is None:
            return
        name, registration = notice
        with self._lock:
            if registration is None:
                self._cache.pop(name, None)
            elif name in self._cache:
                self._cache[name] = (registration,
                                     time.monotonic() + max(0.0, registration.expires_in))
            watchers = list(self._watchers.values())
        for callback in watchers:
            try:
                callback(name, registration)
            except Exception:  # a watcher must not break the cache
                pass

    # -- the watch connection (reactor thread) -------------------------------------
    def _keep_watch(self) -> None:
        """Start keeping the watch connection (once): the cache and watchers need it."""
        with self._lock:
            if self._closed:
                return
            if self._ticker is None:
                self._ticker = self._reactor.call_every(self._ping_interval, self._tick)
            elif self._watch is not None or self._tick_soon:
                return
            self._tick_soon = True
        self._reactor.call_soon(self._tick)     # no live watch: try now

    def _tick(self) -> None:
        """Keep the watch alive: (re)subscribe, ping, notice restarts and silence."""
        self._tick_soon = False
        if self._closed:
            return
        watch = self._watch
        if watch is not None:
            reply = watch.take_reply(DISPATCHER, self._ping_seq)
            instance = reply.body.get("instance") if reply is not None and isinstance(
                reply.body, dict) else None
            if reply is None:
                self._silent += 1
            elif self._instance is not None and instance != self._instance:
                self._drop_watch()          # the dispatcher restarted: nothing cached holds
            else:
                self._silent = 0
            if self._silent >= 3:
                self._drop_watch()
                self._fail_over(self.address)
        if self._watch is None:
            self._subscribe()
        elif self._watch is not None:
            self._ping()

    def _subscribe(self) -> None:
        watch = Forwarder("", resolve=self._resolve, codec=self.codec, options=self.options,
                          on_notify=self._notified, authenticator=self._authenticator)
        try:
            seq = watch.send(DISPATCHER, OPS.request("watch"), kind=Kind.REQUEST,
                             deadline=time.monotonic())
        except (PosaError, OSError):
            watch.close()
            self._fail_over(self.address)
            return  # the dispatcher is not there (yet): the next tick tries again
        self._watch = watch
        self._ping_seq = seq
        self._silent = 0
        self._reactor.add_source(watch.connection(DISPATCHER), lambda: self._drain(watch))
        self._instance = None

    def _ping(self) -> None:
        assert self._watch is not None
        try:
            self._ping_seq = self._watch.send(DISPATCHER, OPS.request("ping"),
                                              kind=Kind.REQUEST, deadline=time.monotonic())
        except (PosaError, OSError):
            self._drop_watch()

    def _drain(self, watch: Forwarder) -> None:
        if watch is not self._watch:
            return
        try:
            watch.poll(DISPATCHER)
        except PosaError:
            self._drop_watch()
            return
        if self._instance is None:
            reply = watch.peek_reply(DISPATCHER, self._ping_seq)
            if reply is not None and isinstance(reply.body, dict):
                self._instance = reply.body.get("instance")
                self._taken = True
                shared.notify_taken()

    def _drop_watch(self) -> None:
        watch, self._watch = self._watch, None
        self._instance = None
        self._taken = False
        with self._lock:
            self._cache.clear()
        if watch is not None:
            self._reactor.remove_source(watch.connection(DISPATCHER))
            watch.close()
            if not self._closed and self._retry is None:
                self._retry = RETRY_FIRST
                self._reactor.call_later(RETRY_FIRST, self._resubscribe)

    def _resubscribe(self) -> None:
        """Make a lost watch again, backing off (0.1, 0.2, ... s, then every second)
        until the dispatcher takes it."""
        delay, self._retry = self._retry, None
        if self._closed or self._watch is not None or delay is None:
            return
        self._subscribe()
        if self._watch is None:
            self._retry = min(delay * 2, RETRY_MAX, self._ping_interval)
            self._reactor.call_later(self._retry, self._resubscribe)
