"""Leader/Followers: threads that share one forwarder wait for their answers in turn.

A ``Peer`` used from more than one thread sends their requests through one
forwarder shared by those threads (``Peer.request``), so they travel on one
connection per recipient: the recipient reads many of them in one read and
answers them in one write (``posa.delivery.intake``), and the answers come back
together.  Its steps (``Forwarder.request_steps``) are driven by ``Relay.drive``
in each calling thread, holding the forwarder's lock while a step runs:

- one thread at a time waits on a descriptor, the *leader*: it polls, and its
  step reads what came (``Forwarder._absorb``), which tells the relay the key
  of every answer read (``Forwarder.on_answer``);
- every other thread waiting on that descriptor is a *follower*: it waits on a
  lock of its own, released when the answer with its key is read (by the
  leader, or by any thread's step), or when it is handed the lead;
- a leader whose own answer came reads what its connection still holds (its
  step returned after its own frame), then hands the lead to one follower; a
  leader whose step moved to another connection (a recovery replaced it) wakes
  every follower of the old one, to wait on the new one.

A follower that is not woken waits out its step's own timeout, which every
step bounds (``ack_timeout``), then runs its step as a wait that ran out: a
lost wake-up costs time, never an answer.  One wake-up per answer, one read
per burst of answers, and no thread polls a descriptor another polls already.
"""
from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from posa.delivery.budget import bounded
from posa.delivery.waiting import Steps, readable
from posa.errors import PosaError
from posa.transport.base import Connection
from posa.wire.codec import Message

if TYPE_CHECKING:
    from posa.delivery.forwarder import Forwarder

__all__ = ["Relay", "Awaited", "relayed"]

_T = TypeVar("_T")
Key = tuple[str, int]       # an answer's: (the name that answers, the request's seq)
_allocate = threading.Lock


class Awaited:
    """What a thread's (or an ``aio`` task's) steps wait for: the answer with
    ``key`` once the request is sent (None: any input, any progress)."""

    __slots__ = ("key",)

    def __init__(self) -> None:
        self.key: Key | None = None


