#!/usr/bin/env bash
# Make the benchmark-only environment: posa (editable, with its dependencies)
# plus what the anchors and the plot need (Pyro5, nats-py, matplotlib), in a
# virtual environment of its own, so the project's environment stays as it is;
# and nats-server from Debian if it is missing and we are root.
#
#   bash bench/setup.sh                       # -> /tmp/posa-bench-venv
#   POSA_BENCH_VENV=DIR bash bench/setup.sh
#   /tmp/posa-bench-venv/bin/python -m bench  # then, from the repository's root
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${POSA_BENCH_VENV:-/tmp/posa-bench-venv}"
PYTHON="${POSA_BENCH_PYTHON:-python3}"

if [ ! -x "$VENV/bin/python" ]; then
    echo "creating $VENV" >&2
    "$PYTHON" -m venv "$VENV"
fi
"$VENV/bin/pip" install -q -e "$ROOT" Pyro5 nats-py matplotlib

if ! command -v nats-server >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ]; then
        echo "installing nats-server (Debian package)" >&2
        apt-get install -y -q nats-server >/dev/null 2>&1 \
            || { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q nats-server >/dev/null 2>&1; } \
            || echo "nats-server unavailable: the NATS rows will be skipped" >&2
    else
        echo "nats-server not found (not root, not installed): the NATS rows will be skipped" >&2
    fi
fi
echo "ready: cd $ROOT && $VENV/bin/python -m bench" >&2
