"""posa: location-transparent messaging. Send to a name; it arrives, wherever it lives.

    import posa
    with posa.Peer("netmgmt/agent-a") as a, posa.Peer("netmgmt/agent-b") as b:
        a.send("netmgmt/agent-b", {"event": "link-down", "port": 3})
        print(b.receive(timeout=1.0).body)

See docs/ for the patterns: peers (Forwarder-Receiver), the dispatcher
(Client-Dispatcher-Server), event channels, master-slave and work queues.
"""
from __future__ import annotations

from typing import Any

# the error tree first: transports import it while this package initialises
from posa.errors import (Closed, InvalidName, NameNotFound, PosaError, ProtocolError,
                         Rejected, RemoteError, StaleEpoch, Timeout, TransportError,
                         Unauthorized)
from posa.message import Codec, Kind, Limits, Message
from posa.names import matches, validate_name, validate_pattern
from posa.registry import LocalRegistry, Registration, Registry
from posa.peer import DEFERRED, Peer
from posa.reactor import Reactor
from posa.registry_client import RegistryClient
from posa.dispatcher import Dispatcher
from posa.services import Channel, Client, Server
from posa.forwarder import Sender
from posa.filters import InvalidFilter
from posa.eventchannel import Event, EventChannel, Gap, Publisher, Subscriber
from posa.masterslave import Master, Outcome, Slave
from posa.workqueue import WorkQueue, Worker
from posa.pipeline import Pipeline, Stage
from posa.security import Acl, HmacAuthenticator, Keyring

__all__ = [
    "PosaError", "ProtocolError", "TransportError", "Closed", "Timeout", "InvalidName",
    "NameNotFound", "Unauthorized", "StaleEpoch", "Rejected", "RemoteError",
    "Codec", "Kind", "Limits", "Message",
    "matches", "validate_name", "validate_pattern",
    "LocalRegistry", "Registration", "Registry", "ZeroconfRegistry",
    "Peer", "DEFERRED", "Reactor", "RegistryClient", "Dispatcher", "Sender",
    "Server", "Client", "Channel",
    "EventChannel", "Publisher", "Subscriber", "Event", "Gap", "InvalidFilter",
    "Master", "Slave", "Outcome", "WorkQueue", "Worker", "Pipeline", "Stage",
    "Acl", "HmacAuthenticator", "Keyring",
]

__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    # zeroconf is imported only by those who use LAN discovery
    if name == "ZeroconfRegistry":
        from posa.zeroconf_registry import ZeroconfRegistry
        return ZeroconfRegistry
    raise AttributeError(f"module 'posa' has no attribute {name!r}")
