"""wrk, the load generator: installing it, its command line, and its machine-readable summary line
(``wrk_report.lua`` prints it, so nothing parses wrk's human-readable text)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from dataclasses import dataclass

from benchmarks.core import BENCH_DIR, BenchError, log

WRK_SCRIPT = BENCH_DIR / "wrk_report.lua"


def _apt_install(package: str) -> None:
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for argv in (["apt-get", "update", "-q"], ["apt-get", "install", "-y", "-q", package]):
        result = subprocess.run(argv, capture_output=True, text=True, env=env, check=False, timeout=900)
        if result.returncode:
            raise BenchError(f"`{' '.join(argv)}` failed:\n{result.stdout[-1500:]}{result.stderr[-1500:]}")


def ensure_wrk() -> str:
    """wrk from Debian's package; installed with apt-get when missing (as root), else a clear error."""
    found = shutil.which("wrk")
    if found:
        return found
    if os.geteuid() != 0:
        raise BenchError("wrk is not installed: run `apt-get install -y wrk` as root")
    log("wrk is missing: apt-get install -y wrk")
    _apt_install("wrk")
    found = shutil.which("wrk")
    if not found:
        raise BenchError("apt-get installed wrk but it is not on PATH")
    return found


@dataclass
class WrkResult:
    requests: int
    seconds: float
    p50_ms: float
    p99_ms: float
    errors: dict[str, int]

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())


def wrk_timeout(duration: float) -> int:
    """wrk counts a stuck request as a timeout only once it is older than ``--timeout``: within a 2 s cell a 5 s
    timeout would never fire, and a server that answers nothing would show 0 req/s and 0 errors. (wrk takes whole
    seconds only.)"""
    return min(5, max(1, int(duration / 2)))


def wrk_command(wrk: str, url: str, *, connections: int, duration: float, timeout: int | None = None) -> list[str]:
    timeout = wrk_timeout(duration) if timeout is None else timeout
    return [wrk, "-t1", f"-c{connections}", f"-d{max(1, round(duration))}s", "--latency",
            "--timeout", f"{timeout}s", "-s", str(WRK_SCRIPT), url]  # fmt: skip


def parse_wrk(output: str) -> WrkResult:
    for line in output.splitlines():
        if line.startswith("WRK_JSON "):
            data = json.loads(line[len("WRK_JSON ") :])
            errors = {key: int(data[key]) for key in ("connect", "read", "write", "status", "timeout")}
            return WrkResult(
                requests=int(data["requests"]),
                seconds=data["duration_us"] / 1e6,
                p50_ms=data["p50_us"] / 1000,
                p99_ms=data["p99_us"] / 1000,
                errors={key: value for key, value in errors.items() if value},
            )
    raise BenchError(f"wrk printed no summary line:\n{output[-2000:]}")


def wrk_env(body_bytes: int) -> dict[str, str]:
    return {**os.environ, "WRK_BODY_BYTES": str(body_bytes)}


def run_wrk(
    wrk: str, url: str, *, connections: int, duration: float, body_bytes: int = 0, timeout: int | None = None
) -> WrkResult:
    command = wrk_command(wrk, url, connections=connections, duration=duration, timeout=timeout)
    result = subprocess.run(
        command, capture_output=True, text=True, env=wrk_env(body_bytes), check=False, timeout=duration + 60
    )
    return parse_wrk(result.stdout + result.stderr)
