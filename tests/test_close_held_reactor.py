"""A handler that never returns holds its reactor: closing its peer, or a service
stopped by SIGTERM, waits for it no longer than ``linger`` (close() waited 10 s for
each step that needed the reactor: a SIGTERMed service with a grace of 1 s took 21 s
to stop)."""
from __future__ import annotations

import signal
import subprocess
import sys
import threading

import pytest

import posa

pytestmark = pytest.mark.timeout(120)

HELD = 60.0        # s the handlers here hold their reactor at the most


@pytest.mark.parametrize("listen", ["inproc://held", "tcp://127.0.0.1:0"])
def test_close_of_a_peer_whose_handler_never_returns_is_bounded_by_linger(
        registry: posa.LocalRegistry, listen: str) -> None:
    entered, release = threading.Event(), threading.Event()

    def handler(message: posa.Message) -> object:
        entered.set()
        release.wait(HELD)
        return message.body

    reactor = posa.Reactor("held")
    reactor.start()
    server = posa.Peer("svc/held", registry=registry, listen=listen, handler=handler,
                       linger=0.5, reactor=reactor)
    try:
        with posa.Peer("cli/held", registry=registry, linger=0.5) as client:
            caller = threading.Thread(target=_request, args=(client,), daemon=True)
            caller.start()
            assert entered.wait(30)
            closing = threading.Thread(target=server.close, daemon=True)
            closing.start()
            closing.join(HELD / 6)          # linger 0.5 s, then the reactor's 1 s at least
            assert not closing.is_alive(), "close() waited for a handler that never returns"
            with pytest.raises(posa.NameNotFound):
                registry.lookup("svc/held")
            release.set()
        caller.join(HELD)                   # (woken by its peer's close)
        # the reactor, let go, serves the peers that use it
        with posa.Peer("svc/after", registry=registry, listen=listen.replace("held", "after"),
                       handler=lambda m: m.body, reactor=reactor) as again, \
                posa.Peer("cli/after", registry=registry) as other:
            assert other.request(again.name, 2, timeout=20) == 2
    finally:
        release.set()
        server.close()
        reactor.close()


def _request(client: posa.Peer) -> None:
    try:
        client.request("svc/held", 1, timeout=HELD)
    except posa.PosaError:
        pass                                # (its answer is not the point)


SERVICE = """
import threading, posa
from posa.ops import serve_until_signalled
def handler(message):
    print("IN", flush=True)
    threading.Event().wait(600)
with posa.LocalRegistry() as registry:
    server = posa.Peer("svc/held", registry=registry, listen="tcp://127.0.0.1:0",
                       handler=handler, linger=1.0)
    client = posa.Peer("cli/held", registry=registry)
    threading.Thread(target=lambda: client.request("svc/held", 1, timeout=600),
                     daemon=True).start()
    serve_until_signalled([server], grace=1.0, ready=lambda: print("READY", flush=True))
print("DONE", flush=True)
"""


def test_sigterm_stops_a_service_whose_handler_never_returns_after_grace_and_linger(
        ) -> None:
    service = subprocess.Popen([sys.executable, "-c", SERVICE], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    try:
        assert service.stdout is not None
        lines = [service.stdout.readline().strip() for _ in range(2)]
        assert sorted(lines) == ["IN", "READY"], lines
        service.send_signal(signal.SIGTERM)
        out, err = service.communicate(timeout=HELD / 4)   # grace 1 s + linger 1 s
        assert service.returncode == 0, err
        assert out.strip() == "DONE"
        assert "still in flight after the grace period" in err
    finally:
        if service.poll() is None:
            service.kill()
            service.communicate()
