"""Area 6, security: what authentication costs a peer's one-way throughput.

The same one-way row as area 2's ``Peer.send`` over tcp (a source peer sends
n anchor messages and flushes; the sink peer's handler counts them; names
resolved by the run's dispatcher), twice in the same run: without an
authenticator, and with ``HmacAuthenticator`` sealing every frame on the
source and checking it (MAC, time window, replay table) on the sink.  Both
processes build the authenticator identically from one fresh 32-byte secret
the runner makes for the row and hands them on their command line.
"""
from __future__ import annotations

import secrets
from collections.abc import Callable
from typing import Any

import posa
from bench import ONEWAY, Bench, Goal
from bench.anchors import N_ONEWAY
from bench.common import emit, make_msg, oneway_metrics, ready, send_stream, wait_release
from bench.peer import _Counter
from posa.security import HmacAuthenticator, Keyring

MODULE = "bench.security"
KEY_ID = "bench"


def _authenticator(secret: str | None) -> HmacAuthenticator | None:
    """None without a secret; else an HMAC authenticator over the one shared key."""
    if secret is None:
        return None
    return HmacAuthenticator(Keyring({KEY_ID: bytes.fromhex(secret)}))


# ------------------------------------------------------------- process roles
def role_sink(dispatcher: str, name: str, listen: str, n: int, secret: str | None) -> None:
    counter = _Counter(n)
    with posa.RegistryClient(dispatcher) as reg:
        with posa.Peer(name, registry=reg, listen=listen, handler=counter,
                       authenticator=_authenticator(secret)):
            ready()
            counter.wait()
            emit(counter.result())
            wait_release()      # stay up until the source has flushed (seen every ack)


def role_source(dispatcher: str, target: str, listen: str, n: int,
                secret: str | None) -> None:
    with posa.RegistryClient(dispatcher) as reg:
        with posa.Peer(f"bench/source-{secrets.token_hex(3)}", registry=reg, listen=listen,
                       authenticator=_authenticator(secret)) as peer:
            send = peer.send
            result = send_stream(lambda i: send(target, make_msg(i), timeout=30.0), n)
            peer.flush(30.0)
            emit(result)


# ------------------------------------------------------------------ the rows
def _oneway(auth: bool) -> Callable[[Any, int], dict[str, Any]]:
    def run(ctx: Any, n: int) -> dict[str, Any]:
        dispatcher = ctx.dispatcher()
        secret = secrets.token_bytes(32).hex() if auth else None
        sink_name = f"bench/sink-{secrets.token_hex(3)}"
        sink = ctx.spawn(MODULE, "sink", hold=True, dispatcher=dispatcher, name=sink_name,
                         listen=ctx.address("tcp"), n=n, secret=secret)
        sink.wait_ready()
        source = ctx.spawn(MODULE, "source", dispatcher=dispatcher, target=sink_name,
                           listen=ctx.address("tcp"), n=n, secret=secret)
        received = sink.wait_result()
        sent = source.result()
        sink.result()
        result = oneway_metrics(sent, received, n)
        result["complete"] = result["complete"] and received["out_of_order"] == 0
        return result
    return run


BENCHES = [
    Bench("sec_send_off", "Peer.send one-way, tcp, no authenticator", _oneway(False),
          N_ONEWAY, ONEWAY),
    Bench("sec_send_hmac", "Peer.send one-way, tcp, HmacAuthenticator on both peers",
          _oneway(True), N_ONEWAY, ONEWAY),
]

SECURITY = "security"
GOALS = [
    Goal("sec-auth", SECURITY, "Peer.send (tcp) with authentication ≥ 0.7× without",
         ("sec_send_hmac", "msgs_per_s"), ("sec_send_off", "msgs_per_s"), ">=", 0.7),
]
