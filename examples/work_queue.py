"""Work queue: count the words of every file in a directory with competing workers.

The source lists the files (``DirectorySource``), the queue hands each to one
worker, a worker that dies has its file handed to another after the visibility
timeout, and the queue reports progress and how many workers it advises.

    python examples/work_queue.py            # 300 files, 3 workers, in this process
"""
from __future__ import annotations

import random
import tempfile
from pathlib import Path

import posa

QUEUE = "work/wordcount"


def count_words(item: posa.Item) -> int:
    """The executor: one file in, its word count out."""
    return len(Path(item.data["path"]).read_text().split())


def main() -> None:
    rng = random.Random(3)
    words = ["work", "queue", "item", "lease", "worker", "source", "done"]
    with tempfile.TemporaryDirectory() as tmp:
        expected = {}
        for i in range(300):
            n = rng.randrange(1, 200)
            Path(tmp, f"doc-{i:03}.txt").write_text(" ".join(rng.choices(words, k=n)))
            expected[f"doc-{i:03}.txt"] = n
        counts: dict[str, int] = {}
        with posa.WorkQueue(QUEUE, source=posa.DirectorySource(tmp, "*.txt"),
                            visibility=5.0, on_done=counts.__setitem__) as queue:
            workers = [posa.Worker(f"{QUEUE}/worker-{i}", QUEUE, count_words).start()
                       for i in range(3)]
            try:
                metrics = queue.join(60)
            finally:
                for worker in workers:
                    worker.stop()
                for worker in workers:
                    worker.close()
    assert counts == expected, "a file was lost or counted wrongly"
    print(f"{QUEUE} {bar(metrics['done'], metrics['total'])} {metrics['done']}/"
          f"{metrics['total']} dead {metrics['dead']} duplicates {metrics['duplicates']}")
    print(f"{len(counts)} files, {sum(counts.values())} words, each file done once; "
          f"per worker {[w.stats['processed'] for w in workers]}")


def bar(done: int, total: int, width: int = 30) -> str:
    filled = width * done // total if total else 0
    return f"[{'#' * filled}{'.' * (width - filled)}]"


if __name__ == "__main__":
    main()
