"""Moving an agent to another process while its neighbours keep sending to its name.

The new process takes the agent over; the old one hands it over and exits:

    new process                                   old process (agent R)
    staging peer netmgmt/handover/R ──"handover"──▶ stops its hellos, closes its
                                                    peer: R is unregistered, and
                                                    senders hold their messages and
                                                    retry; it handles what had
                                                    already arrived (what that would
                                                    send goes to an outbox)
    ◀──────────── R's whole state ──────────────── links, database, counters, outbox
                                                    (sent as netmgmt/handover/R/state)
    ─────────────────── ok ──────────────────────▶ then it exits
    Agent(R, state, owner's credential):
    R registered again, epoch + 1, on another
    transport; it sends the outbox and syncs
    with its neighbours

Nothing is lost: a message R's old peer acknowledged was handled there (and is
in the state); any other is still held by its sender, which resends it to the
new address once R is registered again.  A message handled there whose
acknowledgement did not reach its sender comes again: its per-sender number
(``seq``) is in the state, so the new agent drops it as a duplicate.
"""
from __future__ import annotations

import hashlib
import hmac
import time
from typing import Any

import posa
from posa import Kind, Registry
from posa.errors import Timeout

from .agent import Agent, Publish, state_sender_name
from .network import ROOT, Network, peer_name

__all__ = ["take_over", "credential_for"]


def credential_for(secret: str, router: str) -> str:
    """The credential owning ``router``'s name: derived from a secret that only the
    processes allowed to run agents know, so any of them can take an agent over."""
    return hmac.new(secret.encode(), peer_name(router).encode(), hashlib.sha256).hexdigest()


def take_over(router: str, network: Network, *, registry: Registry, publish: Publish,
              credential: str, listen: str, timeout: float = 15.0) -> Agent:
    """Take ``router``'s agent over from the process running it now (new side).

    Raises ``posa.Timeout`` if the old agent does not hand over within ``timeout``
    and ``posa.NameNotFound`` if no agent of ``router`` runs."""
    name = peer_name(router)
    staging = posa.Peer(f"{ROOT}/handover/{router}", registry=registry, listen=listen)
    try:
        # the epoch makes the command mean this agent only: if its copy reaches the
        # next agent under the name (a resend after the old one closed), it is ignored
        epoch = registry.lookup(name).epoch
        staging.send(name, {"op": "handover", "to": staging.name, "epoch": epoch},
                     timeout=timeout)
        state = _wait_for_state(staging, router, time.monotonic() + timeout)
        return Agent(router, network, registry=registry, publish=publish, listen=listen,
                     credential=credential, state=state)
    finally:
        staging.close()     # after the agent started: the confirmation has long left


def _wait_for_state(staging: posa.Peer, router: str, deadline: float) -> dict[str, Any]:
    """The state the old agent sends (a request), confirmed by the reply."""
    name, courier = peer_name(router), state_sender_name(router)
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise Timeout(f"{name} did not hand its state over in time; is its process "
                          "running?")
        msg = staging.receive(timeout=remaining)
        if (msg.kind == Kind.REQUEST and msg.sender == courier
                and isinstance(msg.body, dict) and "lsdb" in msg.body):
            staging.reply(msg, {"ok": True})
            return msg.body
