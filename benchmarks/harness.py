"""The servers every benchmark runs and the stack that runs them: each server's process behind one private nginx.

Every server runs the same apps (``benchmarks.apps``) with the same worker count behind one nginx (devstack's), each
under its own ``location`` prefix: ``/t/NAME/`` with nginx's default buffering (what a deployment has; the
throughput benchmark) and ``/s/NAME/`` with request and response buffering off (so slow clients reach the backend;
the slow-client benchmark). The peers come from ``benchmarks.peers``; a run starts with ``begin`` and ends with
``benchmarks.report.publish``.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import shutil
import signal
import subprocess
import time
import typing
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar

from benchmarks.core import ROOT, BenchError, log
from benchmarks.peers import CHARTS_PACKAGE, PEERS_VENV, Peers, ensure_peers
from benchmarks.procstats import dirty_bytes, machine_seconds
from benchmarks.wrk import ensure_wrk
from devstack.nginx import BENCH_TUNING, Location, Nginx, Protocol, Upstream, find_nginx
from devstack.ports import free_port, wait_for_port
from devstack.processes import GatewayProcess, StackError, stop_process

APP = "benchmarks.apps:app"
T = TypeVar("T")


class NamedScenario(typing.Protocol):
    """What the round runner and the results data need of a benchmark's scenario."""

    @property
    def name(self) -> str: ...

    @property
    def label(self) -> str: ...


class RoundCell(typing.Protocol):
    """A measurement the round runner files under its round."""

    round: int


S = TypeVar("S", bound=NamedScenario)
C = TypeVar("C", bound=RoundCell)


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
    realapp: bool = False
    #: ``--slow``: the event loop of the attacker's own process (``benchmarks.slowloris --loop``).
    attacker_loop: str = "uvloop"


# -- the servers ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ServerSpec:
    """One row of the results: a server process (``backend``) reached by nginx over one protocol."""

    name: str
    label: str
    backend: str
    protocol: Protocol  # how nginx talks to it
    keepalive: bool  # nginx keeps upstream connections (fastcgi_keep_conn + upstream keepalive)
    package: str | None  # what the peers' virtualenv needs for it
    note: str  # ``{n}`` stands for the worker count
    #: wrk and the slow clients talk HTTP to the server's own port, no nginx in between.
    direct: bool = False


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
    # Served directly over HTTP: wrk (and the slow clients) at each server's own port.
    ServerSpec("ours-http", "ours, HTTP direct", "ours", "http", False, None, "{n} workers; --http, no nginx",
               direct=True),
    ServerSpec("gunicorn-http", "gunicorn sync, direct", "gunicorn", "http", False, "gunicorn",
               "-w {n} sync workers, no nginx", direct=True),
    ServerSpec("gthread-http", "gunicorn gthread, direct", "gthread", "http", False, "gunicorn",
               "-w {n} -k gthread --threads 4, no nginx", direct=True),
    ServerSpec("waitress-http", "waitress, direct", "waitress", "http", False, "waitress",
               "ONE process, 4 threads (its default), no nginx", direct=True),
    ServerSpec("uwsgi-http", "uWSGI --http-socket", "uwsgi-http", "http", False, "uwsgi",
               "--master --processes {n} --http-socket, no nginx", direct=True),
    ServerSpec("granian", "Granian WSGI", "granian", "http", False, "granian",
               "--interface wsgi --workers {n} (Rust), no nginx", direct=True),
)  # fmt: skip
SERVER_NAMES = tuple(spec.name for spec in SERVERS)

#: Threads per worker in the threaded rows (the uWSGI configuration users copy: processes = 2, threads = 4).
THREADS = 4
#: Backends that are another backend run with more options: name -> (base backend, extra arguments).
BACKEND_VARIANTS: dict[str, tuple[str, tuple[str, ...]]] = {
    "ours-threads": ("ours", ("--threads", str(THREADS))),
    "ours-preload": ("ours", ("--preload",)),
    "ours-preload-threads": ("ours", ("--preload", "--threads", str(THREADS))),
    "uwsgi-threads": ("uwsgi", ("--threads", str(THREADS))),
    "gunicorn-gthread": ("gunicorn", ("-k", "gthread", "--threads", str(THREADS))),
    "gthread": ("gunicorn", ("-k", "gthread", "--threads", str(THREADS))),
    "uwsgi-http": ("uwsgi", ()),  # listens with --http-socket
}


