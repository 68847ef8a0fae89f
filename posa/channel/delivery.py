"""A channel's delivery: one thread that serves every subscriber's lane.

Strategy. Each subscription has a ``Lane`` (``posa.channel.lane``, sans-IO):
the deliveries framed from its last take and its credit. One thread per
channel, with one ``Forwarder`` (a stream per subscriber), goes round the
lanes: a lane that is hungry takes from the core under the channel's lock
(``ChannelCore.take``: at most ``max_batch`` events), the take is framed
without the lock (``posa.channel.framing``), and a lane with credit sends.
Nothing here waits for one subscriber: a send is made only when the window
has room (the forwarder's window is one larger than the lane's, so
``send_locked`` never waits), and what a lane must wait for — first contact
(resolve, connect), room (acknowledgements), recovery (a failed write, a
move), a back-off — runs as the forwarder's protocol steps, each yielding the
connection it waits on (``posa.delivery.waiting``). The thread waits on all
of them and on a wake-up pipe at once (``poll``), and resumes the steps whose
connection fired or whose time came; a stalled subscriber costs its own buffer
(``limit`` events, then its policy) plus ``window`` frames in flight, and
threads are one per channel whatever the number of subscribers.

A slow or unreachable subscriber is retried while its name lives and it is
subscribed (frames not acknowledged within ``send_timeout`` are given up by the
stream, as a ``Timeout`` of the forwarder says, and the lane sends them again
on the next: ``Lane.given_up``); a lane ends when it unsubscribes, expires,
its policy ends it or its name is gone. First contact (resolve, connect) begins as
soon as a subscription's lane appears, not with its first event, so that the
first event does not wait for it. The registry is asked only after
trouble (and at first contact), and never by this thread: a helper asks it
(``posa.channel.lookups``, two threads at most) while the lane waits for the
answer in its steps, so a slow or unreachable dispatcher holds up only the
lanes whose names it is asked about.
"""
from __future__ import annotations

import logging
import os
import select
import time
from typing import TYPE_CHECKING, Any

from posa.channel.framing import Framer
from posa.channel.lane import Lane
from posa.channel.lookups import Lookups
from posa.delivery.forwarder import Forwarder
from posa.delivery.sender import Sender
from posa.delivery.waiting import Steps
from posa.errors import NameNotFound, PosaError, Timeout
from posa.transport.base import Connection
from posa.wire.codec import Kind

if TYPE_CHECKING:
    from posa.channel.core import Taken
    from posa.channel.service import EventChannel

__all__ = ["Delivery"]

log = logging.getLogger("posa.channel.delivery")

BACKOFF = 0.2       # seconds before connecting again to an unreachable subscriber
PATIENCE = 30.0     # seconds a lane waits for the registry's verdict (then: not gone)
_SEND = Kind.SEND


class _Wait:
    """Protocol steps a lane waits on: the connection and until when."""

    __slots__ = ("steps", "conn", "until")

    def __init__(self, steps: Steps[Any]) -> None:
        self.steps = steps
        self.conn: Connection | None = None
        self.until = 0.0


