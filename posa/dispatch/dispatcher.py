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

Federation: a lookup that misses locally is asked of each federated dispatcher
in turn, with ``via`` (the dispatchers it passed) and ``hops`` so that it never
loops and never travels more than ``MAX_HOPS``; ``names`` gathers from all of
them the same way.  A federated dispatcher that cannot be asked (refused, broken,
silent within the request's budget) makes the answer ``Unreachable``, naming it,
unless another one has the name: an unknown answer is never a ``NameNotFound``.
That runs on a worker thread: the reactor never waits on the network.
"""
from __future__ import annotations

import itertools
import logging
import os
import secrets
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import msgpack

from posa.admission.acl import peer_identity
from posa.admission.gatekeeper import Authenticator
from posa.delivery.sender import Sender
from posa.errors import NameNotFound, PosaError, Timeout, Unreachable
from posa.naming.protocol import DISPATCHER, OPS, notice_to_wire, registration_to_wire
from posa.naming.registration import Registration, resolver
from posa.naming.registry import LocalRegistry
from posa.naming.table import RegistryTable
from posa.peer import DEFERRED, Peer
from posa.security import Acl, authenticated_key
from posa.wire.codec import Kind, Message

__all__ = ["Dispatcher", "MAX_HOPS"]

log = logging.getLogger("posa.dispatch.dispatcher")

MAX_HOPS = 4
FEDERATED_TIMEOUT = 2.0          # s at most to wait for one federated dispatcher
JOURNAL_COMPACT_AFTER = 10_000   # journal records folded into a new snapshot


class Dispatcher:
    """The standalone dispatcher: registry, service lookup, change notices, federation."""

    def __init__(self, listen: str | Sequence[str] = "tcp://127.0.0.1:7000", *,
                 node: str | None = None, peers: Sequence[str] = (),
                 state: str | None = None, lease: float = 10.0,
                 sweep_interval: float = 0.5, authenticator: Authenticator | None = None,
                 acl: Acl | None = None, **peer_options: Any) -> None:
        self.node = node or secrets.token_hex(4)
        self.instance = secrets.token_hex(8)   # changes on every start: caches use it
        self.state_path = state
        self.registry = LocalRegistry()
        self._pending: list[dict[str, Any]] = []
        self._journaled = 0
        if state is not None:
            self._load_state(state)
        self._watchers: dict[Any, Any] = {}    # route key -> (endpoint, route)
        self._rotation: dict[str, itertools.count[int]] = {}
        self.acl = acl
        self._authenticator = authenticator
        self._federation: list[tuple[str, Sender]] = []    # (address, sender)
        for address in peers:
            self.connect_peer(address)
        self._workers = ThreadPoolExecutor(4, thread_name_prefix="posa-dispatcher")
        self.stats = {"requests": 0, "federated_lookups": 0}
        self._handlers = OPS.bind(self)
        self.peer = Peer(f"{DISPATCHER}/{self.node}", registry=self.registry,
                         listen=listen, lease=lease, aliases=(DISPATCHER,),
                         authenticator=authenticator, **peer_options)
        self.name = self.peer.name
        self.registry.watch(self._changed)
        self.peer.serve(self._handle)
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
        return self._handlers[op.name](msg, fields)

    def _op_register(self, msg: Message, fields: dict[str, Any]) -> Any:
        name = fields["name"]
        if self.acl is not None:
            self.acl.check_register(name, authenticated_key(msg), peer_identity(msg))
        registration = self.registry.register(
            name, fields["addresses"], credential=fields["credential"],
            epoch=fields["epoch"], lease=fields["lease"], meta=fields["meta"])
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
        via, hops = list(fields["via"]), fields["hops"]
        if self.node in via:
            return []           # the dispatcher that passed here counts these names
        here = [registration_to_wire(r) for r in self.registry.names(fields["pattern"])]
        if not self._federation or hops >= MAX_HOPS:
            return here
        forwarded = OPS.request("names", **dict(fields, via=via + [self.node],
                                                hops=hops + 1))
        self._workers.submit(self._gather_names, msg, forwarded, here)
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
        # weighted round robin: a server of weight w gets w turns in a cycle
        slots = [r for r in servers for _ in range(max(1, int(r.meta.get("weight", 1))))]
        return registration_to_wire(slots[turn % len(slots)])

    def _op_services(self, msg: Message, fields: dict[str, Any]) -> Any:
        services: dict[str, list[str]] = {}
        for r in self.registry.names("**"):
            service = r.meta.get("service")
            if isinstance(service, str):
                services.setdefault(service, []).append(r.name)
        return services

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

    # -- change notices, expiry, persistence ---------------------------------------
    def _changed(self, name: str, registration: Registration | None) -> None:
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
        self.registry.expire()
        if self.state_path is not None:
            self._commit()
            if self._journaled > JOURNAL_COMPACT_AFTER:
                self._snapshot()

    # State file: a snapshot (replaced atomically) plus a journal of the changes
    # since, appended and fsynced before a register/unregister is answered, so an
    # acknowledged registration survives a crash; the journal is folded into a
    # new snapshot when it grows.
    def _record(self, name: str) -> None:
        if self.state_path is not None:
            self._pending.append({"name": name, "entry": self.registry.entry_state(name)})

    def _commit(self) -> None:
        if not self._pending:
            return
        records, self._pending = self._pending, []
        data = b"".join(msgpack.packb(record) for record in records)
        try:
            with open(f"{self.state_path}.journal", "ab") as journal:
                journal.write(data)
                journal.flush()
                os.fsync(journal.fileno())
        except OSError as exc:
            log.error("cannot append to the journal of %s: %s", self.state_path, exc)
            return
        self._journaled += len(records)

    def _snapshot(self) -> None:
        assert self.state_path is not None
        path = self.state_path
        data = msgpack.packb({"saved_at": time.time(), "table": self.registry.export_state()})
        tmp = f"{path}.tmp-{os.getpid()}"
        try:
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)   # atomic: a reader sees the old or the new state
            with open(f"{path}.journal", "wb"):
                pass                # the snapshot holds everything the journal did
        except OSError as exc:
            log.error("cannot write the state file %s: %s", path, exc)
            return
        self._journaled = 0

    def _load_state(self, path: str) -> None:
        state: dict[str, Any] = {"version": 1, "entries": [], "epochs": {}}
        try:
            try:
                with open(path, "rb") as f:
                    state = msgpack.unpackb(f.read(), raw=False)["table"]
            except FileNotFoundError:
                pass
            entries = {entry["name"]: entry for entry in state["entries"]}
            try:
                with open(f"{path}.journal", "rb") as f:
                    unpacker = msgpack.Unpacker(f, raw=False)
                    for record in unpacker:
                        if record["entry"] is None:
                            gone = entries.pop(record["name"], None)
                            if gone is not None:
                                state["epochs"][record["name"]] = gone["epoch"]
                        else:
                            entries[record["name"]] = record["entry"]
            except FileNotFoundError:
                pass
            state["entries"] = list(entries.values())
        except (OSError, ValueError, KeyError, TypeError, msgpack.UnpackException) as exc:
            raise PosaError(f"cannot read the dispatcher state {path}: {exc}; move it "
                            "and its .journal away to start empty") from None
        # owners could not renew while the dispatcher was down: every restored
        # registration gets one whole lease from now to be renewed, or it expires
        for entry in state["entries"]:
            entry["expires_in"] = entry["lease"]
        self.registry.load(RegistryTable.import_state(state))
        self._snapshot()

    # -- federation (worker threads) -------------------------------------------------
    def connect_peer(self, address: str) -> None:
        """Federate with the dispatcher at ``address`` (ask it what is not held here)."""
        self._federation.append((address, Sender(
            f"{DISPATCHER}/{self.node}", resolve=resolver(None, pins={DISPATCHER: address}),
            authenticator=self._authenticator)))

    def _federate(self, msg: Message, op: str, fields: dict[str, Any], what: str) -> Any:
        """Ask the federated dispatchers for ``what`` (on a worker thread); raise
        NameNotFound if there are none, or if this request already passed here or
        went too far."""
        via, hops = list(fields["via"]), fields["hops"]
        if not self._federation or self.node in via or hops >= MAX_HOPS:
            raise NameNotFound(f"no live registration for {what!r} here or at the "
                               "federated dispatchers")
        forwarded = OPS.request(op, **dict(fields, via=via + [self.node], hops=hops + 1))
        self._workers.submit(self._ask_federation, msg, forwarded, what)
        return DEFERRED

    def _ask(self, msg: Message, body: dict[str, Any]
             ) -> Iterator[tuple[str, Any, PosaError | None]]:
        """Ask every federated dispatcher ``body`` within the budget of request
        ``msg``: yields (address, the reply's body or None, the error or None);
        a failure is logged here."""
        ttl = msg.headers.get("ttl")
        budget = (0.8 * ttl / 1000 if isinstance(ttl, int) and ttl > 0
                  else FEDERATED_TIMEOUT * len(self._federation))
        deadline = time.monotonic() + budget
        for address, sender in list(self._federation):
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

    def _ask_federation(self, msg: Message, body: dict[str, Any], what: str) -> None:
        self.stats["federated_lookups"] += 1
        unreachable: list[str] = []
        for address, reply, error in self._ask(msg, body):
            if error is None:
                self.peer.reply(msg, reply)
                return
            if not isinstance(error, NameNotFound):
                unreachable.append(_unreachable(address, error))
        if unreachable:
            self.peer.reply_error(msg, Unreachable(
                f"{what!r} is not held at dispatcher {self.node}, and "
                + _advice(unreachable)))
        else:
            self.peer.reply_error(msg, NameNotFound(
                f"no live registration for {what!r} here or at the federated dispatchers"))

    def _gather_names(self, msg: Message, body: dict[str, Any],
                      here: list[dict[str, Any]]) -> None:
        self.stats["federated_lookups"] += 1
        found = {r["name"]: r for r in here}
        unreachable: list[str] = []
        for address, reply, error in self._ask(msg, body):
            if error is not None:
                unreachable.append(_unreachable(address, error))
                continue
            for registration in reply if isinstance(reply, list) else ():
                if isinstance(registration, dict) and isinstance(registration.get("name"),
                                                                 str):
                    found.setdefault(registration["name"], registration)
        if unreachable:
            self.peer.reply_error(msg, Unreachable(
                f"the names matching {body['pattern']!r} cannot all be listed: "
                + _advice(unreachable)))
        else:
            self.peer.reply(msg, [found[name] for name in sorted(found)])

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
        """Stop serving; save the state one last time if a state file is kept."""
        self._sweeper.cancel()
        if self.state_path is not None:
            self.peer.reactor.call(self._snapshot)
        self.peer.close()
        self._workers.shutdown(wait=False)
        for _, sender in self._federation:
            sender.close()


def _advice(unreachable: list[str]) -> str:
    return ("; ".join(unreachable) + " (the answer may be held there); start that "
            "dispatcher again or check the network to it")


def _unreachable(address: str, error: PosaError) -> str:
    """Why the federated dispatcher at ``address`` gave no answer, for an error text."""
    if isinstance(error, Unreachable):
        return f"the dispatcher at {address} could not tell either ({error})"
    return (f"the federated dispatcher at {address} is unreachable "
            f"({type(error).__name__}: {error})")
