"""The listening end of ``zmq+tcp://`` and ``zmq+ipc://``: a bound ROUTER socket.

The route of an inbound frame is the ROUTER's identity frame (``bytes``). A
message on the wire is one frame from a DEALER, so a ROUTER reads exactly
``[identity, payload]``. The hot path is what raw pyzmq does: two plain
``recv(NOBLOCK)`` calls (``recv_multipart`` costs twice as much) and
``send(frame, NOBLOCK)``. The payload is received as a ``zmq.Frame`` only to
read its ``more`` flag, which says whether a foreign peer sent extra parts: that
is the cheapest check pyzmq offers (``getsockopt(RCVMORE)`` costs twice as
much), and without it one multi-part message would shift every later frame onto
the wrong route.

A message from a peer that is not ``[identity, payload]`` (a DEALER sending
several frames at once) is drained, counted as ``"garbage"`` and not delivered;
the peer's connection stays up, ROUTER cannot drop one connection. For the same
reason ``max_connections`` and ``max_connections_per_source`` are not enforced
by this transport, nor ``frame_timeout``; libzmq sheds a connection whose
handshake does not finish within ``first_frame_timeout`` and one that answers no
heartbeat within ``idle_timeout`` (``posa.transport.zmq.sockets``), and the
refusals it makes on its own are counted in ``rejections`` by the monitor
thread (``posa.transport.zmq.monitoring``).
"""
from __future__ import annotations

import logging
from collections import Counter

import zmq

from posa.errors import Timeout, TransportError
from posa.transport.base import Options
from posa.transport.refusals import sample
from posa.transport.zmq import zap
from posa.transport.zmq.address import check_ipc_free, posa_address, zmq_endpoint
from posa.transport.zmq.endpoint import Endpoint
from posa.transport.zmq.monitoring import watch
from posa.transport.zmq.sockets import (
    BIND_REASONS,
    NOBLOCK,
    NULL_ZAP_DOMAIN,
    SNDMORE,
    Again,
    Curve,
    ZMQError,
    new_socket,
    raw_send,
    socket_error,
)

__all__ = ["ZmqListener"]

_log = logging.getLogger("posa.transport.zmq")


class ZmqListener(Endpoint):
    """A bound ROUTER socket. Routes are identity frames (``bytes``)."""

    listening = True

    def __init__(self, address: str, options: Options, curve: Curve | None = None) -> None:
        if curve is not None and curve.server_secret is None:
            raise TransportError(f"cannot listen on {address} with CURVE without the "
                                 "server secret key; give Curve(server_public, server_secret)")
        endpoint, ipv6 = zmq_endpoint(address, binding=True)
        if endpoint.startswith("ipc://"):
            check_ipc_free(address, endpoint[len("ipc://"):])
        try:
            sock = new_socket(zmq.ROUTER, options, ipv6)
        except ZMQError as exc:
            raise socket_error("listen on", address, exc) from None
        rejections: Counter[str] = Counter()     # kept by the Endpoint made below
        self.rejections = rejections
        self._zap_domain: str | None = None
        try:
            sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
            # with ZAP, libzmq queues the handshake's outcome in the connection's
            # inbound pipe: at RCVHWM 1 the first frame never arrives (sockets.py)
            sock.setsockopt(zmq.RCVHWM, max(2, options.high_water_mark))
            if curve is not None:
                curve.apply(sock, listening=True)
                if curve.clients is not None:
                    self._zap_domain = zap.allow_clients(sock, curve.clients,
                                                         self.rejections, address)
            else:   # refuse ZMTP 1.0 peers, which never time out (sockets.py)
                sock.setsockopt(zmq.ZAP_DOMAIN, NULL_ZAP_DOMAIN)
            sock.setsockopt(zmq.SNDTIMEO, -1 if options.send_timeout is None
                            else int(options.send_timeout * 1000))
            sock.bind(endpoint)
            bound = sock.get_string(zmq.LAST_ENDPOINT)
        except ZMQError as exc:
            sock.close(linger=0)
            if self._zap_domain is not None:
                zap.forget(self._zap_domain)
            reason = BIND_REASONS.get(exc.errno or 0, exc.strerror)
            raise TransportError(f"cannot bind {address}: {reason}") from None
        super().__init__(posa_address(bound), sock, options)
        self.rejections = rejections
        if self._zap_domain is not None:
            zap.located(self._zap_domain, self.address)
        self._recv = sock.recv
        try:
            watch(sock, self.address, self.rejections)
        except ZMQError as exc:      # out of descriptors already: serve uncounted
            _log.warning("%s: refusals made by libzmq will not be counted: %s",
                         self.address, exc.strerror)

    def close(self) -> None:
        """Close (and drop the CURVE allowlist, if any). Idempotent."""
        super().close()
        if self._zap_domain is not None:
            zap.forget(self._zap_domain)
            self._zap_domain = None

    def _forked(self) -> None:
        super()._forked()
        self._zap_domain = None     # the ZAP handler is the parent's

    def recv_nowait(self) -> tuple[bytes, bytes] | None:
        """The next ``(route, frame)``, or ``None``. Raises ``Closed`` after close."""
        if self._closed:
            raise self._closed_error()
        recv = self._recv
        while True:
            try:
                if self._nothing_left():
                    self._drained()
                    return None
                route = recv(NOBLOCK)
            except Again:
                self._drained()
                return None
            except ZMQError as exc:
                raise socket_error("receive on", self.address, exc) from None
            frame = recv(NOBLOCK, copy=False)   # the parts of a message come together
            self._idle = False
            if not frame.more:
                self._run += 1
                return route, frame.bytes
            self._drop_garbage(f"route {sample(route)}", 1)

    def recv(self, timeout: float | None = None) -> tuple[bytes, bytes]:
        """Block for the next ``(route, frame)``. Raises ``Timeout``, ``Closed``."""
        deadline = self._deadline(timeout)
        self._enter_wait()
        try:
            while self._wait(self._poll_in, deadline):
                item = self.recv_nowait()
                if item is not None:
                    return item
        finally:
            self._leave_wait()
        raise Timeout(f"no frame arrived at {self.address} within {timeout:g} s")

    def send(self, route: bytes, frame: bytes) -> None:
        """Send ``frame`` on the connection ``route`` came from.

        Raises ``TransportError`` (oversize frame, connection gone), ``Timeout``
        if the peer's queue stays full for ``send_timeout``, ``Closed``."""
        if self._closed:
            raise self._closed_error()
        if len(frame) > self._options.max_frame_size:
            raise self._too_big(frame)
        sock = self._sock
        self._idle = False           # a send may take the descriptor's notification
        try:
            try:
                raw_send(sock, route, NOBLOCK | SNDMORE)
            except Again:
                self._send_blocking(route, frame)
                return
            raw_send(sock, frame)     # never blocks: the message was admitted
        except ZMQError as exc:
            if exc.errno == zmq.EHOSTUNREACH:
                raise TransportError(f"cannot send on {self.address}: the connection of "
                                     f"route {route!r} is gone (the peer closed or was "
                                     "dropped)") from None
            raise socket_error("send on", self.address, exc) from None

    def _send_blocking(self, route: bytes, frame: bytes) -> None:
        # ROUTER's POLLOUT says "some peer has room", not this one: let libzmq
        # block for this peer (SNDTIMEO = send_timeout). A close() from another
        # thread meanwhile takes effect when the send returns.
        self._enter_wait()
        try:
            self._sock.send(route, SNDMORE)
            self._sock.send(frame)
        except Again:
            raise self._send_timeout() from None
        finally:
            self._leave_wait()
