"""glibc malloc thresholds (gateway.memory): freed request-sized buffers stay in the heap instead of going back to
the kernel, and an operator's GLIBC_TUNABLES win. Each case runs in a fresh interpreter, since the settings are
process-wide."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

#: Allocates 16 MiB in 512 KiB buffers, frees them, and prints how much of it the process still holds (KiB).
PROBE = """
import sys
from gateway.memory import tune_malloc
tuned = tune_malloc() if sys.argv[1] == "tune" else False

def rss_kib():
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * 4
before = rss_kib()
buffers = [bytearray(512 << 10) for _ in range(32)]
for buffer in buffers:
    buffer[::4096] = b"x" * len(buffer[::4096])  # touch every page
del buffers
print(tuned, rss_kib() - before)
"""


def _probe(mode: str, env: dict[str, str] | None = None) -> tuple[bool, int]:
    result = subprocess.run(
        [sys.executable, "-c", PROBE, mode],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
        env={**os.environ, **(env or {})},
    )
    tuned, kept = result.stdout.split()
    return tuned == "True", int(kept)


def test_freed_buffers_stay_in_the_heap_once_tuned() -> None:
    tuned, kept = _probe("tune")
    assert tuned
    assert kept > 12 << 10  # most of the 16 MiB is kept for the next requests' buffers
    _, kept_by_default = _probe("default")
    assert kept_by_default < 4 << 10  # glibc's defaults give 512 KiB buffers back at once


def test_the_operators_glibc_tunables_are_left_alone() -> None:
    tuned, _ = _probe("tune", {"GLIBC_TUNABLES": "glibc.malloc.trim_threshold=131072"})
    assert not tuned
