"""A subscriber's lane: what the channel's delivery thread sends it next, and when
(sans-IO: no socket, no thread, no clock of its own).

One delivery thread serves every subscription of a channel
(``posa.channel.delivery``); each subscription has a ``Lane`` that says
whether it has work and credit:

- **work**: the deliveries framed from one ``ChannelCore.take`` and not yet
  sent (``outbox``). The lane asks for the next take only when its outbox is
  empty (``hungry``), so what the core buffers for a subscriber stays in the
  core, where its policy (``block``, ``drop-oldest`` ...) decides about it: a
  lane holds at most one take (``max_batch`` events, a few frames) beyond it.
- **credit**: deliveries may be sent while fewer than ``window`` of them are
  unacknowledged (the thread's forwarder has a window one larger, so a send
  never waits for an acknowledgement there, and one slow subscriber never
  holds up the thread). The thread tells the lane how many are
  unacknowledged after it read acknowledgements (``settle``). The deliveries in
  flight stay with the lane until acknowledged: when the stream gives them up
  (a subscriber that does not acknowledge within ``send_timeout``, alive but
  not reading), they go back to the front of the outbox (``given_up``) and out
  again on the next stream, so that nothing taken from the buffer, and no
  hole it announces, is lost unsaid. A copy of them may arrive too (written
  before the stream gave up): the subscriber drops the repeated events, and
  the holes before them (``posa.channel.events``).
- **end**: a delivery that says the policy ended the subscription goes last
  (``ending``); a lane stopped by an unsubscription, an expiry or the
  channel's close sends what it holds until ``drain_until`` and no longer.

Invariants: bodies leave in the order they were loaded, each once per stream
(again only when a stream gave it up); a lane never has more than ``window``
deliveries unacknowledged; ``finished`` is final.
"""
from __future__ import annotations

from collections import deque
from typing import Any

__all__ = ["Lane"]


class Lane:
    """One subscription's lane. Its owner (the channel's delivery thread, and the
    control requests under the channel's lock for the lease fields) feeds it."""

    __slots__ = ("sub_id", "window", "outbox", "in_flight", "flying", "sent", "lease",
                 "expires", "stopped", "drain_until", "ending")

    def __init__(self, sub_id: str, *, window: int, lease: float, now: float) -> None:
        if window < 1:
            raise ValueError("window must be >= 1")
        self.sub_id = sub_id
        self.window = window
        self.outbox: deque[Any] = deque()
        self.in_flight = 0          # deliveries sent and not acknowledged (settle)
        self.flying: deque[Any] = deque()   # the last ``in_flight`` sent
        self.sent = 0               # deliveries sent, over the lane's life
        self.lease = lease
        self.expires = now + lease
        self.stopped = False
        self.drain_until = 0.0
        self.ending = False         # the last delivery (the policy's end) is loaded

    # -- work ------------------------------------------------------------------
    def hungry(self, now: float) -> bool:
        """True if the lane takes its next deliveries from the core now (a stopped
        lane while it drains)."""
        return not self.outbox and not self.ending and (
            not self.stopped or now < self.drain_until)

    def load(self, bodies: list[Any], *, last: bool = False) -> None:
        """Queue the deliveries of one take; ``last``: the subscription ends after them."""
        if self.ending:
            raise ValueError(f"the lane of {self.sub_id!r} has ended; nothing follows")
        self.outbox.extend(bodies)
        self.ending = last

    # -- credit -----------------------------------------------------------------
    def credit(self) -> int:
        """How many deliveries may be sent now without filling the window."""
        return max(0, self.window - self.in_flight)

    def ready(self) -> bool:
        """True if a delivery waits and there is credit to send it."""
        return bool(self.outbox) and self.credit() > 0

    def next(self) -> Any:
        """The next delivery to send (it leaves the lane: it is in flight)."""
        if not self.ready():
            raise ValueError(f"the lane of {self.sub_id!r} has nothing to send now")
        body = self.outbox.popleft()
        self.flying.append(body)
        self.in_flight += 1
        self.sent += 1
        return body

    def settle(self, unacknowledged: int) -> None:
        """What the stream holds unacknowledged now (acknowledgements read): the
        lane's credit follows it, and the oldest in flight beyond it were
        acknowledged."""
        self.in_flight = max(0, unacknowledged)
        flying = self.flying
        while len(flying) > self.in_flight:
            flying.popleft()

    def given_up(self) -> int:
        """The stream gave up what is in flight (not known to be delivered): it
        goes out again first, in its order. Returns how many deliveries."""
        flying, self.flying = self.flying, deque()
        self.outbox.extendleft(reversed(flying))
        self.in_flight = 0
        return len(flying)

    # -- ending ------------------------------------------------------------------
    def stop(self, drain_until: float = 0.0) -> None:
        """Stop the lane: what it holds goes out until ``drain_until`` at most."""
        self.stopped = True
        self.drain_until = max(self.drain_until, drain_until)

    def finished(self, now: float) -> bool:
        """True when the lane has nothing more to send, ever."""
        if self.ending and not self.outbox:
            return True
        return self.stopped and (not self.outbox or now >= self.drain_until)
