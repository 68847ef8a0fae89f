"""The gateway as a posa peer: one asyncio loop serves HTTP and posa.

``Gateway`` holds what the routes share: the registry (a ``RegistryClient``
of the dispatcher), one ``posa.aio.Peer`` per identity that tokens map to
(named ``IDENTITY/gw-XXXX``, sealed with the key ``--keys`` holds for that
name: the receivers' access rules see the identity), one ``posa.aio.Client``
per identity for services, one ``posa.aio.Publisher`` per channel, the names
it hosts for HTTP programs (``posa.gateway.hosting``), and its counters.
"""
from __future__ import annotations

import asyncio
import os
import secrets
from collections import Counter
from collections.abc import Callable, Mapping
from typing import Any

from posa.aio import Client, Peer, Publisher
from posa.gateway.hosting import Hosting
from posa.gateway.limits import EdgeLimits
from posa.gateway.tokens import ANONYMOUS, Principal, Tokens
from posa.naming.registration import Registry
from posa.security import HmacAuthenticator, from_env

__all__ = ["Gateway"]


class Gateway:
    """The posa side of the gateway. Create it inside the running event loop."""

    def __init__(self, registry: Registry, *, tokens: Tokens | None = None,
                 limits: EdgeLimits | None = None, listen: str = "tcp://127.0.0.1:0",
                 environ: Mapping[str, str] | None = None,
                 dispatcher: str | None = None) -> None:
        self.registry = registry
        self.dispatcher = dispatcher
        self._registries: dict[str, Registry] = {}
        self.tokens = tokens
        self.limits = limits or EdgeLimits()
        self.listen = listen
        self.environ = environ
        self.loop = asyncio.get_running_loop()
        self.counters: Counter[str] = Counter()
        self._peers: dict[str, Peer] = {}
        self._clients: dict[str, Client] = {}
        self._publishers: dict[str, Publisher] = {}
        self._making: dict[str, asyncio.Task[Peer]] = {}
        self.hosting = Hosting(self)
        # /v1/health watches it; made before the loop serves anything, so made here
        name, options = self._peer_options(ANONYMOUS.identity)
        self.peer = self._peers[ANONYMOUS.identity] = Peer(name, **options)

    def principal(self, authorization: str | None) -> Principal:
        """Who asks (``TokenRefused`` for no or a wrong token); anyone without tokens."""
        if self.tokens is None:
            return ANONYMOUS
        return self.tokens.check(authorization)

    def authenticator(self, name: str) -> HmacAuthenticator | None:
        """The authenticator for a peer named ``name``: it seals with the most
        specific key for the name (``--key-id`` is the gateway's own; None: keys off)."""
        environ = dict(os.environ if self.environ is None else self.environ)
        environ.pop("POSA_KEY_ID", None)
        return from_env(name, environ=environ)

    def registry_for(self, name: str) -> Registry:
        """The registry a peer named ``name`` registers through: with keys, a client
        of the dispatcher sealing with that name's key (the dispatcher's register
        rules see it), one per key; without, the gateway's."""
        auth = self.authenticator(name)
        if auth is None or self.dispatcher is None:
            return self.registry
        key = str(auth.key_id)
        registry = self._registries.get(key)
        if registry is None:
            from posa.naming.client import RegistryClient
            registry = RegistryClient(self.dispatcher, authenticator=auth)
            self._registries[key] = registry
        return registry

    def _peer_options(self, identity: str) -> tuple[str, dict[str, Any]]:
        name = f"{identity}/gw-{secrets.token_hex(4)}"
        return name, {"registry": self.registry_for(name), "listen": self.listen,
                      "authenticator": self.authenticator(name)}

    async def peer_for(self, principal: Principal) -> Peer:
        """The peer that acts for ``principal``'s identity, made on first use
        without blocking the loop (one making per identity; others wait for it)."""
        identity = principal.identity
        peer = self._peers.get(identity)
        if peer is not None:
            return peer
        making = self._making.get(identity)
        if making is None:
            making = self._making[identity] = self.loop.create_task(self._make_peer(identity))
        return await asyncio.shield(making)

    async def _make_peer(self, identity: str) -> Peer:
        try:
            name, options = self._peer_options(identity)
            peer = await Peer.open(name, **options)
            self._peers[identity] = peer
            return peer
        finally:
            self._making.pop(identity, None)

    async def client_for(self, principal: Principal) -> Client:
        client = self._clients.get(principal.identity)
        if client is None:
            name = f"{principal.identity}/gw-client"
            client = Client(registry=self.registry_for(name),
                            authenticator=self.authenticator(name))
            self._clients[principal.identity] = client
        return client

    def publisher(self, channel: str) -> Publisher:
        publisher = self._publishers.get(channel)
        if publisher is None:
            publisher = Publisher(channel, registry=self.registry,
                                  authenticator=self.authenticator(self.peer.name))
            self._publishers[channel] = publisher
        return publisher

    async def blocking(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run a call that may wait on the network off the loop (the running one:
        in a forked child, the child's, whose executor is its own)."""
        return await asyncio.get_running_loop().run_in_executor(None, fn, *args)

    async def close(self) -> None:
        """Unregister hosted names, flush publishers, close peers and clients.

        In a forked child (in a loop of the child's) the gateway is the parent's:
        each part closes the child's copies only (``posa.aio.Peer.close``,
        ``posa.aio.Client.close``, the publishers' ``close``), no name is
        unregistered, and nothing runs on the parent's loop or worker threads."""
        await self.hosting.close()
        closing: list[Publisher | Client | Peer] = [
            *self._publishers.values(), *self._clients.values(), *self._peers.values()]
        for closing_one in closing:
            try:
                await closing_one.close()
            except Exception:       # closing goes on
                pass
        self._publishers.clear()
        self._clients.clear()
        self._peers.clear()
        for registry in self._registries.values():
            await self.blocking(registry.close)
        self._registries.clear()
