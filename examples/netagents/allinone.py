"""All-in-one mode: every agent in this process, on the embedded registry.

The agents of site-a listen on ``inproc://``, those of site-b on ``tcp://``;
the migrating agent moves to ``zmq+tcp://`` while its neighbours keep
sending.  The event channel, the admin service and the administrator are in
this process too.  Nothing changes in the agents' code between this mode and
the multi-process one: only the registry and the addresses differ.
"""
from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any, TextIO

import posa
from posa import EventChannel, Registry, transport
from posa.errors import TransportError
from posa.transport import Options

from .admin import AdminClient, AdminService
from .agent import MIGRATION_GRACE, Agent
from .alerts import CHANNEL, AlertFeed, Alerts
from .network import Network, build, peer_name
from .scenario import Driver, View, report

__all__ = ["run", "listen_address", "migrate_in_process", "wait_until_closed"]


def listen_address(router: str) -> str:
    """Mixed transports: site-a in process (inproc), the other sites over tcp."""
    return f"inproc://{peer_name(router)}" if router.startswith("site-a/") \
        else "tcp://127.0.0.1:0"


def migrate_in_process(admin: AdminClient, registry: Registry, router: str, listen: str,
                       timeout: float = 10.0) -> dict[str, Any]:
    """Ask ``router``'s agent to move to ``listen``; return once it has moved.

    The registry tells when the new address is registered (a new epoch).  The
    old address keeps delivering for ``MIGRATION_GRACE`` seconds, and requests
    to the agent wait until it has closed: a reply leaves by the address its
    request came in by, and a requester that switched to the new address
    meanwhile would not see it."""
    asked = admin.call("migrate", router=router, listen=listen)
    deadline = time.monotonic() + timeout
    registration = registry.lookup(peer_name(router))
    while registration.epoch <= asked["epoch"] and time.monotonic() < deadline:
        time.sleep(0.01)
        registration = registry.lookup(peer_name(router))
    wait_until_closed(asked["from"], MIGRATION_GRACE + timeout)
    return {"from": asked["from"], "to": registration.addresses[0],
            "epochs": [asked["epoch"], registration.epoch]}


def wait_until_closed(address: str, timeout: float) -> None:
    """Wait until nothing listens at ``address`` (a tcp:// or inproc:// one: where
    the agents of this mode start) any more, probing with a connection."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            transport.connect(address, Options()).close()
        except TransportError:
            return
        time.sleep(0.02)


def run(*, seed: int = 1, pace: float = 1.0, out: TextIO = sys.stdout,
        view: Callable[[Network, TextIO], View] = lambda network, out: View(out)) -> int:
    """Run the scenario; 0 if every check passed, 1 if one failed. ``view``
    makes what shows it (``web.WebView`` draws it in a browser too)."""
    network = build(seed)
    shown = view(network, out)
    registry = posa.LocalRegistry()
    shown.say(f"netagents: {len(network.routers)} routers in 2 sites, {len(network.links)} "
              f"links (seed {seed}); one process, embedded registry")
    return _play(network, registry, shown, pace)


def _play(network: Network, registry: Registry, view: View, pace: float) -> int:
    services: list[Any] = []
    agents: list[Agent] = []
    try:
        view.attach(registry)
        services.append(EventChannel(CHANNEL, registry=registry))
        services.append(AlertFeed(registry, view.alert))
        alerts = Alerts(registry)
        services.append(alerts)
        for router in network.routers:
            agents.append(Agent(router, network, registry=registry, publish=alerts.publish,
                                listen=listen_address(router)))
            view.say(f"agent {agents[-1].peer.name} at {agents[-1].peer.address}")
        services.append(AdminService(registry, listen="inproc://netmgmt-admin"))
        admin = AdminClient(registry)
        services.append(admin)
        result = Driver(network, admin, view, pace=pace, migrate=lambda router:
                        migrate_in_process(admin, registry, router, "zmq+tcp://127.0.0.1:0")).run()
    except KeyboardInterrupt:
        view.say("interrupted: stopping")
        return 0
    finally:
        for agent in agents:            # all stopped before any is closed
            agent.stop()
        for closer in [*reversed(services[2:]), *agents, *reversed(services[:2])]:
            closer.close()
    result["mode"] = "all-in-one"
    report(view, result)
    view.done(result)
    return 0 if result["ok"] else 1
