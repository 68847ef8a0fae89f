"""The anchor of the gateway's request-reply row: Pyro5's own HTTP gateway.

Three processes of Pyro5's and one client: a Pyro5 name server, a daemon
serving an echo object registered there as ``http.echo`` (the gateway exposes
names matching ``^http\\.``, its default), and ``python -m
Pyro5.utils.httpgateway`` as Pyro5 documents it (its wsgiref server, one
request at a time, JSON), which finds the object through the name server.
The client is ``bench.gateway``'s: sequential ``POST
/pyro/http.echo/echo?seq=i&body=...`` on one ``http.client`` connection
(Pyro5's gateway passes the query string as the call's arguments and answers
the call's result as JSON).  wsgiref speaks HTTP/1.0 and closes every
connection after its response, so the client connects again for each call:
that, and a name-server lookup and a new proxy per call, is what Pyro5's
gateway costs as shipped.
"""
from __future__ import annotations

import importlib.util
import sys
import threading
from typing import Any

from bench.common import HARD_LIFETIME_S, emit, ready, wait_release
from bench.cpu import at_ready
from bench.process import Proc

MODULE = "bench.pyro_http"
BODY = "x" * 83


def role_ns() -> None:
    from Pyro5 import nameserver

    uri, daemon, _ = nameserver.start_ns("127.0.0.1", 0, enableBroadcast=False)
    threading.Thread(target=lambda: (wait_release(), daemon.shutdown()), daemon=True).start()
    ready(str(uri.port))
    daemon.requestLoop()
    daemon.close()
    emit({})


def role_server(ns_port: int) -> None:
    import Pyro5.api

    @Pyro5.api.expose
    class Echo:
        def echo(self, seq: Any, body: Any) -> Any:
            return {"seq": seq, "body": body}

    daemon = Pyro5.api.Daemon(host="127.0.0.1", port=0)
    uri = daemon.register(Echo())
    with Pyro5.api.locate_ns("127.0.0.1", ns_port) as ns:
        ns.register("http.echo", uri)
    threading.Thread(target=lambda: (wait_release(), daemon.shutdown()), daemon=True).start()
    ready(str(uri))
    daemon.requestLoop()
    emit({})


def role_client(url: str, n: int) -> None:
    from bench.gateway import http_calls

    emit(http_calls(url, lambda i: f"/pyro/http.echo/echo?seq={i}&body={BODY}",
                    lambda i: None, n))


def pyro_http_calls(ctx: Any, n: int) -> dict[str, Any]:
    """The anchor row (``bench.anchors.ANCHORS["pyro_http"]``)."""
    if importlib.util.find_spec("Pyro5") is None:
        from bench.runner import Skip
        raise Skip(f"{sys.executable} cannot import Pyro5: pip install Pyro5 "
                   "(bash bench/setup.sh does it)")
    ns = ctx.spawn(MODULE, "ns", hold=True)
    ns_port = int(ns.wait_ready())
    server = ctx.spawn(MODULE, "server", hold=True, ns_port=ns_port)
    server.wait_ready()
    env = dict(ctx.env, PYRO_NS_HOST="127.0.0.1", PYRO_NS_PORT=str(ns_port),
               PYTHONUNBUFFERED="1")
    gateway = Proc([ctx.python, "-m", "Pyro5.utils.httpgateway", "-H", "127.0.0.1",
                    "-p", "0"], group=ctx.group, env=env)
    line = gateway.wait_line("Pyro HTTP gateway running on", timeout=60)
    at_ready(gateway.p.pid)
    url = line.split()[-1].removesuffix("/pyro/")
    result: dict[str, Any] = ctx.spawn(MODULE, "client", url=url,
                                       n=n).result(timeout=HARD_LIFETIME_S)
    server.result(timeout=10)
    ns.result(timeout=10)
    return result
