"""CPU and memory of process trees and of the machine, sampled from /proc (no psutil: the peers' servers must not
share a dependency with the harness that measures them)."""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from pathlib import Path

from devstack.processes import stat_fields, tree_pids

__all__ = ["PeakRss", "cpu_seconds", "dirty_bytes", "machine_seconds", "pss_bytes", "rss_bytes", "tree_pids"]

_CLK_TCK = os.sysconf("SC_CLK_TCK")
_PAGE = os.sysconf("SC_PAGE_SIZE")


def cpu_seconds(root: int) -> float:
    """User + system CPU of the live tree, plus what its reaped children used (cutime/cstime), so a worker
    that died or was recycled during a measurement still counts."""
    ticks = 0
    for pid in tree_pids(root):
        fields = stat_fields(pid)
        if fields is not None:
            # After the name: state(0) ppid(1) ... utime(11) stime(12) cutime(13) cstime(14).
            ticks += sum(int(value) for value in fields[11:15])
    return ticks / _CLK_TCK


def machine_seconds() -> tuple[float, float]:
    """(busy, total) CPU seconds of all CPUs together so far, from /proc/stat; busy is anything but idling or
    waiting for I/O."""
    fields = [int(value) for value in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    total = sum(fields[:8])  # guest time, the fields after these, is already counted in user
    return (total - fields[3] - fields[4]) / _CLK_TCK, total / _CLK_TCK


def dirty_bytes() -> int:
    """Page cache not yet written back: a peer that spooled to disk leaves the kernel busy after it is done."""
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("Dirty:"):
            return int(line.split()[1]) << 10
    return 0


def rss_bytes(pids: Sequence[int]) -> int:
    """Sum of resident set sizes. Forked workers share pages with their master, so this overstates what the
    tree really costs the machine; it is the number ``ps`` and most monitoring show, and the same for every server."""
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/statm", "rb") as statm:
                total += int(statm.read().split()[1]) * _PAGE
        except (OSError, IndexError):
            continue
    return total


def pss_bytes(pids: Sequence[int]) -> int:
    """Sum of proportional set sizes (/proc/PID/smaps_rollup): each shared page is divided among the processes
    that map it, so forked workers sharing their parent's pages are counted once in the sum, which is what the
    tree really costs the machine. A process that went away meanwhile counts 0."""
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/smaps_rollup", "rb") as rollup:
                for line in rollup:
                    if line.startswith(b"Pss:"):
                        total += int(line.split()[1]) << 10
                        break
        except (OSError, IndexError, ValueError):
            continue
    return total


class PeakRss:
    """Samples the RSS of a process tree every ``interval`` seconds in a thread for the length of a ``with``:
    ``peak`` for the whole tree, ``master`` for the root process alone (an event loop's own growth)."""

    def __init__(self, root: int | None, interval: float = 0.25) -> None:
        self.root = root
        self.interval = interval
        self.peak = self.master = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while True:
            if self.root is not None:
                self.master = max(self.master, rss_bytes([self.root]))
                self.peak = max(self.peak, rss_bytes(tree_pids(self.root)))
            if self._stop.wait(self.interval):
                return

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
