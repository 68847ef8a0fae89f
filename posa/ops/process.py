"""The process's own metrics, under the names every Prometheus client library uses.

``process_cpu_seconds_total``, ``process_resident_memory_bytes``,
``process_virtual_memory_bytes``, ``process_open_fds``, ``process_max_fds`` and
``process_start_time_seconds`` (seconds since the Unix epoch), as
``prometheus_client``'s process collector names them, so dashboards made for
any Prometheus-instrumented process work unchanged.  On Linux they are read
from ``/proc/self`` when asked; elsewhere what ``resource`` knows (CPU time,
the descriptor limit).  Nothing is kept between reads.
"""
from __future__ import annotations

import os
import resource
import time
from collections.abc import Iterator
from typing import ClassVar

__all__ = ["ProcessMetrics"]

_PROC = "/proc/self"


class ProcessMetrics:
    """Samples of this process, read at each call of ``samples`` (a monitor source)."""

    HELP: ClassVar[dict[str, tuple[str, str]]] = {
        "process_cpu_seconds_total": ("counter", "user and system CPU time spent, seconds"),
        "process_resident_memory_bytes": ("gauge", "resident memory size, bytes"),
        "process_virtual_memory_bytes": ("gauge", "virtual memory size, bytes"),
        "process_open_fds": ("gauge", "open file descriptors"),
        "process_max_fds": ("gauge", "the soft limit on open file descriptors"),
        "process_start_time_seconds": ("gauge", "start time of the process since the Unix "
                                       "epoch, seconds"),
    }

    def __init__(self, proc: str = _PROC) -> None:
        self._proc = proc
        self._linux = os.path.isdir(proc)
        self._start: float | None = None

    def samples(self) -> Iterator[tuple[str, dict[str, str], float]]:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        yield "process_cpu_seconds_total", {}, usage.ru_utime + usage.ru_stime
        if self._linux:
            try:
                yield from self._linux_samples()
            except (OSError, ValueError, IndexError):
                pass        # /proc changed shape or went away: what was read stands
        yield "process_max_fds", {}, float(resource.getrlimit(resource.RLIMIT_NOFILE)[0])

    def _linux_samples(self) -> Iterator[tuple[str, dict[str, str], float]]:
        with open(f"{self._proc}/stat", "rb") as f:
            # the command name (field 2) may hold spaces: split after its ')'
            fields = f.read().rsplit(b")", 1)[1].split()
        page = os.sysconf("SC_PAGE_SIZE")
        yield "process_virtual_memory_bytes", {}, float(fields[20])
        yield "process_resident_memory_bytes", {}, float(int(fields[21]) * page)
        yield "process_open_fds", {}, float(len(os.listdir(f"{self._proc}/fd")))
        yield "process_start_time_seconds", {}, self._start_time(int(fields[19]))

    def _start_time(self, ticks: int) -> float:
        """Boot time (``/proc/stat``) plus the start in clock ticks since boot."""
        if self._start is None:
            boot = time.time() - time.monotonic()      # a fallback, nearly right
            try:
                with open("/proc/stat", "rb") as f:
                    for line in f:
                        if line.startswith(b"btime "):
                            boot = float(line.split()[1])
                            break
            except OSError:
                pass
            self._start = boot + ticks / os.sysconf("SC_CLK_TCK")
        return self._start