class Relay:
    """Leader/Followers over the connections of one forwarder (its ``lock``);
    ``answered`` is the forwarder's ``on_answer``."""

    def __init__(self, lock: threading.Lock, absorb: Callable[[Connection], None],
                 write_open: Callable[[], None]) -> None:
        self.lock = lock
        self._absorb = absorb           # reads what a connection holds (lock held)
        self._write_open = write_open   # writes the requests queued (lock held)
        self.corked = False             # requests queued, for the last woken to write
        self._leaders: dict[int, threading.Lock] = {}     # descriptor -> its leader
        # followers by descriptor (each its lock and key), and by key
        self._followers: dict[int, dict[threading.Lock, Key | None]] = {}
        self._keyed: dict[Key, tuple[threading.Lock, int]] = {}
        self._moved: set[threading.Lock] = set()    # followers woken to wait elsewhere
        # followers whose turn came, woken one per release of the lock: each wakes
        # the next when it releases it, so they do not all contend for the lock
        # (and the interpreter) at once
        self._wake: deque[threading.Lock] = deque()
        self.stats = {"led": 0, "followed": 0, "woken": 0, "handed": 0, "corked": 0}

    def answered(self, key: Key) -> None:
        """The forwarder read the answer ``key`` (lock held): wake its follower."""
        entry = self._keyed.pop(key, None)
        if entry is not None:
            waiter, fd = entry
            followers = self._followers.get(fd)
            if followers is not None:
                followers.pop(waiter, None)
            self.stats["woken"] += 1
            self._wake.append(waiter)

    def drive(self, steps: Steps[_T], awaited: Awaited) -> _T:
        """Run ``steps`` in this thread holding ``lock``, waiting as leader or follower."""
        me = _allocate()
        me.acquire()
        led = -1            # the descriptor this thread leads (-1: none)
        conn: Connection | None = None
        lock = self.lock
        lock.acquire()
        try:
            conn, wait = next(steps)
            while True:
                if conn is None:    # a back-off
                    led = self._leave(led, -1)
                    self._pause(wait)
                    conn, wait = steps.send(False)
                    continue
                try:
                    fd = conn.fileno()
                except (OSError, ValueError, PosaError):
                    conn, wait = steps.send(True)   # closed under us: the receive says how
                    continue
                if led != fd:
                    led = self._leave(led, fd)
                    leader = self._leaders.get(fd)
                    if leader is None or leader is me:
                        self._leaders[fd] = me
                        led = fd
                    else:
                        ready = self._follow(me, fd, awaited.key, wait)
                        if self._leaders.get(fd) is me:
                            led = fd        # handed the lead
                        conn, wait = steps.send(ready)
                        continue
                self._release()
                try:
                    ready = readable(conn, wait)
                finally:
                    lock.acquire()
                self.stats["led"] += 1
                conn, wait = steps.send(ready)
        except StopIteration as done:
            return done.value  # type: ignore[no-any-return]
        finally:
            try:
                self._hand_on(led, conn)
            finally:
                self._release()

    def _release(self) -> None:
        """Release the lock, then wake the next follower whose turn came."""
        if self._wake:
            waiter = self._wake.popleft()
            self.lock.release()
            waiter.release()
            return
        if self.corked:     # the last woken: the requests queued meanwhile go out
            self.corked = False
            self.stats["corked"] += 1
            try:
                self._write_open()
            finally:
                self.lock.release()
            return
        self.lock.release()

    def waking(self) -> bool:
        """True while followers are still to be woken (each will send, then the
        last writes what they queued)."""
        return bool(self._wake)

    def _pause(self, wait: float) -> None:
        self._release()
        try:
            time.sleep(max(0.0, wait))
        finally:
            self.lock.acquire()

    def _follow(self, me: threading.Lock, fd: int, key: Key | None, wait: float) -> bool:
        """Wait (lock released) until woken or ``wait`` s passed; True if woken."""
        followers = self._followers.get(fd)
        if followers is None:
            followers = self._followers[fd] = {}
        followers[me] = key
        if key is not None:
            self._keyed[key] = (me, fd)
        self.stats["followed"] += 1
        self._release()
        try:
            woken = me.acquire(True, wait if wait > 0.0 else 0.0)
        finally:
            self.lock.acquire()
        if me in followers:         # not woken: the wait ran out
            del followers[me]
            if key is not None:
                self._keyed.pop(key, None)
            return False
        if not woken:               # woken as the wait ran out: lock it again, and
            me.acquire(False)       # take the turn it may still have to be woken for
            if me in self._wake:
                self._wake.remove(me)
        if self._moved and me in self._moved:   # to wait on another connection:
            self._moved.discard(me)     # a wait that ran out (nothing to read here)
            return False
        return True

    def _leave(self, led: int, fd: int) -> int:
        """Stop leading ``led`` to wait on ``fd``: its followers wait on another
        descriptor now (a recovery), so all are woken. Returns -1."""
        if led >= 0 and led != fd:
            if self._leaders.get(led) is not None:
                del self._leaders[led]
            followers = self._followers.pop(led, None)
            if followers:
                for waiter, key in followers.items():
                    if key is not None:
                        self._keyed.pop(key, None)
                    self._moved.add(waiter)
                    self._wake.append(waiter)
                followers.clear()
        return -1

    def _hand_on(self, led: int, conn: Connection | None) -> None:
        """This thread is done: read what its connection still holds (answers
        for others), then hand the lead of ``led`` to one of its followers."""
        if led < 0:
            return
        self._leaders.pop(led, None)
        if conn is not None:
            try:
                if conn.pending():
                    self._absorb(conn)
            except PosaError:
                pass        # the follower handed the lead finds out, and recovers
        followers = self._followers.get(led)
        if not followers:
            return
        waiter, key = followers.popitem()
        if key is not None:
            self._keyed.pop(key, None)
        self._leaders[led] = waiter
        self.stats["handed"] += 1
        self._wake.appendleft(waiter)     # the next to poll goes first


def relayed(fwd: Forwarder) -> Relay:
    """A relay for the threads sharing ``fwd`` (it tells the relay its answers)."""
    relay = Relay(fwd.lock, fwd.absorb_from, fwd.write_open)
    fwd.on_answer = relay.answered
    return relay


def request(fwd: Forwarder, relay: Relay, name: str, body: Any, timeout: float,
            headers: dict[str, Any] | None) -> Message:
    """``Forwarder.request`` on a forwarder shared by threads, driven by ``relay``."""
    awaited = Awaited()
    return relay.drive(_request_steps(fwd, relay, name, body, timeout, headers, awaited),
                       awaited)


def _request_steps(fwd: Forwarder, relay: Relay, name: str, body: Any, timeout: float,
                   headers: dict[str, Any] | None, awaited: Awaited) -> Steps[Message]:
    """``Forwarder.request_steps`` that says the key of its answer once sent, and
    that joins the requests of the threads woken in turn (``Relay.corked``): the
    last of them writes them all, in one frame."""
    deadline = time.monotonic() + bounded(timeout)
    if not fwd.knows(name):
        yield from fwd.open_steps(name, deadline)
    if (relay.corked or relay.waking()) and fwd.has_room(name):
        # threads woken before this one send too: their requests go together
        seq = fwd.queue_request(name, body, deadline, headers)
        relay.corked = True
    else:
        seq = fwd.send_request(name, body, deadline, headers)
    awaited.key = (name, seq)
    return (yield from fwd.reply_steps(name, seq, deadline))
