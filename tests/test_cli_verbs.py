"""The verbs of the ``posa`` command, run as real processes against a real
dispatcher, event channel, service and ``posa reply`` peers.

No test waits on time: a command's output is read with deadlines, a tail is
given ``--count`` and its events come from the channel's history when they were
published before it subscribed (``--from-seq``), so either order works.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from posa.cli import build_parser
from tests.support import ROOT, Proc, free_port, start_dispatcher

pytestmark = pytest.mark.timeout(120)


def run_posa(*args: str, env: dict[str, str] | None = None, timeout: float = 60.0
             ) -> subprocess.CompletedProcess[str]:
    """``posa ARGS`` in a fresh process; the environment's POSA_* settings cleared."""
    environment = {k: v for k, v in os.environ.items() if not k.startswith("POSA_")}
    environment.update(PYTHONPATH=str(ROOT), **(env or {}))
    return subprocess.run([sys.executable, "-m", "posa", *args], capture_output=True,
                          text=True, cwd=ROOT, env=environment, timeout=timeout)


@dataclass
class System:
    dispatcher: str
    ops: str
    procs: list[Proc]

    def posa(self, *args: str, **kwargs: object) -> subprocess.CompletedProcess[str]:
        return run_posa(args[0], "--dispatcher", self.dispatcher, *args[1:],
                        **kwargs)  # type: ignore[arg-type]

    def start(self, *args: str) -> Proc:
        proc = Proc.posa(args[0], "--dispatcher", self.dispatcher, *args[1:])
        self.procs.append(proc)
        return proc


SERVICE = """
import sys, threading, posa
server = posa.Server("svc/echo", lambda body: {"echo": body}, dispatcher=sys.argv[1])
print("serving", flush=True)
sys.stdin.read()
"""


@pytest.fixture(scope="module")
def system(tmp_path_factory: pytest.TempPathFactory) -> Iterator[System]:
    ops = free_port()
    dispatcher, address = start_dispatcher("--ops-port", str(ops))
    procs = [dispatcher]
    try:
        s = System(address, f"http://127.0.0.1:{ops}", procs)
        s.start("channel", "events/demo").expect("channel events/demo at")
        service = Proc.python(SERVICE, address)
        procs.append(service)
        service.expect("serving")
        s.start("reply", "lab/echo").expect("replying as lab/echo")
        s.start("reply", "lab/upper", "--", "tr", "a-z", "A-Z").expect("replying as")
        s.start("reply", "lab/fail", "--", "sh", "-c", "echo boom >&2; exit 3"
                ).expect("replying as")
        yield s
    finally:
        for proc in reversed(procs):
            proc.close()


def test_pub_then_sub_replays_the_history(system: System) -> None:
    for topic, body in (("link/down", '{"link": "r1-r2"}'), ("port/up", "3")):
        done = system.posa("pub", "events/demo", topic, body, "--json")
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout) == {"published": "events/demo", "topic": topic}
    done = system.posa("sub", "events/demo", "--from-seq", "1", "--count", "2", "--json")
    assert done.returncode == 0, done.stderr
    events = [json.loads(line) for line in done.stdout.splitlines()]
    assert [(e["topic"], e["body"]) for e in events][:2] == [
        ("link/down", {"link": "r1-r2"}), ("port/up", 3)]
    done = system.posa("sub", "events/demo", "port/", "--from-seq", "1", "--count", "1")
    assert done.returncode == 0 and "port/up\t3" in done.stdout, done.stderr


def test_sub_is_a_live_tail(system: System) -> None:
    head = system.posa("pub", "events/demo", "tail/first", "1", "--json")
    assert head.returncode == 0, head.stderr
    first = json.loads(system.posa("sub", "events/demo", "tail/", "--from-seq", "1",
                                   "--count", "1", "--json").stdout)["seq"]
    tail = system.start("sub", "events/demo", "tail/", "--from-seq", str(first + 1),
                        "--count", "2", "--json")
    for n in (2, 3):        # published while the tail runs (or before: then replayed)
        assert system.posa("pub", "events/demo", "tail/next", str(n)).returncode == 0
    assert [json.loads(tail.line())["body"] for _ in range(2)] == [2, 3]
    assert tail.popen.wait(30) == 0


def test_send_to_an_event_channel_says_to_publish(system: System) -> None:
    done = system.posa("send", "events/demo", '{"op": "nothing"}')
    assert done.returncode == 2
    assert "event channel" in done.stderr and "posa pub events/demo" in done.stderr
    done = system.posa("pub", "lab/echo", "t", "1")
    assert done.returncode == 2 and "not an event channel" in done.stderr


