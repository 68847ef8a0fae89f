"""Client-Dispatcher-Server: the dispatcher service, network home of the registry.

A ``Dispatcher`` is a peer named ``posa/dispatcher/<node>`` that also answers to
``posa/dispatcher``.  It keeps the name registry (owners, epochs, leases),
tells clients which servers provide a service, pushes every change to the
connections that asked to watch, persists its state to a file if asked, and
forwards lookups it cannot answer to the dispatchers it is federated with.

Its requests, their fields and replies, and the change notices are declared
once in ``posa.naming.protocol`` (``OPS``, also the table in docs/protocol.md);
the dispatcher binds every operation of that table to its ``_op_<name>``
method at construction (a missing one fails there, not at the first request)
and hands each the request's checked fields, so no handler reads the body.

A registration over the wire passes the ``RegistrationGuard``
(``posa.dispatch.guard``: access rules, the reserved ``posa/`` names, quotas);
the dispatcher's own names, ``posa/dispatcher/<node>`` and ``posa/dispatcher``,
are registered in its table directly, so a client that looks the dispatcher up
by name reaches it. ``names`` answers a page at a time (``posa.naming.pages``).
Federation (asking other dispatchers what is not held here) is
``posa.dispatch.federation``; the state file (``--state``: a snapshot and a
journal) is ``posa.dispatch.statefile``.
"""
from __future__ import annotations

import itertools
import logging
import secrets
from collections.abc import Collection, Sequence
from typing import Any

from posa.admission.gatekeeper import Authenticator
from posa.delivery.quick import Packed
from posa.dispatch.federation import MAX_HOPS, Federation
from posa.dispatch.guard import RegistrationGuard
from posa.dispatch.statefile import StateFile
from posa.dispatch.weights import pick as weighted
from posa.errors import NameNotFound, PosaError, Timeout, Unreachable
from posa.naming.pages import PAGE_ENTRIES
from posa.naming.protocol import DISPATCHER, OPS, notice_to_wire, page_to_wire, registration_to_wire
from posa.naming.registration import Registration
from posa.naming.registry import LocalRegistry
from posa.peer import DEFERRED, Peer
from posa.runtime.pools import Pool
from posa.security import Acl, Quotas
from posa.wire.codec import Kind, Message

__all__ = ["Dispatcher", "MAX_HOPS"]

log = logging.getLogger("posa.dispatch.dispatcher")

_LOOKUP = OPS.ops["lookup"]


