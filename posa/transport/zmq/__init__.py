"""ZeroMQ transports: ``zmq+tcp://HOST:PORT`` and ``zmq+ipc:///PATH``.

A listener is a bound ROUTER socket, a connection a connected DEALER socket;
``zmq+tcp://h:p`` is ZeroMQ's ``tcp://h:p`` and ``zmq+ipc:///path`` its
``ipc:///path``. Every endpoint of a process shares one context (one I/O
thread); the hot paths are what raw pyzmq does, and a receive that finds
nothing (pyzmq's dearest call) is avoided where it can be.

    posa.transport.zmq             ZmqTransport: the schemes, listen and connect
    posa.transport.zmq.address     the zmq+ address syntax; ipc paths in use
    posa.transport.zmq.context     the process's one context, its fork and exit hooks
    posa.transport.zmq.sockets     socket options, flags, error texts, CURVE keys
    posa.transport.zmq.endpoint    what both ends share: cheap receives, waits, close
    posa.transport.zmq.listener    ZmqListener: a ROUTER; routes are identity frames
    posa.transport.zmq.connection  ZmqConnection: a DEALER
    posa.transport.zmq.inherited   a forked child's copies of the parent's endpoints

CURVE (optional): ``ZmqTransport(curve=Curve(server_public, server_secret))``,
registered with ``transport.register``, encrypts every zmq+ endpoint of the
process. Listeners hold the server key pair; each connection makes a key pair
of its own and accepts only a listener that proves the server public key (a
listener without it is never reached: ``send`` ends in ``Timeout``). Who may
*send* is decided above the transport, by posa's authentication.

Every ``zmq.ZMQError`` and ``OSError`` is translated in these modules into
``TransportError``, ``Closed`` or ``Timeout`` with the address in the message.
"""
from __future__ import annotations

from posa.transport.base import Options
from posa.transport.zmq.connection import ZmqConnection
from posa.transport.zmq.inherited import building
from posa.transport.zmq.listener import ZmqListener
from posa.transport.zmq.sockets import Curve

__all__ = ["ZmqTransport", "ZmqListener", "ZmqConnection", "Curve"]


class ZmqTransport:
    """ZeroMQ ROUTER/DEALER over tcp and Unix sockets."""

    schemes = ("zmq+tcp", "zmq+ipc")

    def __init__(self, curve: Curve | None = None) -> None:
        self.curve = curve

    def listen(self, address: str, options: Options) -> ZmqListener:
        """Bind a ROUTER at ``address`` (port 0 or ``*`` picks a free port)."""
        with building():
            return ZmqListener(address, options, self.curve)

    def connect(self, address: str, options: Options) -> ZmqConnection:
        """Connect a DEALER to ``address``; the connection completes in the
        background, and ``send`` waits for it (at most ``send_timeout``)."""
        with building():
            return ZmqConnection(address, options, self.curve)
