"""``Standing``, the federated dispatchers found dead (sans-IO: the time is passed
in): one found dead is answered for at once, pinged by one request at a time
once its back-off has passed, the back-off doubling to its bound."""
from __future__ import annotations

from posa.dispatch.federation import Standing
from posa.errors import TransportError

B = "tcp://127.0.0.1:7001"


def test_a_dispatcher_never_found_dead_is_asked() -> None:
    assert Standing().verdict(B, 0.0) == (None, False)


def test_one_found_dead_is_answered_for_at_once_and_pinged_once_due() -> None:
    standing = Standing(first=1.0, longest=4.0)
    standing.failed(B, TransportError("refused"), 10.0)
    error, ping = standing.verdict(B, 10.5)
    assert isinstance(error, TransportError) and "refused" in str(error)
    assert "0.5 s ago" in str(error) and not ping
    assert standing.verdict(B, 11.0)[1]         # due: this request starts the ping
    assert not standing.verdict(B, 11.1)[1]     # one ping at a time
    assert standing.answered(B)
    assert standing.verdict(B, 11.2) == (None, False)
    assert not standing.answered(B)


def test_the_back_off_doubles_to_its_bound_while_it_stays_dead() -> None:
    standing = Standing(first=1.0, longest=4.0)
    now = 0.0
    standing.failed(B, TransportError("refused"), now)
    waits = []
    for _ in range(5):
        due = next(now + step / 2 for step in range(20) if standing.verdict(B, now + step / 2)[1])
        waits.append(due - now)
        now = due
        standing.failed(B, TransportError("refused"), now)     # the ping failed
    assert waits == [1.0, 2.0, 4.0, 4.0, 4.0]
    error, _ = standing.verdict(B, now)
    assert f"{now:.1f} s ago" in str(error)     # dead since it was first found dead