#: Our rows again, with ``--threads`` and ``--preload`` (issue #21): run only when named (``--servers
#: ours-t4-fcgi-keep,ours-t4-uwsgi``), so the default runs keep their length. NAME: (backend, what it adds).
OURS_VARIANTS: dict[str, tuple[str, str]] = {
    f"t{THREADS}": ("ours-threads", f"--threads {THREADS}"),
    "preload": ("ours-preload", "--preload"),
    f"preload-t{THREADS}": ("ours-preload-threads", f"--preload --threads {THREADS}"),
}
OPTIONAL_SERVERS: tuple[ServerSpec, ...] = tuple(
    replace(
        spec,
        name=spec.name.replace("ours-", f"ours-{tag}-", 1),
        label=f"{spec.label}, {options}",
        backend=backend,
        note=f"{spec.note}; {options}",
    )
    for tag, (backend, options) in OURS_VARIANTS.items()
    for spec in SERVERS
    if spec.backend == "ours"
)


def backend_base(name: str) -> str:
    """The server a backend runs: ``ours-threads`` is ``ours``."""
    return BACKEND_VARIANTS.get(name, (name, ()))[0]


#: ``--quick`` (the benchmark smoke): our rows behind nginx, our HTTP listener served directly, and one peer.
QUICK_SERVERS = ("ours-fcgi-keep", "ours-fcgi", "ours-uwsgi", "ours-http", "gunicorn")


def server_notes(specs: Sequence[ServerSpec], workers: int) -> list[str]:
    """How each row was run, for the results: a reader must see what was compared with what."""
    lines = ["| server | nginx speaks | how it runs |", "|---|---|---|"]
    for spec in specs:
        note = spec.note.format(n=workers)
        lines.append(f"| {spec.name} | {spec.protocol}{' (keepalive)' if spec.keepalive else ''} | {note} |")
    return lines


def servers_and_gaps(
    specs: Sequence[ServerSpec],
    workers: int,
    unavailable: Mapping[str, str],
    skipped: Mapping[tuple[str, str], str],
) -> list[str]:
    """A results section's tail: how each server ran, then what could not be measured and why."""
    lines = ["### Servers", "", *server_notes(specs, workers), ""]
    problems = [f"- {name}: {why}" for name, why in unavailable.items()]
    problems += [f"- {server} / {scenario}: {why}" for (server, scenario), why in skipped.items()]
    if problems:
        lines += ["### Not measured", "", *problems, ""]
    return lines


def unusable_cells(
    stack: Stack,
    running: Sequence[ServerSpec],
    scenarios: Sequence[S],
    check: Callable[[Stack, ServerSpec, S], str | None],
) -> dict[tuple[str, str], str]:
    """Why each (server, scenario) whose check request fails is left out, before anything is measured."""
    skipped: dict[tuple[str, str], str] = {}
    for spec in running:
        for scenario in scenarios:
            reason = check(stack, spec, scenario)
            if reason is not None:
                skipped[spec.name, scenario.name] = reason
                log(f"  {spec.name} / {scenario.name}: {reason}; skipped")
    return skipped


def interleaved_rounds(
    stack: Stack,
    running: Sequence[ServerSpec],
    scenarios: Sequence[S],
    rounds: int,
    skipped: Mapping[tuple[str, str], str],
    measure: Callable[[ServerSpec, S], C | None],
    describe: Callable[[ServerSpec, S, C], str],
) -> dict[tuple[str, str], list[C]]:
    """Every cell once per round, servers interleaved and the order rotated each round (so no server always runs
    right after the same neighbour), a progress line per cell; the cells by (server, scenario)."""
    cells: dict[tuple[str, str], list[C]] = {}
    total = rounds * len(scenarios) * len(running)
    done = 0
    for round_number in range(1, rounds + 1):
        shift = (round_number - 1) % max(len(running), 1)
        order = [*running[shift:], *running[:shift]]
        for scenario in scenarios:
            for spec in order:
                if (spec.name, scenario.name) in skipped or spec.name in stack.unavailable:
                    continue
                if not stack.ensure_alive(spec):
                    continue
                cell = measure(spec, scenario)
                done += 1
                if cell is None:
                    continue
                cell.round = round_number
                cells.setdefault((spec.name, scenario.name), []).append(cell)
                log(f"[{done}/{total}] round {round_number} {scenario.name:<9} {describe(spec, scenario, cell)}")
    return cells


