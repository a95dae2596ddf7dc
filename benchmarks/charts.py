"""Draw the benchmark charts from the JSON the harness writes; run by the peers' virtualenv python.

``python -m benchmarks.charts throughput DATA.json OUT.png`` or ``... slow DATA.json OUT.png``. matplotlib lives
in ``benchmarks/.peers-venv`` only, so it never becomes a dependency of our project.
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib as mpl

mpl.use("Agg")  # no display here: choose the file backend before pyplot is imported
import matplotlib.pyplot as plt

OURS_COLOUR = "#1f77b4"
PEER_COLOUR = "#9a9a9a"
UWSGI_COLOUR = "#d62728"


def _colour(server: str) -> str:
    if server.startswith("ours"):
        return OURS_COLOUR
    return UWSGI_COLOUR if server == "uwsgi" else PEER_COLOUR


def throughput(data: dict[str, Any], out: Path) -> None:
    """One panel per scenario: median req/s per server, labelled with the ratio to uWSGI."""
    scenarios = data["scenarios"]
    servers = data["servers"]
    rows = {(row["server"], row["scenario"]): row for row in data["rows"]}
    columns = min(len(scenarios), 3)
    lines = math.ceil(len(scenarios) / columns)
    figure, axes = plt.subplots(lines, columns, figsize=(6 * columns, 0.45 * len(servers) * lines + 1.5 * lines))
    flat = list(axes.flat) if hasattr(axes, "flat") else [axes]
    for axis, scenario in zip(flat, scenarios, strict=False):
        names = [name for name in servers if (name, scenario["name"]) in rows]
        values = [rows[name, scenario["name"]]["rps"] for name in names]
        axis.barh(names, values, color=[_colour(name) for name in names])
        axis.invert_yaxis()
        axis.set_title(f"{scenario['label']} (req/s, higher is better)", fontsize=10)
        reference = rows.get(("uwsgi", scenario["name"]))
        for position, value in enumerate(values):
            label = f" {value:,.0f}"
            if reference and reference["rps"]:
                label += f"  ({value / reference['rps']:.2f}x uWSGI)"
            axis.text(value, position, label, va="center", fontsize=8)
        axis.set_xlim(0, max(values or [1]) * 1.45)
        axis.tick_params(axis="y", labelsize=8)
    for axis in flat[len(scenarios) :]:
        axis.set_visible(False)
    figure.suptitle(data.get("title", "Throughput"), fontsize=11)
    figure.tight_layout()
    figure.savefig(out, dpi=110)


def slow(data: dict[str, Any], out: Path) -> None:
    """A grid servers x modes: fast clients' req/s under the most slow connections, as a share of unloaded."""
    servers, modes = data["servers"], data["modes"]
    cells = {(cell["server"], cell["mode"]): cell["ratio"] for cell in data["cells"]}
    grid = [[cells.get((server, mode), math.nan) for mode in modes] for server in servers]
    figure, axis = plt.subplots(figsize=(1.3 * len(modes) + 3, 0.5 * len(servers) + 2))
    image = axis.imshow(grid, cmap="RdYlGn", vmin=0.0, vmax=1.0, aspect="auto")
    axis.set_xticks(range(len(modes)), modes, rotation=30, ha="right", fontsize=8)
    axis.set_yticks(range(len(servers)), servers, fontsize=8)
    for row, values in enumerate(grid):
        for column, value in enumerate(values):
            text = "n/a" if math.isnan(value) else f"{value:.2f}"
            axis.text(column, row, text, ha="center", va="center", fontsize=8)
    figure.colorbar(image, ax=axis, label="fast req/s vs unloaded")
    axis.set_title(data.get("title", "Slow clients"), fontsize=10)
    figure.tight_layout()
    figure.savefig(out, dpi=110)


def curves(data: dict[str, Any], out: Path) -> None:
    """Three panels: req/s against connections, peak RSS against body size, req/s against workers."""
    figure, (left, middle, right) = plt.subplots(1, 3, figsize=(16, 4.5))
    for server in data["servers"]:
        points = sorted((p["connections"], p["wrk"]) for p in data["concurrency"] if p["server"] == server)
        if points:
            left.plot(
                [x for x, _ in points],
                [w["requests"] / (w["seconds"] or 1) for _, w in points],
                "o-",
                color=_colour(server),
                label=server,
            )
        points = sorted((p["workers"], p["wrk"]) for p in data["workers"] if p["server"] == server)
        if points:
            right.plot(
                [x for x, _ in points],
                [w["requests"] / (w["seconds"] or 1) for _, w in points],
                "o-",
                color=_colour(server),
                label=server,
            )
        for direction, style in (("upload", "o-"), ("download", "s--")):
            rows = sorted(
                (r["size"], r["master_mib"])
                for r in data["memory"]
                if r["server"] == server and r["direction"] == direction
            )
            if rows:
                middle.plot(
                    [size / (1 << 20) for size, _ in rows],
                    [mib for _, mib in rows],
                    style,
                    color=_colour(server),
                    label=f"{server} {direction}",
                )
    left.set_xscale("log")
    left.set(title="hello world: req/s against connections", xlabel="wrk connections", ylabel="req/s")
    middle.set_xscale("log")
    middle.set(title="master peak RSS against body size", xlabel="body MiB", ylabel="MiB")
    middle.set_ylim(bottom=0)
    right.set(title="2 ms CPU app: req/s against workers", xlabel="workers", ylabel="req/s")
    right.set_ylim(bottom=0)
    for axis in (left, middle, right):
        axis.legend(fontsize=8)
        axis.grid(alpha=0.3)
    figure.suptitle(data.get("title", "How cost grows"), fontsize=11)
    figure.tight_layout()
    figure.savefig(out, dpi=110)


KINDS = {"throughput": throughput, "slow": slow, "curves": curves, "realapp": throughput}


def main(argv: Sequence[str]) -> int:
    if len(argv) != 3 or argv[0] not in KINDS:
        print("usage: python -m benchmarks.charts throughput|slow|curves|realapp DATA.json OUT.png", file=sys.stderr)
        return 2
    kind, data_path, out = argv
    data = json.loads(Path(data_path).read_text())
    KINDS[kind](data, Path(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
