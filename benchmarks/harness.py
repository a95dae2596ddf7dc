"""What the throughput and slow-client benchmarks share: the servers, one private nginx, wrk, /proc metrics, the
peers' virtualenv and the RESULTS.md writer.

Every server runs the same apps (``benchmarks.apps``) with the same worker count behind one private nginx, each
under its own ``location`` prefix: ``/t/NAME/`` with nginx's default buffering (what a deployment has; the
throughput benchmark) and ``/s/NAME/`` with request and response buffering off (so slow clients reach the backend;
the slow-client benchmark). The peers (uWSGI, gunicorn, flup, fcgisgi, waitress, and matplotlib for the charts) live
in their own virtualenv, ``benchmarks/.peers-venv``, created with our python and filled from PyPI on demand, so none
of them is a dependency of our project. A peer that fails to install is reported in the results, not fatal.
"""

from __future__ import annotations

import contextlib
import fcntl
import http.client
import json
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import protocols
from devstack.nginx import find_nginx
from devstack.ports import free_port
from devstack.processes import GatewayProcess, StackError

ROOT = Path(__file__).resolve().parent.parent
BENCH_DIR = ROOT / "benchmarks"
PEERS_VENV = BENCH_DIR / ".peers-venv"
WORK_DIR = BENCH_DIR / ".work"
WRK_SCRIPT = BENCH_DIR / "wrk_report.lua"
APP = "benchmarks.apps:app"
_CLK_TCK = os.sysconf("SC_CLK_TCK")
_PAGE = os.sysconf("SC_PAGE_SIZE")
_INSTALL_TIMEOUT = 900.0


class BenchError(RuntimeError):
    """Something the benchmark cannot do without (nginx, wrk); the message says how to get it."""


def log(message: str) -> None:
    """Progress lines: a long benchmark run must show it is alive and where it is."""
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", flush=True)


@dataclass
class Options:
    """One benchmark run's settings, after ``--quick`` filled in what the command line left open."""

    servers: list[str] | None
    scenarios: list[str] | None
    workers: int
    concurrency: int
    duration: float
    rounds: int
    output: Path
    work_dir: Path
    charts: bool
    install: bool
    quick: bool
    slow: bool
    command: str
    slow_counts: list[int]
    slow_interval: float
    memory_connections: int
    curves: bool = False


# -- the servers ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ServerSpec:
    """One row of the results: a server process (``backend``) reached by nginx over one protocol."""

    name: str
    label: str
    backend: str
    protocol: str  # fcgi, uwsgi or http: how nginx talks to it
    keepalive: bool  # nginx keeps upstream connections (fastcgi_keep_conn + upstream keepalive)
    package: str | None  # what the peers' virtualenv needs for it
    note: str  # ``{n}`` stands for the worker count


SERVERS: tuple[ServerSpec, ...] = (
    ServerSpec("ours-fcgi-keep", "ours, FastCGI keep-conn", "ours", "fcgi", True, None,
               "{n} workers; fastcgi_keep_conn on + upstream keepalive 64"),
    ServerSpec("ours-fcgi", "ours, FastCGI", "ours", "fcgi", False, None,
               "{n} workers; a new FastCGI connection per request"),
    ServerSpec("ours-uwsgi", "ours, uwsgi", "ours", "uwsgi", False, None, "{n} workers; uwsgi protocol"),
    ServerSpec("uwsgi", "uWSGI", "uwsgi", "uwsgi", False, "uwsgi", "--master --processes {n}, uwsgi protocol"),
    ServerSpec("gunicorn", "gunicorn sync", "gunicorn", "http", False, "gunicorn", "-w {n} sync workers, proxy_pass"),
    ServerSpec("flup", "flup prefork", "flup", "fcgi", False, "flup",
               "fcgi_fork.WSGIServer, minSpare = maxSpare = maxChildren = {n}"),
    ServerSpec("fcgisgi", "fcgisgi", "fcgisgi", "fcgi", False, "fcgisgi",
               "ONE process: asyncio + a thread pool (its default size)"),
    ServerSpec("waitress", "waitress", "waitress", "http", False, "waitress",
               "ONE process, 4 threads (its default), proxy_pass"),
)  # fmt: skip
SERVER_NAMES = tuple(spec.name for spec in SERVERS)
QUICK_SERVERS = ("ours-fcgi-keep", "ours-fcgi", "ours-uwsgi", "gunicorn")
CHARTS_PACKAGE = "matplotlib"