def section_data(
    title: str,
    specs: Sequence[ServerSpec],
    scenarios: Sequence[NamedScenario],
    rows: Mapping[tuple[str, str], Any],
    unavailable: Mapping[str, str],
    skipped: Mapping[tuple[str, str], str],
) -> dict[str, Any]:
    """The JSON a results section keeps beside its table (``publish`` writes it): rows are dataclasses."""
    return {
        "title": title,
        "servers": [spec.name for spec in specs],
        "scenarios": [{"name": scenario.name, "label": scenario.label} for scenario in scenarios],
        "rows": [vars(row) for row in rows.values()],
        "unavailable": dict(unavailable),
        "skipped": {f"{server}/{scenario}": why for (server, scenario), why in skipped.items()},
    }


def select_named(known: Mapping[str, T], names: Sequence[str] | None, what: str) -> list[T]:
    """The items of ``known`` named in ``names``, in ``known``'s order (all of them when ``names`` is empty); a
    BenchError naming the unknown ones and the choices."""
    if not names:
        return list(known.values())
    unknown = sorted(set(names) - set(known))
    if unknown:
        raise BenchError(f"unknown {what}(s) {', '.join(unknown)}; known: {', '.join(known)}")
    return [item for name, item in known.items() if name in names]


def select_servers(names: Sequence[str] | None) -> list[ServerSpec]:
    """The named servers (``OPTIONAL_SERVERS`` among them), or every one of ``SERVERS`` when none is named."""
    if not names:
        return list(SERVERS)
    return select_named({spec.name: spec for spec in (*SERVERS, *OPTIONAL_SERVERS)}, names, "server")


def upstream_name(spec: ServerSpec) -> str:
    return "up_" + spec.name.replace("-", "_")


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
    #: the WSGI app, MODULE:CALLABLE
    app: str = APP

    @property
    def base(self) -> str:
        return backend_base(self.name)

    @property
    def variant_args(self) -> tuple[str, ...]:
        return BACKEND_VARIANTS.get(self.name, (self.name, ()))[1]

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
        app, extra = self.app, list(self.variant_args)
        if self.base == "uwsgi":
            listen = "--http-socket" if self.name == "uwsgi-http" else "--socket"
            return [str(bin_dir / "uwsgi"), listen, f"127.0.0.1:{port}", "--master", "--processes", n,
                    "--module", app, "--pythonpath", str(ROOT), "--disable-logging", "--die-on-term",
                    "--need-app", "--no-orphans", *extra]  # fmt: skip
        if self.base == "gunicorn":
            return [str(bin_dir / "gunicorn"), "-w", n, "-b", f"127.0.0.1:{port}", "--chdir", str(ROOT),
                    "--log-level", "warning", *extra, app]  # fmt: skip
        if self.name == "granian":
            return [str(bin_dir / "granian"), "--interface", "wsgi", "--workers", n, "--host", "127.0.0.1",
                    "--port", str(port), "--log-level", "warning", app]  # fmt: skip
        if self.name == "waitress":
            return [str(bin_dir / "waitress-serve"), f"--listen=127.0.0.1:{port}", app]
        if self.name in ("flup", "fcgisgi"):
            return [str(bin_dir / "python"), "-m", "benchmarks.launchers", self.name, "--port", str(port),
                    "--workers", n]  # fmt: skip
        raise BenchError(f"no command for {self.name}")

    def start(self) -> None:
        self.scratch.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONDONTWRITEBYTECODE": "1", **dict(self.extra_env)}
        if self.base == "ours":
            args = ["--fcgi", f"127.0.0.1:{self.ports['fcgi']}", "--uwsgi", f"127.0.0.1:{self.ports['uwsgi']}",
                    "--http", f"127.0.0.1:{self.ports['http']}", "--workers", str(self.workers),
                    *self.variant_args, *self.extra_args, self.app]  # fmt: skip
            self.gateway = GatewayProcess(self.scratch / self.name, args, env=env, cwd=ROOT).start()
            return
        with self.log_path.open("ab") as log_file:
            self.process = subprocess.Popen(
                self.command(), stdout=log_file, stderr=log_file, stdin=subprocess.DEVNULL, env=env, cwd=ROOT
            )
        wait_for_port(next(iter(self.ports.values())), self.process, self.name, self.log_path, 60.0)

    def stop(self) -> None:
        if self.gateway is not None:
            self.gateway.stop()
            self.gateway = None
        # uWSGI reloads on SIGTERM unless --die-on-term; SIGINT stops every one of them at once. flup's master
        # notes the signal but goes back into a select() without timeout until traffic arrives: an idle flup
        # ignores it, so it gets a short grace before the tree is killed.
        stop_process(self.process, signal.SIGINT, timeout=2.0 if self.name == "flup" else 15.0)
        self.process = None

    def restart(self) -> None:
        self.stop()
        self.restarts += 1
        self.start()


