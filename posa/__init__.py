"""posa: location-transparent messaging. Send to a name; it arrives, wherever it lives.

    import posa
    with posa.Peer("netmgmt/agent-a") as a, posa.Peer("netmgmt/agent-b") as b:
        a.send("netmgmt/agent-b", {"event": "link-down", "port": 3})
        print(b.receive(timeout=1.0).body)

See docs/ for the patterns: peers (Forwarder-Receiver), the dispatcher
(Client-Dispatcher-Server), event channels, master-slave and work queues.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

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
from posa.security import Acl, HmacAuthenticator, Keyring

if TYPE_CHECKING:
    from posa.eventchannel import Event, EventChannel, Gap, Publisher, Subscriber
    from posa.filters import InvalidFilter
    from posa.masterslave import Master, Outcome, Slave
    from posa.pipeline import Pipeline, Stage
    from posa.workqueue import WorkQueue, Worker
    from posa.zeroconf_registry import ZeroconfRegistry

# the patterns built on peers load on first use: a process that only sends to
# names does not pay for them (import time, and objects every full garbage
# collection walks: docs/operations.md)
_LAZY = {
    **dict.fromkeys(["Event", "EventChannel", "Gap", "Publisher", "Subscriber"],
                    "posa.eventchannel"),
    "InvalidFilter": "posa.filters",
    **dict.fromkeys(["Master", "Outcome", "Slave"], "posa.masterslave"),
    **dict.fromkeys(["WorkQueue", "Worker"], "posa.workqueue"),
    **dict.fromkeys(["Pipeline", "Stage"], "posa.pipeline"),
    "ZeroconfRegistry": "posa.zeroconf_registry",   # and zeroconf with it
}

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
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'posa' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
