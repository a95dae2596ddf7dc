"""A private nginx in front of a gateway, on loopback: ``make run``, the test fixtures and the benchmarks.

Everything nginx writes (config, pid, logs, temp files) lives under one scratch directory; the system nginx and
its configuration are never touched. The stock ``fastcgi_params`` and ``uwsgi_params`` files are included as
shipped, because that is what users run.

``python -m devstack`` serves the demo app: FastCGI on 127.0.0.1:9000, uwsgi on 127.0.0.1:9001, nginx
on 127.0.0.1:8080 routing ``/`` over FastCGI and ``/uwsgi/`` over uwsgi. Ctrl-C stops everything.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

NGINX_PARAMS_DIR = Path("/etc/nginx")
READY_LINE = "workers serving"


class StackError(RuntimeError):
    """A component would not start; the message names it and points at its log."""


def find_nginx() -> str:
    for candidate in (shutil.which("nginx"), "/usr/sbin/nginx"):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    raise StackError("nginx is not installed: run `apt-get install nginx-light` (make run/test do it for you)")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _upstream_address(address: str) -> str:
    """Our ADDR syntax to nginx's: unix:PATH stays, :PORT gets the loopback host."""
    if address.startswith("unix:"):
        return address
    return f"127.0.0.1{address}" if address.startswith(":") else address


def render_nginx_conf(scratch: Path, port: int, fcgi: str, uwsgi: str, extra: str = "") -> str:
    """One server on 127.0.0.1:PORT: ``/`` and ``/fcgi/`` over FastCGI (a new connection per request),
    ``/fcgik/`` over FastCGI with ``fastcgi_keep_conn`` and upstream keepalive, ``/uwsgi/`` over uwsgi."""
    user = "user root root;\n" if os.geteuid() == 0 else ""
    params = NGINX_PARAMS_DIR
    temp = scratch / "nginx-temp"
    return f"""{user}daemon off;
worker_processes 1;
pid {scratch}/nginx.pid;
error_log {scratch}/nginx-error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log {scratch}/nginx-access.log;
    client_body_temp_path {temp}/client;
    fastcgi_temp_path {temp}/fastcgi;
    uwsgi_temp_path {temp}/uwsgi;
    proxy_temp_path {temp}/proxy;
    scgi_temp_path {temp}/scgi;
    client_max_body_size 256m;
    upstream gateway_fcgi {{ server {_upstream_address(fcgi)}; }}
    upstream gateway_fcgi_keep {{ server {_upstream_address(fcgi)}; keepalive 8; }}
    upstream gateway_uwsgi {{ server {_upstream_address(uwsgi)}; }}
    server {{
        listen 127.0.0.1:{port};
        location / {{ include {params}/fastcgi_params; fastcgi_pass gateway_fcgi; }}
        location /fcgi/ {{ include {params}/fastcgi_params; fastcgi_pass gateway_fcgi; }}
        location /fcgik/ {{
            include {params}/fastcgi_params;
            fastcgi_keep_conn on;
            fastcgi_pass gateway_fcgi_keep;
        }}
        location /uwsgi/ {{ include {params}/uwsgi_params; uwsgi_pass gateway_uwsgi; }}
        {extra}
    }}
}}
"""


def _wait_for_port(port: int, process: subprocess.Popen[bytes], what: str, log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise StackError(f"{what} exited with status {process.returncode}; see {log}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise StackError(f"{what} did not listen on 127.0.0.1:{port} within {timeout:.0f} s; see {log}")


def _stop(process: subprocess.Popen[bytes] | None, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int | None:
    if process is None or process.poll() is not None:
        return None if process is None else process.returncode
    process.send_signal(sig)
    try:
        return process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        return process.wait()


@dataclass
class GatewayProcess:
    """A gateway subprocess; ``log`` collects its stderr."""

    scratch: Path
    args: Sequence[str]
    env: dict[str, str] | None = None
    process: subprocess.Popen[bytes] | None = None
    cwd: Path | None = None
    log: Path = field(init=False)

    def __post_init__(self) -> None:
        self.log = self.scratch / "gateway.log"

    def start(self, timeout: float = 30.0) -> GatewayProcess:
        self.scratch.mkdir(parents=True, exist_ok=True)
        # The log is appended to across restarts; readiness counts only what this start wrote.
        seen = len(self.log_text())
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "gateway", *self.args],
                stdout=log,
                stderr=log,
                env=self.env,
                stdin=subprocess.DEVNULL,
                cwd=self.cwd,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise StackError(f"the gateway exited with status {self.process.returncode}:\n{self.log_text()}")
            if READY_LINE in self.log_text()[seen:]:
                return self
            time.sleep(0.05)
        raise StackError(f"the gateway was not ready within {timeout:.0f} s:\n{self.log_text()}")

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 40.0) -> int | None:
        return _stop(self.process, sig, timeout)


@dataclass
class Nginx:
    """A private nginx master with its own config under ``scratch``."""

    scratch: Path
    port: int
    fcgi: str
    uwsgi: str
    extra: str = ""
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def error_log(self) -> Path:
        return self.scratch / "nginx-error.log"

    def start(self, timeout: float = 15.0) -> Nginx:
        self.scratch.mkdir(parents=True, exist_ok=True)
        (self.scratch / "nginx-temp").mkdir(exist_ok=True)
        conf = self.scratch / "nginx.conf"
        conf.write_text(render_nginx_conf(self.scratch, self.port, self.fcgi, self.uwsgi, self.extra))
        stderr = (self.scratch / "nginx-stderr.log").open("ab")
        with stderr:
            self.process = subprocess.Popen(
                [find_nginx(), "-p", str(self.scratch), "-c", str(conf), "-e", str(self.error_log)],
                stdout=stderr,
                stderr=stderr,
                stdin=subprocess.DEVNULL,
            )
        _wait_for_port(self.port, self.process, "nginx", self.error_log, timeout)
        return self

    def stop(self) -> None:
        _stop(self.process, signal.SIGQUIT)


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
    # Ctrl-C goes to the whole process group; we stop the children in order ourselves.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    gateway = GatewayProcess(scratch, ["--fcgi", args.fcgi, "--uwsgi", args.uwsgi, *args.gateway_args])
    nginx = Nginx(scratch, args.port, args.fcgi, args.uwsgi)
    try:
        gateway.start()
        nginx.start()
        print(f"\nReady: curl {nginx.url}/  (FastCGI)   curl {nginx.url}/uwsgi/  (uwsgi)", flush=True)
        print(f"Logs in {scratch}; Ctrl-C stops everything.\n", flush=True)
        tail = subprocess.Popen(["tail", "-n", "+1", "-f", str(gateway.log)])
        try:
            while gateway.process is not None and gateway.process.poll() is None:
                time.sleep(0.5)
        finally:
            tail.terminate()
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
