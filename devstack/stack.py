"""``python -m devstack`` (``make run``): the demo app behind a private nginx, on loopback.

FastCGI on 127.0.0.1:9000, uwsgi on 127.0.0.1:9001, nginx on 127.0.0.1:8080 routing ``/`` over FastCGI and
``/uwsgi/`` over uwsgi (``devstack.nginx.gateway_routes``). The gateway is told that prefix (``--script-name
/uwsgi``, which applies only to paths that carry it), so an app sees the same PATH_INFO over both. Ctrl-C stops
everything.
"""

from __future__ import annotations

import argparse
import shutil
import signal
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from devstack.nginx import Nginx
from devstack.processes import GatewayProcess, StackError

#: Where nginx mounts the uwsgi listener (``devstack.nginx.gateway_routes``).
UWSGI_MOUNT = "/uwsgi"

__all__ = ["StackError", "main"]  # StackError: what main reports when a component would not start


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devstack", description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8080, help="nginx's port on 127.0.0.1")
    parser.add_argument("--fcgi", default="127.0.0.1:9000")
    parser.add_argument("--uwsgi", default="127.0.0.1:9001")
    parser.add_argument("--scratch", default=".run", help="directory for nginx's and the gateway's files")
    parser.add_argument("gateway_args", nargs="*", help="more gateway arguments, e.g. myapp:application")
    args = parser.parse_args(argv)
    scratch = Path(args.scratch).resolve()
    if scratch.exists():
        shutil.rmtree(scratch)
    # Ctrl-C goes to the whole process group; we stop the children in order ourselves. Python leaves SIGINT ignored
    # when it starts ignored, as in a job a non-interactive shell put in the background (CI runners, `cmd &` in a
    # script): Ctrl-C must stop the stack whoever started it.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    # A --script-name among the user's arguments comes last, so it wins.
    listeners = ["--fcgi", args.fcgi, "--uwsgi", args.uwsgi, "--script-name", UWSGI_MOUNT]
    gateway = GatewayProcess(scratch, [*listeners, *args.gateway_args])
    nginx = Nginx(scratch, args.port, args.fcgi, args.uwsgi)
    try:
        gateway.start()
        nginx.start()
        print(f"\nReady: curl {nginx.url}/  (FastCGI)   curl {nginx.url}/uwsgi/  (uwsgi)", flush=True)
        print(f"Logs in {scratch}; Ctrl-C stops everything.\n", flush=True)
        tail = subprocess.Popen(["tail", "-n", "+1", "-f", str(gateway.log)])
        try:
            assert gateway.process is not None
            gateway.process.wait()
        finally:
            tail.terminate()
            tail.wait()
    except KeyboardInterrupt:
        pass
    except StackError as err:
        print(f"devstack: {err}", file=sys.stderr)
        return 1
    finally:
        nginx.stop()
        status = gateway.stop(signal.SIGINT)
    return 0 if status in (0, None, -signal.SIGINT) else 1


if __name__ == "__main__":
    raise SystemExit(main())