class Delivery:
    """The delivery thread of one channel and the lanes it serves. ``wake`` is
    called (any thread) when a lane may have work."""

    def __init__(self, channel: EventChannel) -> None:
        self.channel = channel
        self.lanes: dict[str, Lane] = {}        # the lanes this thread serves
        self._waits: dict[str, _Wait] = {}
        self._troubled: list[tuple[Lane, BaseException]] = []
        self._met: set[str] = set()             # lanes whose first contact began
        self._framer = Framer(channel)
        self._lookups: Lookups      # made by the thread (the channel has its registry then)
        self._rfd, self._wfd = os.pipe()
        os.set_blocking(self._rfd, False)
        os.set_blocking(self._wfd, False)
        self._woken = False
        self._closed = False

    def wake(self) -> None:
        """Have the thread look at the lanes again (cheap when it is awake)."""
        if not self._woken:
            self._woken = True
            try:
                os.write(self._wfd, b"\0")
            except OSError:
                pass        # full: it is awake; closed: it is gone

    def close(self) -> None:
        """Release the wake-up pipe (after the thread ended)."""
        if not self._closed:
            self._closed = self._woken = True
            os.close(self._rfd)
            os.close(self._wfd)

    # -- the thread -------------------------------------------------------------------
    def run(self) -> None:
        channel = self.channel
        self._lookups = Lookups(channel.registry, wake=self.wake, start=channel._start)
        sender = Sender(channel.name, resolve=self._lookups.resolve,
                        codec=channel.peer.codec, options=channel.peer.options,
                        window=channel.window + 1, ack_timeout=2.0,
                        authenticator=channel.peer.authenticator)
        fwd = sender.forwarder()
        try:
            while True:
                self._woken = False
                try:
                    os.read(self._rfd, 4096)
                except OSError:
                    pass
                loads = self._collect(fwd)
                if loads is None:
                    return
                packed = self._framer.packed([(taken, head) for _, taken, head in loads])
                for (lane, taken, _), bodies in zip(loads, packed):
                    lane.load(bodies, last=taken.end is not None)
                with fwd.lock:
                    busy = self._serve(fwd) | bool(loads)
                if self._troubled:
                    self._handle_trouble()
                elif not busy:
                    self._wait(fwd)
        except Exception:
            log.exception("channel %s: the delivery thread failed", channel.name)
            raise
        finally:
            self._lookups.close()
            sender.close(linger=0)

    def _collect(self, fwd: Forwarder) -> list[tuple[Lane, Taken, int]] | None:
        """Adopt new lanes, end finished ones and take for the hungry (under the
        channel's lock); None when the channel closed and no lane is left."""
        channel, core, now = self.channel, self.channel.core, time.monotonic()
        loads: list[tuple[Lane, Taken, int]] = []
        done: list[str] = []
        with channel._lock:
            for sub_id, lane in channel._lanes.items():
                if self.lanes.get(sub_id) is not lane:    # new, or subscribed again
                    self.lanes[sub_id] = lane
                    self._waits.pop(sub_id, None)
            for sub_id, lane in self.lanes.items():
                if lane.hungry(now) and core.pending(sub_id):
                    taken = core.take(sub_id, channel.max_batch)
                    if taken is not None:
                        if taken.freed and channel._parked:
                            channel._unpark()
                        loads.append((lane, taken, core.seq))
                        continue
                if lane.finished(now):
                    done.append(sub_id)
                    if channel._lanes.get(sub_id) is lane:
                        channel._end(sub_id)
            for sub_id in done:
                del self.lanes[sub_id]
                self._waits.pop(sub_id, None)
                self._met.discard(sub_id)
            if not self.lanes and channel._closing.is_set():
                return None
        for sub_id in done:
            fwd.forget(sub_id)
            self._lookups.discard(sub_id)
        return loads

    def _serve(self, fwd: Forwarder) -> bool:
        """Send what lanes with credit hold, start the waits of those without
        (``fwd.lock`` held); True if anything moved."""
        moved = False
        now = time.monotonic()
        deadline = now + self.channel.send_timeout
        for sub_id, lane in self.lanes.items():
            if sub_id in self._waits:
                continue
            if not lane.outbox:
                if sub_id not in self._met and not lane.stopped:
                    self._met.add(sub_id)       # first contact: before its first event
                    if not fwd.knows(sub_id):
                        moved |= self._begin(lane, fwd.open_steps(sub_id, deadline))
                continue
            if not fwd.knows(sub_id):
                self._met.add(sub_id)
                moved |= self._begin(lane, fwd.open_steps(sub_id, deadline))
                continue
            while lane.ready():
                failed: list[BaseException | None] = []
                try:
                    fwd.send_locked(sub_id, lane.next(), _SEND, None, deadline, failed)
                except PosaError as exc:
                    self._troubled.append((lane, exc))
                    break
                moved = True
                if failed:
                    self._begin(lane, fwd.recovery_steps(sub_id, deadline, failed[0]))
                    break
            self._settle(fwd, lane)
            if lane.outbox and not lane.ready() and sub_id not in self._waits:
                moved |= self._begin(lane, fwd.room_steps(sub_id, deadline))
        moved |= self._resume(fwd, set(), now)
        fwd.write_open()
        return moved

    def _settle(self, fwd: Forwarder, lane: Lane) -> None:
        if lane.in_flight and not fwd.knows(lane.sub_id):
            # the stream gave them up (not known to be delivered): out again on the next
            self.channel.counters["resent"] += lane.given_up()
        else:
            lane.settle(fwd.in_flight(lane.sub_id))

    def _begin(self, lane: Lane, steps: Steps[Any]) -> bool:
        """Start the steps a lane waits on; True if they are done already."""
        wait = self._waits[lane.sub_id] = _Wait(steps)
        return self._step(lane, wait, None)

    def _step(self, lane: Lane, wait: _Wait, ready: bool | None) -> bool:
        """Resume ``wait``'s steps (``fwd.lock`` held); True if they ended."""
        try:
            conn, seconds = next(wait.steps) if ready is None else wait.steps.send(ready)
        except StopIteration:
            del self._waits[lane.sub_id]
            return True
        except PosaError as exc:
            del self._waits[lane.sub_id]
            self._troubled.append((lane, exc))
            return True
        wait.conn, wait.until = conn, time.monotonic() + seconds
        return False

    def _resume(self, fwd: Forwarder, fired: set[int], now: float) -> bool:
        """Resume the waits whose connection fired, whose time came or whose
        registry lookup was answered; when one read something another may look for
        (an acknowledgement, a reply), all look once more. True if any ended."""
        ended = everyone = False
        answered = self._lookups.answered()
        for _ in range(2 if self._waits else 0):
            mark = fwd.progress_mark()
            for sub_id, wait in list(self._waits.items()):
                ready = wait.conn is not None and _fileno(wait.conn) in fired
                if everyone or ready or wait.until <= now or sub_id in answered:
                    ended |= self._step(self.lanes[sub_id], wait, ready)
            if fwd.progress_mark() == mark:
                break
            everyone = True
        for name in answered:           # none of the waits took it: it grows old
            self._lookups.discard(name)
        for sub_id, lane in self.lanes.items():
            if sub_id not in self._waits:
                self._settle(fwd, lane)
        return ended

    def _wait(self, fwd: Forwarder) -> None:
        """Wait for a wake-up, a lane's connection or its time (without locks)."""
        poller = select.poll()
        poller.register(self._rfd, select.POLLIN)
        until = time.monotonic() + 1.0
        for wait in self._waits.values():
            until = min(until, wait.until)
            if wait.conn is not None:
                fd = _fileno(wait.conn)
                if fd >= 0:
                    poller.register(fd, select.POLLIN)
        timeout = max(0.0, until - time.monotonic())
        fired = {fd for fd, _ in poller.poll(int(timeout * 1000) + 1)}
        fired.discard(self._rfd)
        with fwd.lock:
            self._resume(fwd, fired, time.monotonic())

    def _handle_trouble(self) -> None:
        """A lane's steps failed: it waits (in its steps, as for anything else) for
        the registry's verdict on its name, asked by a helper; if the name is gone
        the lane ends, else it goes on (after a back-off when it could not be
        reached)."""
        troubled, self._troubled = self._troubled, []
        for lane, exc in troubled:
            if self.lanes.get(lane.sub_id) is lane:     # in place of any wait it began
                self._begin(lane, self._verdict(lane, exc))

    def _verdict(self, lane: Lane, exc: BaseException) -> Steps[None]:
        """Whether ``lane``'s name is gone (``exc`` said why its steps failed), as
        steps: the lookup is a helper's; the thread resumes them when it answered."""
        gone = isinstance(exc, NameNotFound)
        if not gone:
            self._lookups.ask(lane.sub_id, True)
            until = time.monotonic() + PATIENCE
            answer = self._lookups.answer(lane.sub_id)
            while answer is None and time.monotonic() < until:
                yield None, until - time.monotonic()
                answer = self._lookups.answer(lane.sub_id)
            gone = isinstance(answer, NameNotFound)
        if gone:
            lane.stop()
        elif not isinstance(exc, Timeout):
            log.debug("channel %s: %s unreachable (%s); trying again", self.channel.name,
                      lane.sub_id, exc)
            yield None, BACKOFF


def _fileno(conn: Connection) -> int:
    try:
        return conn.fileno()
    except (OSError, ValueError, PosaError):
        return -1