def server_notes(specs: Sequence[ServerSpec], workers: int) -> list[str]:
    """How each row was run, for the results: a reader must see what was compared with what."""
    lines = ["| server | nginx speaks | how it runs |", "|---|---|---|"]
    for spec in specs:
        note = spec.note.format(n=workers)
        lines.append(f"| {spec.name} | {spec.protocol}{' (keepalive)' if spec.keepalive else ''} | {note} |")
    return lines


def select_servers(names: Sequence[str] | None) -> list[ServerSpec]:
    if not names:
        return list(SERVERS)
    unknown = sorted(set(names) - set(SERVER_NAMES))
    if unknown:
        raise BenchError(f"unknown server(s) {', '.join(unknown)}; known: {', '.join(SERVER_NAMES)}")
    return [spec for spec in SERVERS if spec.name in names]


def upstream_name(spec: ServerSpec) -> str:
    return "up_" + spec.name.replace("-", "_")


# -- processes and /proc ----------------------------------------------------------------------------------------
def _stat_fields(pid: int) -> list[bytes] | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            # The command name may contain spaces and parentheses: split after its closing one.
            return stat.read().rsplit(b")", 1)[1].split()
    except (OSError, IndexError):
        return None


def tree_pids(root: int) -> list[int]:
    """``root`` and all its live descendants (workers, their children), from the ppid column of /proc."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        fields = _stat_fields(int(entry))
        if fields is not None and fields[0] != b"Z":
            children.setdefault(int(fields[1]), []).append(int(entry))
    if _stat_fields(root) is None:
        return []
    found, queue = [], [root]
    while queue:
        pid = queue.pop()
        found.append(pid)
        queue.extend(children.get(pid, ()))
    return found


def cpu_seconds(root: int) -> float:
    """User + system CPU of the live tree, plus what its reaped children used (cutime/cstime), so a worker
    that died or was recycled during a measurement still counts."""
    ticks = 0
    for pid in tree_pids(root):
        fields = _stat_fields(pid)
        if fields is not None:
            # After the name: state(0) ppid(1) ... utime(11) stime(12) cutime(13) cstime(14).
            ticks += sum(int(value) for value in fields[11:15])
    return ticks / _CLK_TCK


def machine_seconds() -> tuple[float, float]:
    """(busy, total) CPU seconds of all CPUs together so far, from /proc/stat; busy is anything but idling or
    waiting for I/O."""
    fields = [int(value) for value in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    total = sum(fields[:8])  # guest time, the fields after these, is already counted in user
    return (total - fields[3] - fields[4]) / _CLK_TCK, total / _CLK_TCK


def _dirty_bytes() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("Dirty:"):
            return int(line.split()[1]) << 10
    return 0


def rss_bytes(pids: Sequence[int]) -> int:
    """Sum of resident set sizes. Forked workers share pages with their master, so this overstates what the
    tree really costs the machine; it is the number ``ps`` and most monitoring show, and the same for every server."""
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/statm", "rb") as statm:
                total += int(statm.read().split()[1]) * _PAGE
        except (OSError, IndexError):
            continue
    return total


class PeakRss:
    """Samples the RSS of a process tree every ``interval`` seconds in a thread, keeping the peak."""

    def __init__(self, root: int | None, interval: float = 0.25) -> None:
        self.root = root
        self.interval = interval
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while True:
            if self.root is not None:
                self.peak = max(self.peak, rss_bytes(tree_pids(self.root)))
            if self._stop.wait(self.interval):
                return

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def _wait_port(port: int, process: subprocess.Popen[bytes], what: str, log_path: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise StackError(f"{what} exited with status {process.returncode}:\n{tail(log_path)}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise StackError(f"{what} did not listen on 127.0.0.1:{port} within {timeout:.0f} s:\n{tail(log_path)}")


def tail(path: Path, lines: int = 15) -> str:
    if not path.exists():
        return f"(no log at {path})"
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def stop_tree(process: subprocess.Popen[bytes] | None, sig: int, timeout: float = 15.0) -> None:
    """Signal the root the way its server wants to be stopped, wait, then SIGKILL whatever of the tree we
    started is left (a prefork child that missed its master's exit would hold the port for the next run)."""
    if process is None:
        return
    pids = tree_pids(process.pid)
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(sig)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    for pid in pids:
        if pid != process.pid and _stat_fields(pid) is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


@dataclass
class Backend:
    """One server process (ours serves three rows: FastCGI with and without keep-conn, and uwsgi)."""

    name: str
    scratch: Path
    workers: int
    ports: dict[str, int]  # protocol -> port
    process: subprocess.Popen[bytes] | None = None
    gateway: GatewayProcess | None = None
    restarts: int = 0
    #: extra command-line options for our gateway (the curves: --sessions, --max-body-size)
    extra_args: tuple[str, ...] = ()
    #: extra environment for the server (the curves: a peer's app-level session store)
    extra_env: tuple[tuple[str, str], ...] = ()

    @property
    def log_path(self) -> Path:
        return self.gateway.log if self.gateway is not None else self.scratch / f"{self.name}.log"

    @property
    def pid(self) -> int | None:
        if self.gateway is not None and self.gateway.process is not None:
            return self.gateway.process.pid
        return self.process.pid if self.process is not None else None

    def alive(self) -> bool:
        process = self.gateway.process if self.gateway is not None else self.process
        return process is not None and process.poll() is None

    def command(self) -> list[str]:
        """The argv, in the peers' virtualenv; each uses the server's own defaults beyond the worker count."""
        bin_dir, n = PEERS_VENV / "bin", str(self.workers)
        port = next(iter(self.ports.values()))
        if self.name == "uwsgi":
            return [str(bin_dir / "uwsgi"), "--socket", f"127.0.0.1:{port}", "--master", "--processes", n,
                    "--module", APP, "--pythonpath", str(ROOT), "--disable-logging", "--die-on-term",
                    "--need-app", "--no-orphans"]  # fmt: skip
        if self.name == "gunicorn":
            return [str(bin_dir / "gunicorn"), "-w", n, "-b", f"127.0.0.1:{port}", "--chdir", str(ROOT),
                    "--log-level", "warning", APP]  # fmt: skip
        if self.name == "waitress":
            return [str(bin_dir / "waitress-serve"), f"--listen=127.0.0.1:{port}", APP]
        if self.name in ("flup", "fcgisgi"):
            return [str(bin_dir / "python"), "-m", "benchmarks.launchers", self.name, "--port", str(port),
                    "--workers", n]  # fmt: skip
        raise BenchError(f"no command for {self.name}")

    def start(self) -> None:
        self.scratch.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONDONTWRITEBYTECODE": "1", **dict(self.extra_env)}
        if self.name == "ours":
            args = ["--fcgi", f"127.0.0.1:{self.ports['fcgi']}", "--uwsgi", f"127.0.0.1:{self.ports['uwsgi']}",
                    "--workers", str(self.workers), *self.extra_args, APP]  # fmt: skip
            self.gateway = GatewayProcess(self.scratch / "ours", args, env=env, cwd=ROOT).start()
            return
        with self.log_path.open("ab") as log_file:
            self.process = subprocess.Popen(
                self.command(), stdout=log_file, stderr=log_file, stdin=subprocess.DEVNULL, env=env, cwd=ROOT
            )
        _wait_port(next(iter(self.ports.values())), self.process, self.name, self.log_path, 60.0)

    def stop(self) -> None:
        if self.gateway is not None:
            stop_tree(self.gateway.process, signal.SIGTERM)
            self.gateway = None
        # uWSGI reloads on SIGTERM unless --die-on-term; SIGINT stops every one of them at once. flup's master
        # notes the signal but goes back into a select() without timeout until traffic arrives: an idle flup
        # ignores it, so it gets a short grace before the tree is killed.
        stop_tree(self.process, signal.SIGINT, timeout=2.0 if self.name == "flup" else 15.0)
        self.process = None

    def restart(self) -> None:
        self.stop()
        self.restarts += 1
        self.start()


# -- nginx ------------------------------------------------------------------------------------------------------
_PARAMS = {"fcgi": "fastcgi_params", "uwsgi": "uwsgi_params"}


def _location(spec: ServerSpec, prefix: str, *, buffered: bool) -> str:
    upstream = upstream_name(spec)
    lines: list[str] = []
    if spec.protocol == "http":
        lines += [f"proxy_pass http://{upstream};"]
        if spec.keepalive:
            lines += ["proxy_http_version 1.1;", 'proxy_set_header Connection "";']
        directive = "proxy"
    else:
        directive = "fastcgi" if spec.protocol == "fcgi" else "uwsgi"
        lines += [f"include /etc/nginx/{_PARAMS[spec.protocol]};", f"{directive}_pass {upstream};"]
        if spec.keepalive:
            lines += ["fastcgi_keep_conn on;"]
    if not buffered:
        lines += [f"{directive}_request_buffering off;", f"{directive}_buffering off;"]
    body = "\n            ".join(lines)
    return f"        location {prefix}/{spec.name}/ {{\n            {body}\n        }}"


def render_nginx_conf(
    scratch: Path, port: int, servers: Sequence[tuple[ServerSpec, int]], max_body: str = "64m"
) -> str:
    """One nginx, ``worker_processes 1``, everything under ``scratch``; access logging off (it would be a cost
    shared by all, and disk noise on a small machine); buffers large enough that the 64 KiB response and the 1 MiB
    upload stay in memory rather than in nginx's temp files."""
    temp = scratch / "nginx-temp"
    user = "user root root;\n" if os.geteuid() == 0 else ""
    upstreams = []
    for spec, backend_port in servers:
        keep = " keepalive 64;" if spec.keepalive else ""
        upstreams.append(f"    upstream {upstream_name(spec)} {{ server 127.0.0.1:{backend_port};{keep} }}")
    locations = [_location(spec, "/t", buffered=True) for spec, _ in servers]
    locations += [_location(spec, "/s", buffered=False) for spec, _ in servers]
    upstream_text, location_text = "\n".join(upstreams), "\n".join(locations)
    return f"""{user}daemon off;
worker_processes 1;
worker_rlimit_nofile 30000;
pid {scratch}/nginx.pid;
error_log {scratch}/nginx-error.log error;
events {{ worker_connections 20000; }}
http {{
    access_log off;
    client_body_temp_path {temp}/client;
    fastcgi_temp_path {temp}/fastcgi;
    uwsgi_temp_path {temp}/uwsgi;
    proxy_temp_path {temp}/proxy;
    scgi_temp_path {temp}/scgi;
    client_max_body_size {max_body};
    client_body_buffer_size 2m;
    fastcgi_buffers 16 16k;
    uwsgi_buffers 16 16k;
    proxy_buffers 16 16k;
{upstream_text}
    server {{
        listen 127.0.0.1:{port} backlog=4096;
{location_text}
    }}
}}
"""


@dataclass
class Nginx:
    scratch: Path
    port: int
    servers: Sequence[tuple[ServerSpec, int]]
    process: subprocess.Popen[bytes] | None = None
    max_body: str = "64m"

    @property
    def error_log(self) -> Path:
        return self.scratch / "nginx-error.log"

    def start(self) -> Nginx:
        self.scratch.mkdir(parents=True, exist_ok=True)
        (self.scratch / "nginx-temp").mkdir(exist_ok=True)
        conf = self.scratch / "nginx.conf"
        conf.write_text(render_nginx_conf(self.scratch, self.port, self.servers, self.max_body))
        with (self.scratch / "nginx-stderr.log").open("ab") as stderr:
            self.process = subprocess.Popen(
                [find_nginx(), "-p", str(self.scratch), "-c", str(conf), "-e", str(self.error_log)],
                stdout=stderr,
                stderr=stderr,
                stdin=subprocess.DEVNULL,
            )
        _wait_port(self.port, self.process, "nginx", self.error_log, 15.0)
        return self

    def stop(self) -> None:
        stop_tree(self.process, signal.SIGQUIT)


def http_get(port: int, path: str, body: bytes | None = None, timeout: float = 10.0) -> tuple[int, bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        connection.request("POST" if body is not None else "GET", path, body=body)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


# -- tools ------------------------------------------------------------------------------------------------------
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


def ensure_nginx() -> str:
    try:
        return find_nginx()
    except StackError as err:
        raise BenchError(str(err)) from None


@dataclass
class Peers:
    """What the peers' virtualenv holds: package -> version, and package -> why it could not be installed."""

    versions: dict[str, str] = field(default_factory=dict)
    failures: dict[str, str] = field(default_factory=dict)

    @property
    def python(self) -> Path:
        return PEERS_VENV / "bin" / "python"


def _installed(python: Path) -> dict[str, str]:
    result = subprocess.run(
        [str(python), "-m", "pip", "list", "--format=json", "--disable-pip-version-check"],
        capture_output=True, text=True, check=False, timeout=120,
    )  # fmt: skip
    if result.returncode:
        return {}
    return {item["name"].lower(): item["version"] for item in json.loads(result.stdout)}


def ensure_peers(packages: Sequence[str], *, install: bool = True) -> Peers:
    """Create ``benchmarks/.peers-venv`` with our python if needed and install each missing package alone, so
    one that fails (uWSGI builds from source with gcc) costs only its own rows."""
    peers = Peers()
    if not packages:
        return peers
    PEERS_VENV.parent.mkdir(parents=True, exist_ok=True)
    with open(BENCH_DIR / ".peers-venv.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # two benchmark runs must not pip into the same venv at once
        if not peers.python.exists():
            if not install:
                peers.failures.update(dict.fromkeys(packages, "not installed (--no-install)"))
                return peers
            log(f"creating the peers' virtualenv {PEERS_VENV.relative_to(ROOT)} with {sys.executable}")
            try:
                subprocess.run(
                    [sys.executable, "-m", "venv", str(PEERS_VENV)], check=True, timeout=300, capture_output=True
                )
            except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as err:
                output = getattr(err, "stderr", b"") or b""
                reason = f"could not create the virtualenv: {err} {output.decode(errors='replace')[-300:]}"
                peers.failures.update(dict.fromkeys(packages, reason))
                return peers
        installed = _installed(peers.python)
        for package in packages:
            if package.lower() not in installed:
                if not install:
                    peers.failures[package] = "not installed (--no-install)"
                    continue
                log(f"pip install {package} into the peers' virtualenv")
                started = time.monotonic()
                try:
                    result = subprocess.run(
                        [str(peers.python), "-m", "pip", "install", "-q", "--disable-pip-version-check", package],
                        capture_output=True, text=True, check=False, timeout=_INSTALL_TIMEOUT,
                    )  # fmt: skip
                except subprocess.TimeoutExpired:
                    peers.failures[package] = f"pip install timed out after {_INSTALL_TIMEOUT:.0f} s"
                    continue
                if result.returncode:
                    output = [line for line in (result.stdout + result.stderr).splitlines() if line.strip()]
                    reason = " / ".join(output[-4:]) or f"pip exited with {result.returncode}"
                    peers.failures[package] = f"pip install failed: {reason}"
                    log(f"  {package} failed to install; its rows will say so")
                    continue
                log(f"  {package} installed in {time.monotonic() - started:.0f} s")
        installed = _installed(peers.python)
    for package in packages:
        if package not in peers.failures:
            if package.lower() in installed:
                peers.versions[package] = installed[package.lower()]
            else:
                peers.failures[package] = "pip reported success but the package is not listed"
    return peers


# -- wrk --------------------------------------------------------------------------------------------------------
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


# -- the stack --------------------------------------------------------------------------------------------------
@dataclass
class Stack:
    """Every selected server's process plus one nginx in front of them all, for the whole run."""

    scratch: Path
    specs: list[ServerSpec]
    workers: int
    peers: Peers
    backends: dict[str, Backend] = field(default_factory=dict)
    #: server name -> why it has no results (install failure, start failure).
    unavailable: dict[str, str] = field(default_factory=dict)
    nginx: Nginx | None = None
    ours_args: tuple[str, ...] = ()
    max_body: str = "64m"
    peer_env: tuple[tuple[str, str], ...] = ()

    @property
    def port(self) -> int:
        assert self.nginx is not None
        return self.nginx.port

    def backend_for(self, spec: ServerSpec) -> Backend:
        return self.backends[spec.backend]

    def running(self) -> list[ServerSpec]:
        return [spec for spec in self.specs if spec.name not in self.unavailable]

    def start(self) -> Stack:
        for spec in self.specs:
            if spec.package is not None and spec.package in self.peers.failures:
                self.unavailable[spec.name] = self.peers.failures[spec.package]
                continue
            if spec.backend not in self.backends:
                ports = {"fcgi": free_port(), "uwsgi": free_port()} if spec.backend == "ours" else {}
                if not ports:
                    ports = {spec.protocol: free_port()}
                ours = spec.backend == "ours"
                backend = Backend(
                    spec.backend,
                    self.scratch,
                    self.workers,
                    ports,
                    extra_args=self.ours_args if ours else (),
                    extra_env=() if ours else self.peer_env,
                )
                log(f"starting {spec.backend} ({self.workers} workers)")
                try:
                    backend.start()
                except (StackError, OSError) as err:
                    backend.stop()
                    reason = f"failed to start: {str(err).splitlines()[0]}"
                    log(f"  {spec.backend} {reason}; see {backend.log_path}")
                    for other in self.specs:
                        if other.backend == spec.backend:
                            self.unavailable[other.name] = reason
                    continue
                self.backends[spec.backend] = backend
        routes = [(spec, self.backend_for(spec).ports[spec.protocol]) for spec in self.running()]
        if not routes:
            reasons = "; ".join(f"{name}: {why}" for name, why in self.unavailable.items())
            raise BenchError(f"no server could be started: {reasons}")
        self.nginx = Nginx(self.scratch / "nginx", free_port(), routes, max_body=self.max_body)
        try:
            self.nginx.start()
        except StackError as err:
            raise BenchError(f"the benchmark's nginx would not start: {err}") from None
        log(f"nginx on 127.0.0.1:{self.nginx.port} in front of {len(routes)} server rows")
        for spec in self.running():
            self._wait_ready(spec)
        return self

    def _wait_ready(self, spec: ServerSpec, timeout: float = 30.0) -> None:
        """A listening socket is not a ready server (prefork children may still be importing the app)."""
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            try:
                status, body = http_get(self.port, f"/t/{spec.name}/hello", timeout=5)
                if status == 200 and body == b"Hello world\n":
                    return
                last = f"HTTP {status} {body[:80]!r}"
            except OSError as err:
                last = f"{type(err).__name__}: {err}"
            time.sleep(0.2)
        self.unavailable[spec.name] = f"never answered /hello through nginx ({last})"
        log(f"  {spec.name} is not answering: {last}; see {self.backend_for(spec).log_path}")

    def ensure_alive(self, spec: ServerSpec) -> bool:
        """Restart a backend that died during a measurement (and say so); False if it will not come back."""
        backend = self.backend_for(spec)
        if backend.alive():
            return True
        log(f"  {backend.name} died (see {backend.log_path}); restarting it")
        backend.restarts += 1
        return self.restart(spec, failure="died and failed to restart")

    def restart(self, spec: ServerSpec, failure: str = "failed to restart") -> bool:
        """A fresh process for ``spec``'s server (ours serves three rows: all of them restart); False, and the
        row marked unavailable with ``failure``, if it will not come back."""
        backend = self.backend_for(spec)
        try:
            backend.stop()
            backend.start()
        except (StackError, OSError) as err:
            self.unavailable[spec.name] = f"{failure}: {str(err).splitlines()[0]}"
            return False
        self._wait_ready(spec)
        return spec.name not in self.unavailable

    def stop_server(self, spec: ServerSpec) -> None:
        """Stop ``spec``'s server until its next ``restart``, so nothing it still holds (a peer's spooled responses,
        its threads, its sockets in the kernel) lives on while the other servers are measured."""
        self.backend_for(spec).stop()

    def wait_quiet(self, *, limit: float = 20.0, window: float = 0.5, idle: float = 0.1) -> None:
        """Wait (up to ``limit`` s) until the whole machine is nearly idle: under ``idle`` of one core busy over
        a ``window``, and dirty pages written back. Not just nginx and the server: a peer that spooled a slow
        reader's responses to disk leaves the kernel writing them back, which slowed the next measured row."""
        deadline = time.monotonic() + limit
        time.sleep(1.0)
        while time.monotonic() < deadline:
            before = machine_seconds()[0]
            time.sleep(window)
            if machine_seconds()[0] - before < idle * window and _dirty_bytes() < 64 << 20:
                return

    def stop(self) -> None:
        if self.nginx is not None:
            self.nginx.stop()
        for backend in self.backends.values():
            backend.stop()


@contextlib.contextmanager
def running_stack(
    scratch: Path,
    specs: list[ServerSpec],
    workers: int,
    peers: Peers,
    *,
    ours_args: Sequence[str] = (),
    max_body: str = "64m",
    peer_env: Mapping[str, str] | None = None,
) -> Iterator[Stack]:
    stack = Stack(
        scratch,
        specs,
        workers,
        peers,
        ours_args=tuple(ours_args),
        max_body=max_body,
        peer_env=tuple((peer_env or {}).items()),
    )
    try:
        yield stack.start()
    finally:
        stack.stop()


def fresh_scratch(work_dir: Path, kind: str) -> Path:
    """A new scratch directory for this run; earlier runs' directories of the same kind are removed, so the
    logs of the last run stay for a post-mortem without the work directory growing forever."""
    work_dir.mkdir(parents=True, exist_ok=True)
    for old in work_dir.glob(f"{kind}-*"):
        shutil.rmtree(old, ignore_errors=True)
    scratch = work_dir / f"{kind}-{time.strftime('%Y%m%d-%H%M%S')}"
    scratch.mkdir()
    return scratch


# -- reporting --------------------------------------------------------------------------------------------------
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
        f"- python: {sys.version.split()[0]} ({sys.executable}); our protocol codecs {protocols.build_kind()}",
        f"- nginx: {nginx_version.strip().removeprefix('nginx version: ')}",
        f"- wrk: {wrk_version.strip()}",
    ]
    if peers.versions:
        lines.append("- peers: " + ", ".join(f"{name} {version}" for name, version in sorted(peers.versions.items())))
    for package, reason in sorted(peers.failures.items()):
        lines.append(f"- NOT INSTALLED: {package}: {reason}")
    return lines


SECTION_KEYS = ("throughput", "curves", "slow")
SECTION_TITLES = {"throughput": "Throughput", "curves": "Throughput: how cost grows", "slow": "Slow clients"}
#: A section missing from an existing file goes right after this one (the curves extend the throughput part).
_SECTION_AFTER = {"curves": "throughput"}
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
