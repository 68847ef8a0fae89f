"""``python -m posa.gateway.view [options]``: the same as ``posa view`` (docs/web.md)."""
from __future__ import annotations

import sys

from posa.cli import main

if __name__ == "__main__":
    sys.exit(main(["view", *sys.argv[1:]]))
