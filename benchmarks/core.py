"""What every benchmark module shares: where things live, the error a run stops on, and progress lines."""

from __future__ import annotations

import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCH_DIR = ROOT / "benchmarks"
WORK_DIR = BENCH_DIR / ".work"


class BenchError(RuntimeError):
    """Something the benchmark cannot do without (nginx, wrk); the message says how to get it."""


def log(message: str) -> None:
    """Progress lines: a long benchmark run must show it is alive and where it is."""
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", flush=True)
