"""The dialling end of ``zmq+tcp://`` and ``zmq+ipc://``: a connected DEALER socket.

``send`` is pyzmq's compiled ``send(frame, NOBLOCK)``; only when that would
block (``high_water_mark`` frames queued) does the connection poll its socket
and its wake-up pipe, for at most ``send_timeout``, so that ``close()`` from
another thread can wake it. A multi-part message from the listener (a foreign
peer) is drained and counted as ``"garbage"``.

The socket does not set ``IMMEDIATE``: with it, libzmq discards the frames a
connection received and the application has not read yet when the listener
goes away (a receiver that acknowledged and then closed: the acknowledgement
was lost, and its sender waited out its deadline for nothing). Without it a
frame sent before the listener answers is queued and goes when it does, and
what arrived stays readable after the listener closed, as on ``tcp://``.
"""
from __future__ import annotations

import zmq

from posa.errors import Timeout, TransportError
from posa.transport.base import Options
from posa.transport.zmq.address import zmq_endpoint
from posa.transport.zmq.endpoint import Endpoint
from posa.transport.zmq.sockets import (
    NOBLOCK,
    RCVMORE,
    Again,
    Curve,
    ZMQError,
    new_socket,
    raw_send,
    socket_error,
)

__all__ = ["ZmqConnection"]


class ZmqConnection(Endpoint):
    """A DEALER socket connected to one listener."""

    def __init__(self, address: str, options: Options, curve: Curve | None = None) -> None:
        endpoint, ipv6 = zmq_endpoint(address, binding=False)
        try:
            sock = new_socket(zmq.DEALER, options, ipv6)
        except ZMQError as exc:
            raise socket_error("connect to", address, exc) from None
        try:
            if curve is not None:
                curve.apply(sock, listening=False)
            sock.connect(endpoint)
        except ZMQError as exc:
            sock.close(linger=0)
            raise TransportError(f"cannot connect to {address}: {exc.strerror}; write "
                                 "zmq+tcp://HOST:PORT or zmq+ipc:///PATH") from None
        super().__init__(address, sock, options)
        self._recv = sock.recv
        self._send = raw_send.__get__(sock)

    def send(self, frame: bytes) -> None:
        """Send one frame. Raises ``TransportError`` (oversize), ``Timeout`` after
        ``send_timeout`` with ``high_water_mark`` frames queued, ``Closed``."""
        if self._closed:
            raise self._closed_error()
        if len(frame) > self._options.max_frame_size:
            raise self._too_big(frame)
        self._idle = False           # a send may take the descriptor's notification
        try:
            self._send(frame, NOBLOCK)
        except Again:
            self._send_blocking(frame)
        except ZMQError as exc:
            raise socket_error("send to", self.address, exc) from None

    def _send_blocking(self, frame: bytes) -> None:
        timeout = self._options.send_timeout
        deadline = self._deadline(timeout)
        self._enter_wait()
        try:
            while self._wait(self._poll_out, deadline):
                try:
                    self._send(frame, NOBLOCK)
                    return
                except Again:
                    continue
        except ZMQError as exc:
            raise socket_error("send to", self.address, exc) from None
        finally:
            self._leave_wait()
        raise self._send_timeout()

    def recv_nowait(self) -> bytes | None:
        """The next frame from the listener, or ``None``. Raises ``Closed``."""
        if self._closed:
            raise self._closed_error()
        recv = self._recv
        while True:
            try:
                if self._nothing_left():
                    self._drained()
                    return None
                frame = recv(NOBLOCK)
            except Again:
                self._drained()
                return None
            except ZMQError as exc:
                raise socket_error("receive from", self.address, exc) from None
            self._idle = False
            if not self._get(RCVMORE):
                self._run += 1
                return frame
            self._drop_garbage("the listener", 1)

    def recv(self, timeout: float | None = None) -> bytes:
        """Block for the next frame. Raises ``Timeout``, ``Closed``."""
        deadline = self._deadline(timeout)
        self._enter_wait()
        try:
            while self._wait(self._poll_in, deadline):
                frame = self.recv_nowait()
                if frame is not None:
                    return frame
        finally:
            self._leave_wait()
        raise Timeout(f"no frame arrived from {self.address} within {timeout:g} s")
