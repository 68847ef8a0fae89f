"""Group sends: one message to every member of a group, every member tried.

The members come as the caller lists them; ``Peer`` reads the group's names from
the registry page by page (``posa.naming.pages.registrations``), so a group of any
size is listed in replies that stay far below the frame limit.

A group send goes through the calling thread's ``Forwarder``, so each member gets
it in order with the thread's other messages to that member, once.  It ends when
every member has *acknowledged* it, or at the deadline: the caller learns which
members got it, not only which connections took the bytes (a member killed after
the last send still takes a write or two).

No member waits on another.  Members are served in rounds of growing time slices
(``SLICE`` doubling up to ``MAX_SLICE``): in each round a member not reached yet
gets one attempt to hand it the message, and a member that holds it unacknowledged
gets one slice of recovery (reconnect, re-resolve, resend) and of waiting for its
acknowledgement (``Forwarder.flush`` with ``pause``: the end of a slice gives
nothing up, the message stays in the member's stream).  The attempt is bounded by
its slice the same way (``Flow.send_in_slice``): a write that fails, after its
bytes may have left, keeps the message in the stream, and the recovery goes on
in the next rounds; sent again on a new stream, a copy that had arrived would
be handled twice.  A dead member costs the live ones one slice, never the
deadline; one that comes back before the deadline is reached.  A member that has
not acknowledged the message by the deadline failed, with the last error its
attempts met; like any ``Timeout`` of a send, its message is given up: posa does
not send it again.

On a reactor thread (a handler's group send) acknowledgements cannot be awaited:
members in this process are served by that very thread.  There (``confirm=False``)
a member counts as reached once the message is in its stream.
"""
from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

from posa.delivery.budget import no_send_deadline
from posa.delivery.forwarder import Forwarder
from posa.errors import Closed, NameNotFound, PartialDelivery, PosaError, Timeout

__all__ = ["send_to_group", "SLICE", "MAX_SLICE"]

SLICE = 0.05        # s a member gets in the first round
MAX_SLICE = 1.0     # s at most per member and round (a restarted member is seen by then)


def send_to_group(fwd: Forwarder, pattern: str, members: Iterable[str], body: Any,
                  headers: dict[str, Any] | None, deadline: float, confirm: bool = True
                  ) -> int:
    """Send ``body`` to every name of ``members`` (the group ``pattern``) through
    ``fwd`` by ``deadline``; return how many got it (acknowledged it, with
    ``confirm``). Raises ``PartialDelivery`` (after every member was tried) when
    some did not. A ``deadline`` that is no time (nan, infinite) is refused
    with ``ValueError`` before anything is sent (its waits would never end)."""
    if deadline - deadline:     # nan for nan and infinities, 0.0 for any time
        raise no_send_deadline(deadline)
    members = list(members)         # (a generator over the registry's pages, read once)
    unsent = list(members)          # nothing of the message in their stream yet
    unconfirmed: list[str] = []     # in their stream, not yet acknowledged
    errors: dict[str, PosaError] = {}
    step = SLICE
    while unsent or unconfirmed:
        started = time.monotonic()
        final = started >= deadline
        for member in list(unsent):
            if _hand_over(fwd, member, body, headers, min(deadline, time.monotonic() + step),
                          deadline, errors):
                unconfirmed.append(member)
            if member in unconfirmed or isinstance(errors.get(member), NameNotFound):
                unsent.remove(member)   # a member that left the group is not retried
        if not confirm:
            unconfirmed.clear()         # in their streams: reached, as far as we can tell
        for member in list(unconfirmed):
            if _confirm(fwd, member, min(deadline, time.monotonic() + step), deadline, final,
                        errors):
                unconfirmed.remove(member)      # acknowledged, or given up (in errors)
        if final:
            break
        rest = min(deadline, started + step) - time.monotonic()
        if (unsent or unconfirmed) and rest > 0:
            time.sleep(rest)    # back off: a refused connection fails at once
        step = min(step * 2, MAX_SLICE)
    failed = {member: errors.get(member) or Timeout(f"{member!r} did not acknowledge "
                                                    "in time")
              for member in members if member in errors or member in unconfirmed}
    if failed:
        raise PartialDelivery(pattern, [m for m in members if m not in failed], failed)
    return len(members)


def _hand_over(fwd: Forwarder, member: str, body: Any, headers: dict[str, Any] | None,
               until: float, deadline: float, errors: dict[str, PosaError]) -> bool:
    """One attempt, until ``until``, to put the message into ``member``'s stream;
    True if it is there (written, or kept for recovery after a failed write).
    Nothing is given up before ``deadline``: a message whose write failed after
    its bytes left may have arrived, and sent again on a new stream it would be
    handled twice."""
    try:
        if not fwd.send_in_slice(member, body, headers, deadline, until):
            errors[member] = Timeout(f"no room to send to {member!r}: {fwd.window} "
                                     "messages to it were not acknowledged in time")
            return False        # the slice ended waiting for room: nothing sent
    except Closed:
        if fwd.closed:
            raise               # this peer is closed: nothing can be sent
        errors[member] = Closed(f"the connection to {member!r} closed")
        return False
    except PosaError as exc:
        errors[member] = exc
        return fwd.knows(member)
    errors.pop(member, None)
    return True


def _confirm(fwd: Forwarder, member: str, until: float, deadline: float, final: bool,
             errors: dict[str, PosaError]) -> bool:
    """Wait until ``until`` for ``member`` to acknowledge everything sent to it
    (resending as the forwarder does, and giving nothing up before ``deadline``);
    True once settled: it did, or the forwarder gave its messages up (a send
    Timeout is final), which leaves its error."""
    if not fwd.knows(member):
        errors.setdefault(member, Timeout(f"gave up the message to {member!r}"))
        return True
    try:
        if final:
            fwd.poll(member)    # at the deadline: read the acknowledgements already in
            fwd.flush(until, names=(member,))
        else:                   # a slice: unacknowledged, it stays in the stream
            fwd.flush(deadline, names=(member,), pause=until)
            if fwd.in_flight(member):
                return False
    except PosaError as exc:
        errors[member] = exc
        return False
    errors.pop(member, None)
    return True