# -- nginx ------------------------------------------------------------------------------------------------------
def ensure_nginx() -> str:
    try:
        return find_nginx()
    except StackError as err:
        raise BenchError(str(err)) from None


def http_get(port: int, path: str, body: bytes | None = None, timeout: float = 10.0) -> tuple[int, bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        connection.request("POST" if body is not None else "GET", path, body=body)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


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
    app: str = APP

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
                ours = backend_base(spec.backend) == "ours"
                ports: dict[str, int] = (
                    {"fcgi": free_port(), "uwsgi": free_port(), "http": free_port()}
                    if ours
                    else {spec.protocol: free_port()}
                )
                backend = Backend(
                    spec.backend,
                    self.scratch,
                    self.workers,
                    ports,
                    extra_args=self.ours_args if ours else (),
                    extra_env=() if ours else self.peer_env,
                    app=self.app,
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
        routes = [(spec, self.backend_for(spec).ports[spec.protocol]) for spec in self.running() if not spec.direct]
        if not self.running():
            reasons = "; ".join(f"{name}: {why}" for name, why in self.unavailable.items())
            raise BenchError(f"no server could be started: {reasons}")
        upstreams = [
            Upstream(upstream_name(spec), f"127.0.0.1:{port}", keepalive=64 if spec.keepalive else 0)
            for spec, port in routes
        ]
        locations = [
            Location(f"{prefix}/{spec.name}/", upstream_name(spec), spec.protocol, spec.keepalive, buffered)
            for prefix, buffered in (("/t", True), ("/s", False))
            for spec, _ in routes
        ]
        tuning = replace(BENCH_TUNING, max_body=self.max_body)
        self.nginx = Nginx(self.scratch / "nginx", free_port(), upstreams=upstreams, locations=locations, tuning=tuning)
        try:
            self.nginx.start()
        except StackError as err:
            raise BenchError(f"the benchmark's nginx would not start: {err}") from None
        log(f"nginx on 127.0.0.1:{self.nginx.port} in front of {len(routes)} server rows")
        for spec in self.running():
            self._wait_ready(spec)
        return self

    def port_for(self, spec: ServerSpec) -> int:
        """Where a client reaches ``spec``: the server's own HTTP port when it is served directly, else nginx."""
        return self.backend_for(spec).ports["http"] if spec.direct else self.port

    def url(self, spec: ServerSpec, path: str, *, slow: bool = False) -> str:
        """``path`` on ``spec``'s row: nginx's buffered ``/t/`` (or unbuffered ``/s/``) location, or the server's
        own port (the same prefix, which the apps ignore) when it is served directly."""
        return f"http://127.0.0.1:{self.port_for(spec)}{self.path(spec, path, slow=slow)}"

    @staticmethod
    def path(spec: ServerSpec, path: str, *, slow: bool = False) -> str:
        return f"/{'s' if slow else 't'}/{spec.name}{path}"

    def _wait_ready(self, spec: ServerSpec, timeout: float = 30.0) -> None:
        """A listening socket is not a ready server (prefork children may still be importing the app)."""
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            try:
                status, body = http_get(self.port_for(spec), self.path(spec, "/hello"), timeout=5)
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
            if machine_seconds()[0] - before < idle * window and dirty_bytes() < 64 << 20:
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
    app: str = APP,
) -> Iterator[Stack]:
    stack = Stack(
        scratch,
        specs,
        workers,
        peers,
        ours_args=tuple(ours_args),
        max_body=max_body,
        peer_env=tuple((peer_env or {}).items()),
        app=app,
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


@dataclass
class Run:
    """One benchmark run under way: its options, its tools, and when it started (the report says how long)."""

    options: Options
    kind: str  # the RESULTS.md section and the name of its data and chart files
    wrk: str
    peers: Peers
    scratch: Path
    started: float = field(default_factory=time.monotonic)


def begin(options: Options, kind: str, specs: Sequence[ServerSpec], extra_packages: Sequence[str] = ()) -> Run:
    """What every benchmark does first: wrk and nginx present, the peers that ``specs`` need (and matplotlib for
    the chart) installed, a fresh scratch directory."""
    wrk = ensure_wrk()
    ensure_nginx()
    packages = sorted({spec.package for spec in specs if spec.package}) + list(extra_packages)
    if options.charts:
        packages.append(CHARTS_PACKAGE)
    peers = ensure_peers(packages, install=options.install)
    return Run(options, kind, wrk, peers, fresh_scratch(options.work_dir, kind))
