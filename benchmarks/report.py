"""The report: RESULTS.md sections between markers, the machine they were measured on, the data and chart files,
and the cell formats. ``publish`` is the end every benchmark shares."""

from __future__ import annotations

import contextlib
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import gateway.protocols
from benchmarks.core import ROOT, log
from benchmarks.harness import Run, ensure_nginx
from benchmarks.peers import CHARTS_PACKAGE, Peers
from benchmarks.wrk import WrkResult


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else 0.0


def machine_description(wrk: str | None, peers: Peers) -> list[str]:
    """What a reader needs to judge the numbers: the machine, and every component's version."""
    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    memory = "unknown"
    with contextlib.suppress(OSError, IndexError, ValueError):
        kib = int(Path("/proc/meminfo").read_text().split()[1])
        memory = f"{kib / 1024 / 1024:.1f} GiB"
    nginx_version = subprocess.run([ensure_nginx(), "-v"], capture_output=True, text=True, check=False).stderr
    wrk_version = "not installed"
    if wrk:
        output = subprocess.run([wrk, "-v"], capture_output=True, text=True, check=False)
        wrk_version = (output.stdout + output.stderr).splitlines()[0] if (output.stdout + output.stderr) else "?"
    lines = [
        f"- machine: {os.cpu_count()} CPUs (nproc {len(os.sched_getaffinity(0))}), {cpu}, {memory} RAM",
        f"- kernel: {platform.system()} {platform.release()}",
        f"- python: {sys.version.split()[0]} ({sys.executable}); our protocol codecs {gateway.protocols.build_kind()}",
        f"- nginx: {nginx_version.strip().removeprefix('nginx version: ')}",
        f"- wrk: {wrk_version.strip()}",
    ]
    if peers.versions:
        lines.append("- peers: " + ", ".join(f"{name} {version}" for name, version in sorted(peers.versions.items())))
    for package, reason in sorted(peers.failures.items()):
        lines.append(f"- NOT INSTALLED: {package}: {reason}")
    return lines


SECTION_KEYS = ("throughput", "curves", "realapp", "slow")
SECTION_TITLES = {
    "throughput": "Throughput",
    "curves": "Throughput: how cost grows",
    "realapp": "A real application: template page, I/O wait, file download",
    "slow": "Slow clients",
}
#: A section missing from an existing file goes right after this one (the curves extend the throughput part).
_SECTION_AFTER = {"curves": "throughput", "realapp": "throughput"}
_TEMPLATE = """# Benchmarks

Produced by `python -m benchmarks` (`make bench`: throughput) and `python -m benchmarks --slow`
(`make bench-slow`: slow clients). Each run rewrites only its own section below; the History section is for
people: add a dated line with the headline numbers and what changed when you commit a new run.

{sections}

## History

_Add entries here by hand: date, commit, headline numbers, what changed._
"""


def _markers(key: str) -> tuple[str, str]:
    return f"<!-- BEGIN {key} (generated; rewritten by each run) -->", f"<!-- END {key} -->"


def write_section(path: Path, key: str, text: str) -> None:
    """Replace section ``key`` of RESULTS.md, keeping the other section and the History written by people."""
    begin, end = _markers(key)
    block = f"{begin}\n{text.rstrip()}\n{end}"
    if path.exists():
        current = path.read_text()
        pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end), re.DOTALL)
        if pattern.search(current):
            path.write_text(pattern.sub(lambda _: block, current, count=1))
            return
        anchor = _markers(_SECTION_AFTER.get(key, ""))[1]
        if key in _SECTION_AFTER and anchor in current:
            head, _, rest = current.partition(anchor)
            path.write_text(f"{head}{anchor}\n\n{block}{rest}")
            return
        if "\n## History" in current:
            head, _, rest = current.partition("\n## History")
            path.write_text(f"{head.rstrip()}\n\n{block}\n\n## History{rest}")
            return
        path.write_text(f"{current.rstrip()}\n\n{block}\n")
        return
    sections = []
    for other in SECTION_KEYS:
        other_begin, other_end = _markers(other)
        content = text.rstrip() if other == key else f"## {SECTION_TITLES[other]}\n\n_Not run yet._"
        sections.append(f"{other_begin}\n{content}\n{other_end}")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(_TEMPLATE.format(sections="\n\n".join(sections)))


def draw_chart(peers: Peers, kind: str, data_path: Path, png_path: Path) -> str | None:
    """Run ``benchmarks.charts`` with the peers' python (matplotlib lives there, not in our project); return
    a line for the results saying why there is no chart, or None when it was drawn."""
    if CHARTS_PACKAGE not in peers.versions:
        reason = peers.failures.get(CHARTS_PACKAGE, "charts disabled")
        return f"_No chart: matplotlib is not available ({reason})._"
    png_path.parent.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(
        [str(peers.python), "-m", "benchmarks.charts", kind, str(data_path), str(png_path)],
        capture_output=True, text=True, check=False, timeout=300, cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT), "MPLBACKEND": "Agg"},
    )  # fmt: skip
    if result.returncode:
        return f"_No chart: drawing failed: {(result.stderr or result.stdout).strip().splitlines()[-1:]}_"
    return None


def fmt(value: float, digits: int = 1) -> str:
    return f"{value:.{digits}f}"


def latency(result: WrkResult, value: float) -> str:
    """A latency cell: "-" when no request completed (wrk then reports 0, which would read as instant)."""
    return fmt(value, 2) if result.requests else "-"


def publish(run: Run, data: Mapping[str, Any], body: Sequence[str], chart_alt: str) -> Path:
    """Write the run's data (``data/KIND.json``), draw its chart from it (``charts/KIND.png``) and rewrite its
    section of the results file: the title, when and how it was run, the machine, ``body``, then the chart.
    Returns the results file."""
    options = run.options
    output = options.output
    data_path = output.parent / "data" / f"{run.kind}.json"
    chart_file = output.parent / "charts" / f"{run.kind}.png"
    data_path.parent.mkdir(parents=True, exist_ok=True)
    data_path.write_text(json.dumps(data, indent=1))
    chart_note = draw_chart(run.peers, run.kind, data_path, chart_file) if options.charts else "_Charts disabled._"
    elapsed = time.monotonic() - run.started
    lines = [
        f"## {SECTION_TITLES[run.kind]}",
        "",
        f"Run {time.strftime('%Y-%m-%d %H:%M %Z')}, {elapsed / 60:.1f} min. Command: `{options.command}`",
        "",
        *machine_description(run.wrk, run.peers),
        "",
        *body,
        chart_note or f"![{chart_alt}]({chart_file.relative_to(output.parent)})",
        "",
    ]
    write_section(output, run.kind, "\n".join(lines))
    log(f"wrote {output} (data {data_path})")
    return output