def test_send_reaches_every_member_of_a_group(system: System) -> None:
    members = [system.start("reply", f"grp/m{i}") for i in range(2)]
    for member in members:
        member.expect("replying as")
    done = system.posa("send", "grp/*", '"hello all"', "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"sent": "grp/*", "to": ["grp/m0", "grp/m1"]}
    for member in members:       # acknowledged means delivered: each printed it
        assert member.expect("message from") == '(anonymous): "hello all"'
    done = system.posa("send", "nobody/*", "1")
    assert done.returncode == 3 and "nobody/*" in done.stderr


def test_request_is_answered_by_posa_reply(system: System) -> None:
    done = system.posa("request", "lab/echo", '{"x": [1, 2]}', "--json")
    assert (done.returncode, json.loads(done.stdout)) == (0, {"x": [1, 2]}), done.stderr
    done = system.posa("request", "lab/upper", '"shout"')
    assert (done.returncode, done.stdout) == (0, 'SHOUT\n'), done.stderr
    done = system.posa("request", "lab/fail", "1")
    assert done.returncode == 1 and "boom" in done.stderr


def test_call_reaches_a_service_that_request_cannot(system: System) -> None:
    assert "svc/echo" in system.posa("services").stdout
    done = system.posa("call", "svc/echo", "[1, 2]", "--json")
    assert (done.returncode, json.loads(done.stdout)) == (0, {"echo": [1, 2]}), done.stderr
    done = system.posa("request", "svc/echo", "1")
    assert done.returncode == 3 and "posa call svc/echo" in done.stderr
    done = system.posa("call", "svc/none")
    assert done.returncode == 3 and "svc/none" in done.stderr


def test_ping_prints_round_trip_times(system: System) -> None:
    for name in ("lab/echo", "posa/dispatcher"):
        done = system.posa("ping", name, "--count", "2", "--interval", "0", "--json")
        assert done.returncode == 0, done.stderr
        lines = [json.loads(line) for line in done.stdout.splitlines()]
        assert [line["seq"] for line in lines] == [1, 2]
        assert all(isinstance(line["ms"], float) and line["ms"] >= 0 for line in lines)
    done = system.posa("ping", "lab/echo", "--count", "1")
    assert "1 sent, 1 answered, rtt min/avg/max" in done.stdout
    assert system.posa("ping", "lab/none", "--count", "1").returncode == 3


def test_watch_prints_registrations_as_they_change(system: System) -> None:
    leaving = system.start("reply", "watched/a", "--count", "1")
    leaving.expect("replying as")
    watch = system.start("watch", "watched/**", "--count", "2", "--json")
    assert watch.json("")["name"] == "watched/a"        # the listing, taken after the watch
    coming = system.start("reply", "watched/b")
    coming.expect("replying as")
    assert system.posa("request", "watched/a", "1").returncode == 0  # then it exits
    changes = {(c["change"], c["name"]) for c in (json.loads(watch.line()) for _ in range(2))}
    assert changes == {("+", "watched/b"), ("-", "watched/a")}
    assert watch.popen.wait(30) == 0


def test_top_shows_names_services_and_counters(system: System) -> None:
    done = system.posa("top", "--once", "--json", "--ops", system.ops)
    assert done.returncode == 0, done.stderr
    frame = json.loads(done.stdout)
    assert {"posa/dispatcher", "lab/echo", "events/demo"} <= {n["name"] for n in frame["names"]}
    assert "svc/echo" in frame["services"] and frame["metrics"] is True
    assert frame["received"] > 0 and isinstance(frame["refusals"], dict)
    done = system.posa("top", "--once", "--ops", system.ops)
    assert done.returncode == 0 and "services 1" in done.stdout and "refusals" in done.stdout


def test_names_that_match_nothing_say_so(system: System) -> None:
    done = system.posa("names", "demo")
    assert done.returncode == 3
    assert "no live name matches 'demo'" in done.stderr and "demo/**" in done.stderr
    done = system.posa("names", "lab/*", "--json")
    assert done.returncode == 0 and "lab/echo" in done.stdout


def test_bad_json_is_bad_usage(system: System) -> None:
    for verb in ("send", "request", "pub"):
        args = [verb, "events/demo", *(["topic"] if verb == "pub" else []), "{bad"]
        done = system.posa(*args)
        assert done.returncode == 2, (verb, done.stderr)
        assert "must be JSON" in done.stderr


def test_version_and_every_verb_shows_an_example() -> None:
    from posa import __version__
    done = run_posa("--version")
    assert (done.returncode, done.stdout.strip()) == (0, f"posa {__version__}")
    parser = build_parser()
    verbs = next(a for a in parser._actions if hasattr(a, "choices") and a.choices
                 and "names" in a.choices).choices
    for verb in ("pub", "sub", "send", "request", "call", "reply", "ping", "watch", "top",
                 "names", "services", "context", "completion"):
        assert "example" in verbs[verb].format_help(), verb


def test_reply_answers_with_its_command_output(system: System, tmp_path: Path) -> None:
    script = tmp_path / "answer.sh"
    script.write_text('read body; echo "{\\"got\\": $body, \\"from\\": \\"$POSA_SENDER\\"}"\n')
    replier = system.start("reply", "lab/script", "--count", "1", "--json", "--",
                           "sh", str(script))
    replier.expect('{"address"')
    done = system.posa("request", "lab/script", "[7]", "--json")
    assert (done.returncode, json.loads(done.stdout)) == (0, {"got": [7], "from": ""})
    assert json.loads(replier.line())["request"] == [7]
    assert replier.popen.wait(30) == 0


def test_a_client_on_the_wrong_transport_is_told_what_to_check(system: System) -> None:
    wrong = system.dispatcher.replace("tcp://", "zmq+tcp://")
    done = run_posa("names", "--dispatcher", wrong, "--timeout", "1")
    assert done.returncode == 4
    assert f"is a posa dispatcher listening at {wrong}, on that transport?" in done.stderr
