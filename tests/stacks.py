"""One gateway behind its own nginx, started and stopped as one: the stack the thread and preload tests drive.

The gateway listens for FastCGI and uwsgi on loopback ports; nginx routes ``/fcgi/`` and ``/fcgik/`` (keep-conn)
over FastCGI and ``/uwsgi/`` over uwsgi (``devstack.nginx.gateway_routes``). If nginx cannot start, the gateway
is stopped before the error goes on, so no test leaves a process behind.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Self

from devstack.nginx import Nginx
from devstack.ports import free_port
from devstack.processes import GatewayProcess

ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}


class NginxStack:
    def __init__(self, tmp_path: Path, args: Sequence[str], app: str, *, cwd: Path | None = None) -> None:
        self.fcgi, self.uwsgi = free_port(), free_port()
        listen = ["--fcgi", f"127.0.0.1:{self.fcgi}", "--uwsgi", f"127.0.0.1:{self.uwsgi}"]
        self.gateway = GatewayProcess(tmp_path / "gateway", [*listen, *args, app], env=ENV, cwd=cwd)
        (tmp_path / "nginx").mkdir()
        self.nginx = Nginx(tmp_path / "nginx", free_port(), f"127.0.0.1:{self.fcgi}", f"127.0.0.1:{self.uwsgi}")

    def __enter__(self) -> Self:
        self.gateway.start()
        try:
            self.nginx.start()
        except BaseException:
            self.gateway.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.nginx.stop()
        self.gateway.stop()

    @property
    def master(self) -> int:
        assert self.gateway.process is not None
        return self.gateway.process.pid
