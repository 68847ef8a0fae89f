"""posa under asyncio: peers and services, every call awaitable, none blocking the loop.

One mechanism: the protocol is written once, as a forwarder's steps (a request,
a send with flow control, a flush, a service call with failover), and
``posa.aio.hub.drive`` runs them on the event loop.  The loop's ``Hub`` is the
one reader of each connection's descriptor: every task waiting on it is woken
when it fires, the first reads, and the others find their replies and
acknowledgements in the forwarder's tables.  So any number of tasks share one
``Peer`` or ``Client`` and their requests are in flight together, and a send
whose window is full waits as a task, not as the loop.

- ``Peer``: ``posa.Peer`` awaitable (``posa.aio.peer``);
- ``Server``, ``Client``: ``posa.Server``/``posa.Client`` awaitable, with
  coroutine handlers (``posa.aio.services``);
- ``Publisher``, ``Subscriber``: the event channel's (``posa.channel.aio``);
- ``Worker``, ``Master``, ``Slave``, ``Pipeline``, ``submit``, ``gather``: the
  work patterns' (``posa.work.aio``).
"""
from __future__ import annotations

from posa.aio.peer import Peer
from posa.aio.services import Client, Server
from posa.channel.aio import AsyncPublisher as Publisher
from posa.channel.aio import AsyncSubscriber as Subscriber
from posa.work.aio import AsyncMaster as Master
from posa.work.aio import AsyncPipeline as Pipeline
from posa.work.aio import AsyncSlave as Slave
from posa.work.aio import AsyncWorker as Worker
from posa.work.aio import gather_async as gather
from posa.work.aio import submit_async as submit

__all__ = ["Peer", "Server", "Client", "Publisher", "Subscriber", "Worker", "Master",
           "Slave", "Pipeline", "submit", "gather"]
