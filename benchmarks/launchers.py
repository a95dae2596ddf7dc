"""Start flup or fcgisgi on a loopback port; run by the peers' virtualenv python (``python -m benchmarks.launchers``).

Neither ships a command-line server, so these are the few lines their documentation shows, with the worker count of
the benchmark where the server has one:

- flup: ``flup.server.fcgi_fork.WSGIServer`` (prefork) with minSpare = maxSpare = maxChildren = N, so exactly N
  children serve, as N processes do for every other server.
- fcgisgi: ``run_wsgi_server`` is one asyncio process handing requests to a thread pool of its default size;
  it has no process count, so ``--workers`` does not apply (the results say so).

Imports stay inside the functions: only the peer being started needs to be installed.
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Sequence

from benchmarks.apps import app


def run_flup(port: int, workers: int) -> None:
    from flup.server.fcgi_fork import WSGIServer  # noqa: PLC0415 - a peer, installed only in the peers' venv

    server = WSGIServer(
        app, bindAddress=("127.0.0.1", port), minSpare=workers, maxSpare=workers, maxChildren=workers, maxRequests=0
    )
    server.run()


def run_fcgisgi(port: int) -> None:
    from fcgisgi import run_wsgi_server  # noqa: PLC0415 - a peer, installed only in the peers' venv

    asyncio.run(run_wsgi_server(app, bind_address=("127.0.0.1", port)))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.launchers", description=__doc__.splitlines()[0])
    parser.add_argument("server", choices=["flup", "fcgisgi"])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args(argv)
    try:
        if args.server == "flup":
            run_flup(args.port, args.workers)
        else:
            run_fcgisgi(args.port)
    except KeyboardInterrupt:  # the harness stops every server with SIGINT
        pass
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
