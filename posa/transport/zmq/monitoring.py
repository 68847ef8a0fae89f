"""What libzmq refuses on a listener's behalf, counted: the monitor thread.

libzmq runs the handshakes of the connections it accepts in its own I/O
thread; a handshake that fails (timed out, not ZMTP, refused by CURVE) never
reaches the ROUTER socket. It does reach a monitor socket
(``zmq_socket_monitor``): each listener asks for those events only, and one
thread per process reads every listener's monitor socket, counts each event in
that listener's ``rejections`` and logs it through a ``RefusalLog`` (one line
per cause per interval). Nothing of this runs on a listener's receive path.

    HANDSHAKE_FAILED_NO_DETAIL  "handshake-failed": timed out (HANDSHAKE_IVL =
                                Options.first_frame_timeout) or closed mid-way
    HANDSHAKE_FAILED_PROTOCOL   "handshake-garbage": not a ZMTP 3 peer
    HANDSHAKE_FAILED_AUTH       "handshake-unauthenticated": CURVE refused it

The thread must read promptly: libzmq writes events with a blocking send, so a
monitor queue left full (1000 events) stops libzmq's I/O thread, and every
connection of the process with it. That is why ``ACCEPT_FAILED`` is not asked
for: at the descriptor limit libzmq retries a failed ``accept`` at once and
reports every retry, and reading them costs more than the count is worth
(measured: with a reader that kept up, a listener served 900 replies in 6 s
instead of 36,000; with one that paused, none). The thread never stops on an
error of its own: a bad event is logged and skipped.

The monitor socket is closed when libzmq reports ``MONITOR_STOPPED`` (the
listener's socket was closed); the thread ends when no monitor is left, and a
forked child starts afresh.
"""
from __future__ import annotations

import logging
import os
import threading
from collections import Counter

import zmq
from zmq.utils.monitor import parse_monitor_message

from posa.transport.refusals import RefusalLog

__all__ = ["watch", "EVENTS"]

log = logging.getLogger("posa.transport.zmq")

_CAUSES = {
    int(zmq.Event.HANDSHAKE_FAILED_NO_DETAIL): "handshake-failed",
    int(zmq.Event.HANDSHAKE_FAILED_PROTOCOL): "handshake-garbage",
    int(zmq.Event.HANDSHAKE_FAILED_AUTH): "handshake-unauthenticated",
}
_STOPPED = int(zmq.Event.MONITOR_STOPPED)
EVENTS = _STOPPED | sum(_CAUSES)
_BATCH = 256            # events read from one monitor before polling again


class _Watched:
    __slots__ = ("address", "rejections", "refusals")

    def __init__(self, address: str, rejections: Counter[str]) -> None:
        self.address = address
        self.rejections = rejections
        self.refusals = RefusalLog(log)


class _Monitor:
    """The monitor sockets of the process's listeners and the thread reading them."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._added: list[tuple[zmq.Socket[bytes], _Watched]] = []
        self._thread: threading.Thread | None = None
        self._wake: tuple[int, int] | None = None

    def watch(self, sock: zmq.Socket[bytes], address: str,
              rejections: Counter[str]) -> None:
        """Count the refusals libzmq makes on ``sock`` (a listener's, bound at
        ``address``) in ``rejections``. Call from the thread that owns ``sock``."""
        monitor = sock.get_monitor_socket(EVENTS)
        with self._lock:
            self._added.append((monitor, _Watched(address, rejections)))
            if self._wake is None:
                self._wake = os.pipe()
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, args=(self._wake[0],),
                                                daemon=True, name="posa-zmq-monitor")
                self._thread.start()
                return
            os.write(self._wake[1], b"!")

    def _run(self, wake: int) -> None:
        poller = zmq.Poller()
        poller.register(wake, zmq.POLLIN)
        watched: dict[zmq.Socket[bytes], _Watched] = {}
        while True:
            with self._lock:
                for monitor, who in self._added:
                    watched[monitor] = who
                    poller.register(monitor, zmq.POLLIN)
                self._added.clear()
                if not watched:
                    self._thread = None
                    return
            try:
                ready = poller.poll()
            except zmq.ZMQError:        # the context is terminating: the process exits
                for monitor in watched:
                    monitor.close(linger=0)
                with self._lock:
                    self._thread = None
                return
            for item, _ in ready:
                if item == wake:
                    os.read(wake, 64)
                    continue
                monitor = item
                if not self._events(monitor, watched[monitor]):
                    poller.unregister(monitor)
                    watched.pop(monitor).refusals.flush()   # its listener closed
                    monitor.close(linger=0)

    @staticmethod
    def _events(monitor: zmq.Socket[bytes], who: _Watched) -> bool:
        """Read and count the events waiting; False once the monitor stopped."""
        for _ in range(_BATCH):
            try:
                event = parse_monitor_message(monitor.recv_multipart(zmq.NOBLOCK))
            except zmq.Again:
                return True
            except zmq.ZMQError:
                return False            # the context is terminating
            except Exception:           # never stop reading: libzmq would block
                log.exception("%s: an unreadable monitor event, skipped", who.address)
                continue
            kind = int(event["event"])
            if kind == _STOPPED:
                return False
            cause = _CAUSES.get(kind, "refused")
            who.rejections[cause] += 1
            who.refusals.refused(cause, "%s: libzmq refused a connection in its "
                                 "handshake (%s)", who.address, cause)
        return True

    def after_fork(self) -> None:
        self._lock = threading.Lock()
        self._added = []
        self._thread = None
        self._wake = None


_monitor = _Monitor()
watch = _monitor.watch
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_monitor.after_fork)
