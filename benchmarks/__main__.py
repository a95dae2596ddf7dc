"""``python -m benchmarks``: the throughput benchmark (``make bench``), or with ``--slow`` the slow-client one.

Both start every selected server with the same worker count and the same apps behind one private nginx, install
the peers into ``benchmarks/.peers-venv`` and wrk (apt-get) when missing, print a line per measurement, and
rewrite their own section of ``benchmarks/RESULTS.md`` (or ``--output``) plus a PNG chart beside it.

``--curves`` (opt-in) measures how cost grows instead: concurrency, memory against body size, worker count, and
sessions (``benchmarks.curves``), in its own section after the throughput one.

``--quick`` is the smoke-test size: our three rows behind nginx, ours over HTTP served directly (``ours-http``)
and gunicorn, hello world only (``--slow``: the http-body mode, and direct-headers for ``ours-http``, with 20 slow
connections), one round of 2 s cells at concurrency 8. Explicit options override what it picks.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path

from benchmarks import curves, realapp, slow, slowloris, throughput
from benchmarks.core import BENCH_DIR, WORK_DIR, BenchError, log
from benchmarks.harness import OPTIONAL_SERVERS, QUICK_SERVERS, SERVERS, Options

MAX_CELL_SECONDS = 3600.0
MAX_CONCURRENCY = 10000


def _names(text: str) -> list[str]:
    return [name.strip() for name in text.split(",") if name.strip()]


def _counts(text: str) -> list[int]:
    try:
        counts = [int(name) for name in _names(text)]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of integers") from None
    if not counts or any(count < 1 for count in counts):
        raise argparse.ArgumentTypeError("slow connection counts must be positive")
    return counts


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description=__doc__.splitlines()[0] if __doc__ else None,
        epilog="Servers: " + ", ".join(spec.name for spec in SERVERS) + "; when named: "
        + ", ".join(spec.name for spec in OPTIONAL_SERVERS) + ". Scenarios: "
        + ", ".join(throughput.SCENARIO_NAMES) + ". Slow modes (--slow --scenarios): " + ", ".join(slow.MODES) + ".",
    )  # fmt: skip
    parser.add_argument("--slow", action="store_true", help="run the slow-client benchmark (make bench-slow)")
    parser.add_argument(
        "--curves",
        action="store_true",
        help="how cost grows: concurrency, body size (memory), worker count, sessions (~6 min; not in make bench)",
    )
    parser.add_argument(
        "--realapp",
        action="store_true",
        help="the real-app benchmark: template page, 10 ms I/O route, file download; ours with and without "
        "--threads against uWSGI (with and without threads), gunicorn gthread and waitress",
    )
    parser.add_argument("--quick", action="store_true", help="smoke-test size (see above)")
    parser.add_argument("--servers", type=_names, help="comma-separated server names (default: all)")
    parser.add_argument("--scenarios", type=_names, help="comma-separated scenarios, or slow modes with --slow")
    parser.add_argument("--workers", type=int, default=2, help="worker processes for every server (default 2)")
    parser.add_argument("-c", "--concurrency", type=int, help="wrk connections (default 32; quick 8)")
    parser.add_argument("-d", "--duration", type=float, help="seconds per measurement (default 10; quick 2)")
    parser.add_argument("--rounds", type=int, help="interleaved rounds, medians reported (default 3; --slow 1)")
    parser.add_argument("--slow-counts", type=_counts, help="slow connections per mode (default 50,1000; quick 20)")
    parser.add_argument("--slow-interval", type=float, default=1.0, help="seconds between slow trickles (1)")
    parser.add_argument(
        "--attacker-loop",
        choices=slowloris.LOOPS,
        default="uvloop",
        help="--slow: the event loop of the slow clients' own process (uvloop; asyncio costs this machine more)",
    )
    parser.add_argument(
        "--memory-connections", type=int, help="idle connections for the memory measurement (1000; quick 20; 0: off)"
    )
    parser.add_argument("--output", type=Path, default=BENCH_DIR / "RESULTS.md", help="results file")
    parser.add_argument("--work-dir", type=Path, default=WORK_DIR, help="scratch: nginx config, server logs")
    parser.add_argument("--no-charts", dest="charts", action="store_false", help="skip matplotlib and the PNGs")
    parser.add_argument(
        "--no-install", dest="install", action="store_false", help="use the peers' venv as is; skip missing peers"
    )
    return parser


def options_from(argv: Sequence[str]) -> Options:
    parser = _parser()
    args = parser.parse_args(argv)
    quick = args.quick
    options = Options(
        servers=args.servers or (list(QUICK_SERVERS) if quick and not (args.curves or args.realapp) else None),
        scenarios=args.scenarios
        or (list(throughput.QUICK_SCENARIOS) if quick and not (args.slow or args.realapp) else None),
        workers=args.workers,
        concurrency=args.concurrency or (8 if quick else 32),
        duration=args.duration or (2.0 if quick else 10.0),
        rounds=args.rounds or (1 if quick or args.slow else 3),
        output=args.output.resolve(),
        work_dir=args.work_dir.resolve(),
        charts=args.charts,
        install=args.install,
        quick=quick,
        slow=args.slow,
        curves=args.curves,
        realapp=args.realapp,
        command=shlex.join(["python", "-m", "benchmarks", *argv]),
        slow_counts=args.slow_counts or ([20] if quick else [50, 1000]),
        slow_interval=args.slow_interval,
        memory_connections=args.memory_connections if args.memory_connections is not None else (20 if quick else 1000),
        attacker_loop=args.attacker_loop,
    )
    if not 1 <= options.workers <= 64:
        parser.error("--workers must be 1..64")
    if not 1 <= options.concurrency <= MAX_CONCURRENCY:
        parser.error(f"--concurrency must be 1..{MAX_CONCURRENCY}")
    if not 1 <= options.duration <= MAX_CELL_SECONDS:
        parser.error(f"--duration must be 1..{MAX_CELL_SECONDS:.0f} seconds")
    if options.rounds < 1 or options.slow_interval <= 0:
        parser.error("--rounds must be positive, and so must --slow-interval")
    if max(options.slow_counts) > 20000 or options.memory_connections > 20000:
        parser.error("at most 20000 slow connections")
    return options


def main(argv: Sequence[str] | None = None) -> int:
    arguments = list(sys.argv[1:] if argv is None else argv)
    options = options_from(arguments)
    if options.slow and options.curves:
        _parser().error("--slow and --curves are separate runs")
    if options.realapp and (options.slow or options.curves):
        _parser().error("--realapp is a separate run")
    which = slow if options.slow else curves if options.curves else realapp if options.realapp else throughput
    try:
        output = which.run(options)
    except BenchError as err:
        log(f"error: {err}")
        return 1
    except KeyboardInterrupt:
        log("interrupted; servers stopped")
        return 130
    log(f"done: {output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
