"""posa: location-transparent messaging. Send to a name; it arrives, wherever it lives.

    import posa
    with posa.Peer("netmgmt/agent-a") as a, posa.Peer("netmgmt/agent-b") as b:
        a.send("netmgmt/agent-b", {"event": "link-down", "port": 3})
        print(b.receive(timeout=1.0).body)

See docs/ for the patterns: peers (Forwarder-Receiver), the dispatcher
(Client-Dispatcher-Server), event channels, master-slave and work queues.

This module is a façade: every name loads its module on first use (PEP 562), so
``import posa`` costs almost nothing, and a module low in the stack (a transport
importing ``posa.errors``) does not pull the stack above it in. The public
modules are ``posa``, ``posa.aio``, ``posa.errors``, ``posa.transport`` (with
``posa.transport.testing``), ``posa.security`` and ``posa.ops``; everything else
is internal and may change (docs/architecture.md).
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from posa.channel.events import Event, Gap
    from posa.channel.predicate import InvalidFilter
    from posa.channel.publisher import Publisher
    from posa.channel.service import EventChannel
    from posa.channel.subscriber import Subscriber
    from posa.dispatch.dispatcher import Dispatcher
    from posa.dispatch.services import Client, Server, ServiceChannel
    from posa.errors import (
        Closed,
        InvalidName,
        NameNotFound,
        PartialDelivery,
        PosaError,
        ProtocolError,
        Rejected,
        RemoteError,
        StaleEpoch,
        Timeout,
        TransportError,
        Unauthorized,
        Unreachable,
    )
    from posa.naming.client import RegistryClient
    from posa.naming.election import Election, Fence, Term
    from posa.naming.nats.registry import NatsRegistry
    from posa.naming.registration import Registration, Registry
    from posa.naming.registry import LocalRegistry
    from posa.naming.zeroconf.registry import ZeroconfRegistry
    from posa.peer import DEFERRED, Peer
    from posa.runtime.reactor import Reactor
    from posa.security import Acl, HmacAuthenticator, Keyring
    from posa.wire.codec import CodecLimits, Kind, Message
    from posa.wire.names import matches, validate_name, validate_pattern
    from posa.work.channelsource import ChannelSource
    from posa.work.client import submit
    from posa.work.gather import Gathered, gather
    from posa.work.masterslave import (
        Master,
        Mean,
        Outcome,
        Slave,
        first,
        majority,
        merge_concat,
        merge_first,
        split_chunks,
        split_whole,
    )
    from posa.work.pipeline import Pipeline, Stage
    from posa.work.queue import WorkQueue
    from posa.work.scaling import ScalingAdvisor
    from posa.work.sources import DirectorySource, ListSource
    from posa.work.worker import Item, Worker

__version__ = "0.1.0"

# name -> the module that defines it, imported on first use
_LAZY = {
    **dict.fromkeys(["PosaError", "ProtocolError", "TransportError", "Closed", "Timeout",
                     "InvalidName", "NameNotFound", "Unauthorized", "StaleEpoch", "Rejected",
                     "RemoteError", "Unreachable", "PartialDelivery"], "posa.errors"),
    **dict.fromkeys(["CodecLimits", "Kind", "Message"], "posa.wire.codec"),
    **dict.fromkeys(["matches", "validate_name", "validate_pattern"], "posa.wire.names"),
    **dict.fromkeys(["Registration", "Registry"], "posa.naming.registration"),
    "LocalRegistry": "posa.naming.registry",
    "RegistryClient": "posa.naming.client",
    "ZeroconfRegistry": "posa.naming.zeroconf.registry",   # and zeroconf with it
    "NatsRegistry": "posa.naming.nats.registry",           # needs the nats extra
    **dict.fromkeys(["Election", "Term", "Fence"], "posa.naming.election"),
    **dict.fromkeys(["Peer", "DEFERRED"], "posa.peer"),
    "Reactor": "posa.runtime.reactor",
    "Dispatcher": "posa.dispatch.dispatcher",
    **dict.fromkeys(["Server", "Client", "ServiceChannel"], "posa.dispatch.services"),
    **dict.fromkeys(["Event", "Gap"], "posa.channel.events"),
    "EventChannel": "posa.channel.service",
    "Publisher": "posa.channel.publisher",
    "Subscriber": "posa.channel.subscriber",
    "InvalidFilter": "posa.channel.predicate",
    **dict.fromkeys(["Master", "Outcome", "Slave", "split_chunks", "split_whole",
                     "merge_concat", "merge_first", "majority", "first", "Mean"],
                    "posa.work.masterslave"),
    "WorkQueue": "posa.work.queue",
    **dict.fromkeys(["Worker", "Item"], "posa.work.worker"),
    **dict.fromkeys(["ListSource", "DirectorySource"], "posa.work.sources"),
    "ScalingAdvisor": "posa.work.scaling",
    "submit": "posa.work.client",
    **dict.fromkeys(["gather", "Gathered"], "posa.work.gather"),
    "ChannelSource": "posa.work.channelsource",
    **dict.fromkeys(["Pipeline", "Stage"], "posa.work.pipeline"),
    **dict.fromkeys(["Acl", "HmacAuthenticator", "Keyring"], "posa.security"),
}

__all__ = [
    "PosaError", "ProtocolError", "TransportError", "Closed", "Timeout", "InvalidName",
    "NameNotFound", "Unauthorized", "StaleEpoch", "Rejected", "RemoteError",
    "Unreachable", "PartialDelivery",
    "CodecLimits", "Kind", "Message",
    "matches", "validate_name", "validate_pattern",
    "LocalRegistry", "Registration", "Registry", "RegistryClient", "ZeroconfRegistry",
    "NatsRegistry", "Election", "Term", "Fence",
    "Peer", "DEFERRED", "Reactor", "Dispatcher",
    "Server", "Client", "ServiceChannel",
    "EventChannel", "Publisher", "Subscriber", "Event", "Gap", "InvalidFilter",
    "Master", "Slave", "Outcome", "WorkQueue", "Worker", "Pipeline", "Stage",
    "split_chunks", "split_whole", "merge_concat", "merge_first", "majority", "first", "Mean",
    "Item", "ListSource", "DirectorySource", "ScalingAdvisor", "submit", "gather", "Gathered",
    "ChannelSource",
    "Acl", "HmacAuthenticator", "Keyring",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'posa' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