class Dispatcher:
    """The standalone dispatcher: registry, service lookup, change notices, federation."""

    def __init__(self, listen: str | Sequence[str] = "tcp://127.0.0.1:7000", *,
                 node: str | None = None, peers: Sequence[str] = (),
                 state: str | None = None, lease: float = 10.0,
                 sweep_interval: float = 0.5, authenticator: Authenticator | None = None,
                 acl: Acl | None = None, quotas: Quotas | None = None,
                 reserved_keys: Collection[str] = (), registry: Any = None,
                 **peer_options: Any) -> None:
        self.node = node or secrets.token_hex(4)
        self.instance = secrets.token_hex(8)   # changes on every start: caches use it
        self.state_path = state
        if registry is not None and state is not None:
            raise PosaError("a dispatcher keeps its registry in a state file or in a "
                            "shared store, not both; drop --state or --store")
        # a shared store (a NatsRegistry): several dispatchers serve one registry
        self.shared = registry is not None
        self.registry: Any = registry if registry is not None else LocalRegistry()
        self._state = None if state is None else StateFile(state, self.registry.export_state)
        if self._state is not None:
            self.registry.load(self._state.load())
            self._state.snapshot(first=True)
        self._watchers: dict[Any, Any] = {}    # route key -> (endpoint, route)
        self._rotation: dict[str, itertools.count[int]] = {}
        self.acl = acl
        self.guard = RegistrationGuard(self.registry, quotas or Quotas(), acl=acl,
                                       reserved_keys=reserved_keys)
        self._authenticator = authenticator
        self.stats = {"requests": 0, "federated_lookups": 0}
        self.federation = Federation(self.node, authenticator=authenticator,
                                     reply=lambda msg, body: self.peer.reply(msg, body),
                                     fail=lambda msg, exc: self.peer.reply_error(msg, exc),
                                     stats=self.stats)
        for address in peers:
            self.connect_peer(address)
        self._workers = Pool(4, thread_name_prefix="posa-dispatcher")
        # a lookup on the lean lane (``_quick``), of a table held here; a shared
        # store's answers take a round trip: its lookups go to a worker thread
        self._lookup_packed = None if self.shared else self.registry.lookup_packed
        self._handlers = OPS.bind(self)
        self.peer = Peer(f"{DISPATCHER}/{self.node}", registry=self.registry,
                         listen=listen, lease=lease, aliases=(DISPATCHER,),
                         authenticator=authenticator, **peer_options)
        self.name = self.peer.name
        self._keep_own_name()
        self.registry.watch(self._changed)
        self.peer.serve(self._handle, quick=self._quick)
        self._sweeper = self.peer.reactor.call_every(sweep_interval, self._sweep)

    @property
    def addresses(self) -> tuple[str, ...]:
        return self.peer.addresses

    def __enter__(self) -> Dispatcher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- requests (reactor thread) -----------------------------------------------
    def _handle(self, msg: Message) -> Any:
        if msg.kind != Kind.REQUEST:
            return None
        self.stats["requests"] += 1
        op, fields = OPS.parse(msg.body)    # Rejected, saying what to send, if malformed
        if self.shared and op.name not in ("watch", "ping"):
            # a shared store answers over the network: not on the reactor thread
            self._workers.submit(self._answer, msg, self._handlers[op.name], fields)
            return DEFERRED
        return self._handlers[op.name](msg, fields)

    def _quick(self, msg: Message) -> Any:
        """A stream-less request (a lookup, at once, its answer packed as the
        table keeps it; anything else as ``_handle``)."""
        body = msg.body
        lookup = self._lookup_packed
        if lookup is not None and body.__class__ is dict and body.get("op") == "lookup":
            self.stats["requests"] += 1
            name = body.get("name")
            if name.__class__ is not str or len(body) != 2:     # more than op and name
                name = _LOOKUP.parse("dispatcher", body)["name"]    # or Rejected
            try:                            # _op_lookup, inline
                return Packed(lookup(name))
            except NameNotFound:
                return self._federate(msg, "lookup", _LOOKUP.parse("dispatcher", body), name)
        return self._handle(msg)

    def _answer(self, msg: Message, handler: Any, fields: dict[str, Any]) -> None:
        """Run ``handler`` on a worker thread and reply (unless it deferred again)."""
        try:
            body = handler(msg, fields)
        except Timeout as exc:      # the store's: another dispatcher would not do better
            self.peer.reply_error(msg, Unreachable(f"the dispatcher's store did not answer: "
                                                   f"{exc}"))
            return
        except Exception as exc:    # the requester raises it
            self.peer.reply_error(msg, exc)
            return
        if body is not DEFERRED:
            self.peer.reply(msg, body)

    def _op_register(self, msg: Message, fields: dict[str, Any]) -> Any:
        registration = self.guard.register(msg, fields)  # rules and quotas first
        self._commit()
        return registration_to_wire(registration)

    def _op_renew(self, msg: Message, fields: dict[str, Any]) -> Any:
        return registration_to_wire(self.registry.renew(
            fields["name"], credential=fields["credential"]))

    def _op_unregister(self, msg: Message, fields: dict[str, Any]) -> Any:
        self.registry.unregister(fields["name"], credential=fields["credential"])
        self._commit()
        return None

    def _op_lookup(self, msg: Message, fields: dict[str, Any]) -> Any:
        try:
            return registration_to_wire(self.registry.lookup(fields["name"]))
        except NameNotFound:
            return self._federate(msg, "lookup", fields, fields["name"])

    def _op_names(self, msg: Message, fields: dict[str, Any]) -> Any:
        if self.node in fields["via"]:
            return page_to_wire([], None)   # the dispatcher that passed here has these
        limit = min(fields["limit"], PAGE_ENTRIES)
        found, cursor = self.registry.page(fields["pattern"], fields["after"], limit=limit)
        here = [registration_to_wire(r) for r in found]
        if not self.federation.forwards(fields):
            return page_to_wire(here, cursor)
        forwarded = OPS.request("names", **self.federation.forwarded(dict(fields,
                                                                          limit=limit)))
        self._workers.submit(self.federation.gather_page, msg, forwarded, here, cursor)
        return DEFERRED

    def _op_pick(self, msg: Message, fields: dict[str, Any]) -> Any:
        service, exclude = fields["service"], set(fields["exclude"])
        servers = [r for r in self._servers(service) if r.name not in exclude]
        if not servers:
            try:
                return self._federate(msg, "pick", fields, service)
            except NameNotFound:
                raise NameNotFound(
                    f"no live server provides {service!r}"
                    + (" besides the ones that failed" if exclude else "")
                    + "; start one with posa.Server, or check its dispatcher") from None
        turn = next(self._rotation.setdefault(service, itertools.count()))
        return registration_to_wire(weighted(servers, turn))    # w turns for weight w

    def _op_services(self, msg: Message, fields: dict[str, Any]) -> Any:
        servers, cursor = self.registry.page("**", fields["after"], keep=_serves)
        services: dict[str, list[str]] = {}
        for r in servers:
            services.setdefault(r.meta["service"], []).append(r.name)
        return {"services": services, "next": cursor}

    def _op_watch(self, msg: Message, fields: dict[str, Any]) -> Any:
        endpoint, route = msg.route
        self._watchers[(id(endpoint), route)] = (endpoint, route)
        return {"instance": self.instance}

    def _op_ping(self, msg: Message, fields: dict[str, Any]) -> Any:
        return {"instance": self.instance, "node": self.node}

    def _servers(self, service: str) -> list[Registration]:
        prefix = service.rstrip("/")
        return [r for r in self.registry.names(f"{prefix}/**")
                if r.meta.get("service") == service]

    # -- own names, change notices, expiry, persistence ----------------------------
    def _keep_own_name(self) -> None:
        """Hold ``posa/dispatcher`` in this table, at this dispatcher's addresses (a
        reserved name: no client may take it); renewed at every sweep. In a shared
        store one of its dispatchers holds it, another once that one's lease ran out."""
        credential = self.peer.credential
        try:
            try:
                self.registry.renew(DISPATCHER, credential=credential)
            except NameNotFound:
                self.registry.register(DISPATCHER, self.peer.addresses,
                                       credential=credential, lease=self.peer.lease)
        except PosaError:
            if not self.shared:
                raise
            # another dispatcher of the store holds it, or the store is out of reach

    def _changed(self, name: str, registration: Registration | None) -> None:
        self.guard.changed(name, registration)
        self._record(name)
        if not self._watchers:
            return
        frame = self.peer.codec.pack(Kind.NOTIFY, 0, 0, self.peer.name, "", 0, {},
                                     notice_to_wire(name, registration))
        if self._authenticator is not None:
            frame = self._authenticator.seal(frame)
        self.peer.reactor.call_soon(self._notify, frame)

    def _notify(self, frame: bytes) -> None:
        for key, (endpoint, route) in list(self._watchers.items()):
            try:
                endpoint.listener.send(route, frame)
            except PosaError:
                del self._watchers[key]     # that watcher's connection is gone

    def _sweep(self) -> None:
        if self.shared:     # a round trip to the store: off the reactor thread
            self._workers.submit(self._keep_own_name)
            return
        self.registry.expire()
        self._keep_own_name()
        if self._state is not None:
            self._state.commit()
            if self._state.due:
                self._state.snapshot()

    # the state file (posa.dispatch.statefile): each change recorded, and committed
    # to the journal before a register/unregister is answered
    def _record(self, name: str) -> None:
        if self._state is not None:
            self._state.record(name, self.registry.entry_state(name))

    def _commit(self) -> None:
        if self._state is not None:
            self._state.commit()

    # -- federation (worker threads) -------------------------------------------------
    def connect_peer(self, address: str) -> None:
        """Federate with the dispatcher at ``address`` (ask it what is not held here)."""
        self.federation.connect(address)

    def _federate(self, msg: Message, op: str, fields: dict[str, Any], what: str) -> Any:
        """Ask the federated dispatchers for ``what`` (on a worker thread); raise
        NameNotFound if there are none, or if this request already passed here or
        went too far."""
        if not self.federation.forwards(fields):
            raise NameNotFound(f"no live registration for {what!r} here or at the "
                               "federated dispatchers")
        forwarded = OPS.request(op, **self.federation.forwarded(fields))
        self._workers.submit(self.federation.find, msg, forwarded, what)
        return DEFERRED

    @property
    def rejections(self) -> dict[str, int]:
        """Registrations refused by quota or reserved name (``posa_rejections_total``)."""
        return self.guard.rejections

    @property
    def address(self) -> str:
        return self.peer.address

    def stop_accepting(self) -> None:
        """Read no more requests (the first step of a clean shutdown)."""
        self.peer.stop_accepting()

    def in_flight(self) -> int:
        """Requests accepted and not yet answered (federated lookups)."""
        return self.peer.in_flight()

    def close(self) -> None:
        """Stop serving; save the state one last time if a state file is kept.

        In a forked child the dispatcher is the parent's (its names, its state
        file, its reactor and worker threads): closing it there closes the child's
        copies of its descriptors only, with no snapshot and no handing over."""
        self._sweeper.cancel()
        if not self._workers.inherited:
            self._hand_over()
        self.peer.close()
        self._workers.shutdown(wait=False)      # (in a forked child: left alone)
        self.federation.close()

    def _hand_over(self) -> None:
        """The last snapshot; a shared ``posa/dispatcher`` unregistered at once."""
        if self._state is not None:
            self.peer.reactor.call(self._state.snapshot)
        if self.shared:     # hand the shared posa/dispatcher over to another at once
            try:
                self.registry.unregister(DISPATCHER, credential=self.peer.credential)
            except PosaError:
                pass


def _serves(meta: Any) -> bool:
    """True for the meta of a server (``{"service": SERVICE, ...}``)."""
    return isinstance(meta.get("service"), str)
