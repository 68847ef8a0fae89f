"""Pipes and filters: sentences through three filter stages joined by work queues.

    normalize  ->  tokenize  ->  summarize
    (strip,        (words;        (count, longest word)
     lower case)    drop empty)

The stages are a list: reorder, add or remove entries to change the pipeline.
Each stage runs N competing instances; the queues between stages drop
duplicate outputs, so an instance that dies mid-item changes nothing.

    python examples/pipeline.py                     # demo: everything in this process
    python examples/pipeline.py stage tokenize --dispatcher tcp://127.0.0.1:7000
    python examples/pipeline.py run --dispatcher tcp://127.0.0.1:7000 --items 1000

``stage`` runs instances of one stage (it prints "ready" once they run, and
with --trace "item KEY" for each item it starts); ``run`` hosts the queues,
feeds the items and prints the outputs' summary as JSON.
"""
from __future__ import annotations

import argparse
import json
import signal
import threading
import time
from collections.abc import Sequence
from typing import Any

import posa

NAME = "pipe/text"


def normalize(sentence: str) -> str:
    return " ".join(sentence.split()).lower()


def tokenize(sentence: str) -> list[str] | None:
    words = [word.strip(".,;:!?") for word in sentence.split()]
    return [word for word in words if word] or None        # None: drop the item


def summarize(words: list[str]) -> dict[str, Any]:
    return {"words": len(words), "longest": max(words, key=lambda w: (len(w), w))}


STAGES = [
    {"name": "normalize", "filter": normalize, "instances": 2},
    {"name": "tokenize", "filter": tokenize, "instances": 2},
    {"name": "summarize", "filter": summarize, "instances": 1},
]


def sentences(n: int) -> list[str]:
    words = ["Pipes", "and", "filters", "decompose", "a", "task", "into", "reusable",
             "steps", "!", "  "]
    return [" ".join(words[(i * 7 + j) % len(words)] for j in range(1 + i % 9))
            for i in range(n)]


def sequential(items: Sequence[str]) -> list[Any]:
    """The same computation without a pipeline: the reference result."""
    out = []
    for item in items:
        value: Any = item
        for stage in STAGES:
            value = stage["filter"](value)  # type: ignore[operator]
            if value is None:
                break
        else:
            out.append(value)
    return out


def demo() -> None:
    items = sentences(200)
    with posa.Pipeline(NAME, STAGES) as pipeline:
        outputs = pipeline.run(items, timeout=60)
        done = {stage: m["done"] for stage, m in pipeline.metrics().items()}
    assert outputs == sequential(items), "pipeline and sequential results differ"
    print(f"{len(items)} sentences -> {len(outputs)} summaries, same as sequential; "
          f"done per stage: {done}")


def run_stage(args: argparse.Namespace) -> None:
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    stages = [dict(stage) for stage in STAGES]
    if args.trace:
        for stage in stages:
            if stage["name"] == args.stage:
                stage["filter"] = _traced(stage["filter"])
    registry = posa.RegistryClient(args.dispatcher)
    workers = posa.Pipeline.start_instances(NAME, stages, args.stage, count=args.instances,
                                            registry=registry, listen="tcp://127.0.0.1:0")
    print("ready", flush=True)
    try:
        while not stop.wait(0.5):
            pass
    finally:
        for worker in workers:
            worker.stop()
        for worker in workers:
            worker.close()
        registry.close()


def _traced(function: Any) -> Any:
    def traced(value: Any) -> Any:
        print("item", flush=True)
        return function(value)
    return traced


def run_pipeline(args: argparse.Namespace) -> None:
    items = sentences(args.items)
    registry = posa.RegistryClient(args.dispatcher)
    try:
        with posa.Pipeline(NAME, STAGES, registry=registry, listen="tcp://127.0.0.1:0",
                           local=False, visibility=args.visibility) as pipeline:
            print("queues ready", flush=True)
            started = time.monotonic()
            outputs = pipeline.run(items, timeout=args.timeout)
            elapsed = time.monotonic() - started
    finally:
        registry.close()
    print(json.dumps({"outputs": len(outputs), "same": outputs == sequential(items),
                      "elapsed": elapsed}))


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    sub = parser.add_subparsers(dest="role")
    p = sub.add_parser("stage", help="run instances of one stage until SIGTERM")
    p.add_argument("stage", choices=[stage["name"] for stage in STAGES])
    p.add_argument("--dispatcher", required=True)
    p.add_argument("--instances", type=int, default=1)
    p.add_argument("--trace", action="store_true", help='print "item" per item started')
    p = sub.add_parser("run", help="host the queues, feed sentences, print a summary")
    p.add_argument("--dispatcher", required=True)
    p.add_argument("--items", type=int, default=1000)
    p.add_argument("--visibility", type=float, default=10.0)
    p.add_argument("--timeout", type=float, default=120.0)
    args = parser.parse_args(argv)
    if args.role == "stage":
        run_stage(args)
    elif args.role == "run":
        run_pipeline(args)
    else:
        demo()


if __name__ == "__main__":
    main()
