"""Scatter/gather by name: one request to a group or to a service's servers.

``gather(NAME, body)`` lists the members NAME stands for in the registry — a
group pattern (``calc/*``) is every peer it matches; a service name is every
live server of that service; any other name is that one peer — asks them all
at once (``posa.delivery.gather.Gatherer``) and returns a ``Gathered``: the
answers by member, who did not answer, and why, once ``quorum`` members have
answered or at the deadline. ``gather_async`` does the same from a
``posa.aio.Peer``: one task per member, the requests in flight together on the
event loop (the same steps ``posa.aio`` drives for any request).
"""
from __future__ import annotations

import asyncio
import time
from typing import Any, Protocol

from posa.admission.gatekeeper import Authenticator
from posa.delivery.gather import Gathered, Gatherer, quorum_of
from posa.errors import NameNotFound, PosaError, Timeout
from posa.naming.pages import registrations
from posa.naming.registration import Registry, resolver
from posa.naming.resolve import open_registry
from posa.wire.names import is_pattern

__all__ = ["gather", "gather_async", "members_of", "Gathered"]


def members_of(registry: Registry, name: str) -> list[str]:
    """The peers ``name`` stands for: a pattern's matches, a service's servers, or
    the peer of that name. Raises ``NameNotFound`` when there are none."""
    if is_pattern(name):
        found = [r.name for r in registrations(registry, name)]
    else:
        found = [r.name for r in registrations(registry, f"{name}/**")
                 if r.meta.get("service") == name]
        if not found:
            registry.lookup(name)               # NameNotFound says what is missing
            found = [name]
    if not found:
        raise NameNotFound(f"no peer matches {name!r}: start members under that pattern, "
                           "with the same registry or dispatcher")
    return found


def gather(name: str, body: Any = None, *, registry: Registry | None = None,
           dispatcher: str | None = None, quorum: int | None = None,
           timeout: float = 5.0, authenticator: Authenticator | None = None,
           headers: dict[str, Any] | None = None) -> Gathered:
    """Ask every member ``name`` stands for (``members_of``) and gather their
    answers until ``quorum`` (default: all) answered or ``timeout`` s passed."""
    reg, owned = open_registry(registry, dispatcher)
    try:
        members = members_of(reg, name)
        with Gatherer(resolver(reg), authenticator=authenticator,
                      threads=min(64, len(members))) as gatherer:
            return gatherer.gather(members, body, quorum=quorum, timeout=timeout,
                                   headers=headers)
    finally:
        if owned:
            reg.close()


class AsyncRequester(Protocol):
    """What ``gather_async`` needs of a ``posa.aio.Peer``."""

    async def request(self, name: str, body: Any = None, *, timeout: float = 5.0,
                      headers: dict[str, Any] | None = None) -> Any: ...


async def gather_async(peer: AsyncRequester, name: str, body: Any = None, *,
                       registry: Registry, quorum: int | None = None,
                       timeout: float = 5.0) -> Gathered:
    """``gather`` from a ``posa.aio.Peer`` (``registry``: its registry, e.g.
    ``peer.sync.registry``): one task per member; the ones still open when the
    quorum is reached or the time is up are cancelled."""
    loop = asyncio.get_running_loop()
    members = tuple(await loop.run_in_executor(None, members_of, registry, name))
    need = quorum_of(quorum, len(members))
    started = time.monotonic()
    tasks = {asyncio.ensure_future(peer.request(m, body, timeout=timeout)): m
             for m in members}
    answers: dict[str, Any] = {}
    errors: dict[str, PosaError] = {}
    pending = set(tasks)
    try:
        while pending and len(answers) < need:
            left = started + timeout - time.monotonic()
            if left <= 0:
                break
            done, pending = await asyncio.wait(pending, timeout=left,
                                               return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                exc = task.exception()
                if exc is None:
                    answers[tasks[task]] = task.result()
                elif isinstance(exc, PosaError):
                    errors[tasks[task]] = exc
                else:
                    raise exc
    finally:
        for task in pending:
            task.cancel()
    if len(answers) < need:                 # the deadline passed: say so for each
        for member in members:
            if member not in answers and member not in errors:
                errors[member] = Timeout(f"no answer from {member!r} within {timeout:g} s")
    return Gathered(members, answers, need, errors, time.monotonic() - started)
