"""The gateway process: binds, starts the workers, serves, and acts on signals until it shuts down in order.

Signal handlers only record which signal arrived; the serving coroutine wakes up and dispatches each one, in
order, to the ``handle_<name>`` method named after it (``handle_hup`` for SIGHUP), as gunicorn's arbiter does. A
handler acts and returns None, or returns the :class:`Stop` it asks for.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import enum
import gc
import grp
import logging
import os
import pwd
import resource
import shutil
import signal
import socket
import ssl
import tempfile
from pathlib import Path
from typing import Any, Protocol

import setproctitle

import gateway.compiled
import gateway.protocols
from gateway.config.addresses import Address, Listen, ProtocolName, parse_networks
from gateway.config.settings import Config, ConfigError
from gateway.contract.exits import EXIT_APP_LOAD, EXIT_CONFIG, EXIT_OK, EXIT_WORKERS_GONE
from gateway.loop.accesslog import DEFAULT_FORMAT, AccessLog
from gateway.loop.budget import MemoryBudget
from gateway.loop.dispatch import Dispatcher, StaticServer
from gateway.loop.front import FrontContext
from gateway.loop.listeners import BoundListener, adopt, bind, pause, serve
from gateway.loop.session_hook import SessionHook
from gateway.loop.tls import tls_context
from gateway.master.cluster import ClusterServices, CountingStore, response_log
from gateway.master.supervisor import AppLoadFailed, Supervisor
from gateway.master.systemd import inherited_sockets, notify
from gateway.sessions import open_store

log = logging.getLogger("gateway.server")

_SWEEP_INTERVAL = 1.0

HANDLED_SIGNALS = (
    signal.SIGTERM,
    signal.SIGINT,
    signal.SIGQUIT,
    signal.SIGHUP,
    signal.SIGUSR1,
    signal.SIGTTIN,
    signal.SIGTTOU,
)


def session_hook_for(config: Config) -> SessionHook | None:
    """The hook that loads and stores sessions in the loop, or None with ``--sessions off``."""
    store = open_store(
        config.sessions,
        idle_ttl=config.session_ttl,
        max_age=config.session_max_age or None,
        timeout=config.session_timeout,
        prefix=config.session_prefix,
        pool_size=config.session_pool_size,
    )
    if store is None:
        return None
    log.info("sessions: %s store (idle %g s)", config.sessions, config.session_ttl)
    if config.stats or config.metrics:
        store = CountingStore(store)
    return SessionHook(store, config)


def _static_files(config: Config) -> StaticServer | None:
    """The ``--static`` mappings' server, or None. Imported only when configured: its MIME table and HTTP date
    modules stay out of every other master's memory."""
    if not config.static:
        return None
    from gateway.loop.static import StaticFiles  # noqa: PLC0415 (only with --static, see above)

    return StaticFiles(config.static)


def log_codec_build() -> None:
    """Say whether the protocol codecs run compiled: interpreted, the event loop spends more CPU per request."""
    if not gateway.protocols.compiled():
        log.warning(
            "protocol codecs run interpreted (installed with GATEWAY_PURE_PYTHON=1, or built without a C "
            "compiler): the event loop spends more CPU per request; reinstall with gcc and the "
            "Python headers (apt-get install gcc python3-dev) to compile them"
        )
        return
    stale = gateway.protocols.stale_sources() + gateway.compiled.stale_sources()
    if stale:
        log.warning(
            "%s changed after it was compiled (mypyc): the older compiled code is what runs; rebuild with "
            "`make build` (or pip install again)",
            ", ".join(stale),
        )
    else:
        hot = "compiled" if gateway.compiled.compiled() else "interpreted"
        log.info("protocol codecs: compiled (mypyc); the per-request path of the loop and the workers: %s", hot)


def raise_file_limit() -> None:
    """Every connection costs a descriptor: raise the soft limit to the hard one (often 1024 → 524288)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError) as err:
            log.warning("could not raise the open-file limit from %d to %d: %s", soft, hard, err)
        else:
            log.debug("open-file limit raised from %d to %d", soft, hard)


class Stop(enum.Enum):
    """How a signal asks the gateway to stop."""

    #: Stop accepting, let in-flight requests finish (up to --graceful-timeout), then stop the workers.
    GRACEFUL = "graceful"
    #: Stop accepting and stop the workers now, cutting what is in flight.
    IMMEDIATE = "immediate"


class PoolControls(Protocol):
    """What signals do to the worker pool."""

    def reload(self) -> None: ...
    def add_worker(self) -> None: ...
    def remove_worker(self) -> None: ...


def virtualenvs_under(roots: list[str], depth: int = 2) -> list[str]:
    """Virtualenvs (a ``pyvenv.cfg`` at their top) within ``depth`` levels of ``roots``: a project often keeps one
    inside its directory, and a ``pip install`` there must not reload the workers."""
    found: list[str] = []
    for root in roots:
        level = [root]
        for _ in range(depth + 1):
            deeper: list[str] = []
            for directory in level:
                if os.path.isfile(os.path.join(directory, "pyvenv.cfg")):
                    found.append(directory)
                    continue
                with contextlib.suppress(OSError):
                    deeper += [entry.path for entry in os.scandir(directory) if entry.is_dir(follow_symlinks=False)]
            level = deeper
    return sorted(found)


class Gateway:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.listeners: list[BoundListener] = []
        self.tls: ssl.SSLContext | None = None  # the HTTP listeners' (--certfile/--keyfile)
        self.contexts: list[FrontContext] = []
        self.pending_signals: collections.deque[int] = collections.deque()
        self._wake: asyncio.Event | None = None
        self.access_log: AccessLog | None = None
        self._accept_paused = False
        self._stopping = False
        #: The pool the signal handlers act on, once it exists.
        self.pool: PoolControls | None = None
        #: What incomplete requests may hold, across every listener (--max-connection-buffer, --max-buffered).
        self.budget = MemoryBudget(config.max_connection_buffer, config.max_buffered)
        #: --subscribe, --stats, --metrics.
        self.cluster = ClusterServices(config)

    def _record_signal(self, signum: int) -> None:
        self.pending_signals.append(signum)
        if self._wake is not None:
            self._wake.set()

    async def run(self) -> int:
        config = self.config
        loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        try:
            session_hook = session_hook_for(self.config)
            self.tls = tls_context(config)  # before binding: a bad certificate is a configuration error
            self.listeners = self._bind()
            self.cluster.prepare(self.listeners)
            if config.access_log:
                self.access_log = AccessLog(config.access_log, config.access_log_format or DEFAULT_FORMAT)
            static = _static_files(config)
            self._drop_privileges()
            self._write_pidfile()
        except (ConfigError, ValueError, OSError) as err:
            log.critical("%s", err)
            self._close_listeners()
            self.cluster.close()
            return EXIT_CONFIG
        setproctitle.setproctitle(
            f"gateway master [{config.app}] {' '.join(str(b.listen.address) for b in self.listeners)}"
        )
        spool_dir = tempfile.mkdtemp(prefix="gateway-spool-", dir=config.spool_dir)
        pool = Supervisor(config, access_log=response_log(config, self.access_log))
        self.pool = pool
        dispatcher = Dispatcher(pool, [session_hook] if session_hook is not None else [], static)
        watcher: asyncio.Task[None] | None = None
        sweeper: asyncio.Task[None] | None = None
        raise_file_limit()
        for signum in HANDLED_SIGNALS:
            loop.add_signal_handler(signum, self._record_signal, signum)
        try:
            if config.uses_demo_app:
                log.info("no application given: serving the built-in demo app (%s)", config.app)
            try:
                await pool.start()
            except AppLoadFailed as err:
                log.critical("%s; exiting", err)
                await pool.stop(0)
                return EXIT_APP_LOAD
            await self._serve(dispatcher, spool_dir)
            # Everything imported and built so far lives as long as the process: keep the collector from
            # rescanning it on every full collection while requests churn short-lived objects.
            gc.freeze()
            sweeper = loop.create_task(self._sweep())
            sizes = (
                f"{config.workers}"
                if config.workers_max <= config.workers
                else f"{config.workers} (up to {config.workers_max})"
            )
            log.info("%s workers serving %s", sizes, config.app)
            log_codec_build()
            try:
                await self.cluster.start(pool, self.contexts, self.listeners)
            except ConfigError as err:
                log.critical("%s", err)
                await self._shutdown(pool, immediate=True)
                return EXIT_CONFIG
            notify("READY=1\nSTATUS=serving")
            if config.reload:
                watcher = loop.create_task(self._watch_sources())
            status, stop = await self._until_stopped(pool)
            notify("STOPPING=1")
            await self.cluster.leave(immediate=stop is Stop.IMMEDIATE)
            await self._shutdown(pool, immediate=stop is Stop.IMMEDIATE)
            return status
        finally:
            for task in (watcher, sweeper):
                if task is not None:
                    task.cancel()
            for signum in HANDLED_SIGNALS:
                loop.remove_signal_handler(signum)
            self._close_listeners()
            self.cluster.close()
            shutil.rmtree(spool_dir, ignore_errors=True)
            if self.access_log is not None:
                self.access_log.close()
            if config.pidfile:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(config.pidfile)
            if session_hook is not None:
                await session_hook.close()

    def _bind(self) -> list[BoundListener]:
        config = self.config
        listeners = []
        for name, sock in inherited_sockets():
            protocol: ProtocolName = "uwsgi" if "uwsgi" in name else "http" if "http" in name else "fastcgi"
            where = sock.getsockname()
            address = Address(path=where) if isinstance(where, str) else Address(host=where[0], port=where[1])
            log.info("socket activation: %s socket %s named %r", protocol, address, name)
            listeners.append(adopt(Listen(protocol, address), sock))
        try:
            listeners += [
                bind(listen, config.backlog, config.socket_mode, reuse_port=config.reuse_port)
                for listen in config.listeners
            ]
        except ConfigError:
            for listener in listeners:
                listener.close()
            raise
        if not listeners:
            raise ConfigError("nothing to listen on: give --fcgi ADDR, --uwsgi ADDR or --http ADDR, e.g. --fcgi :9000")
        return listeners

    def _drop_privileges(self) -> None:
        """After binding (ports below 1024, socket files in root's directories), run as --user/--group."""
        config = self.config
        if not config.user and not config.group:
            return
        try:
            user = pwd.getpwnam(config.user) if config.user else None
            gid = grp.getgrnam(config.group).gr_gid if config.group else (user.pw_gid if user else os.getgid())
        except KeyError as err:
            raise ConfigError(f"--user/--group: {err.args[0]}") from None
        for listener in self.listeners:
            path = listener.listen.address.path
            if path is not None and listener.owns_path:
                os.chown(path, user.pw_uid if user else -1, gid)
        if config.spool_dir:
            os.chown(config.spool_dir, user.pw_uid if user else -1, gid)
        os.setgid(gid)
        if user is not None:
            os.initgroups(user.pw_name, gid)
            os.setuid(user.pw_uid)
        log.info("running as user %s, group %d", user.pw_name if user else os.getuid(), gid)
        for listener in self.listeners:
            path = listener.listen.address.path
            if path is not None and listener.owns_path and not os.access(os.path.dirname(path) or ".", os.W_OK):
                # Unlinking needs the directory, which stays root's; the next start replaces the stale file.
                listener.owns_path = False
                log.info(
                    "%s will stay after exit: its directory is not writable by the --user/--group we run as "
                    "(harmless, the next start replaces it; README: unix sockets and --user)",
                    path,
                )

    def _write_pidfile(self) -> None:
        if self.config.pidfile:
            Path(self.config.pidfile).write_text(f"{os.getpid()}\n")

    async def _serve(self, dispatcher: Dispatcher, spool_dir: str) -> None:
        config = self.config
        web_server_addrs = os.environ.get("FCGI_WEB_SERVER_ADDRS", "")
        for listener in self.listeners:
            allowed = config.allow_from
            if listener.listen.protocol == "fastcgi" and web_server_addrs:
                allowed = allowed + parse_networks([web_server_addrs])
            tcp = listener.sock.family in (socket.AF_INET, socket.AF_INET6)
            address = str(listener.listen.address)
            context = FrontContext(config, dispatcher, spool_dir, address, allowed, tcp=tcp, shared_budget=self.budget)
            if listener.listen.protocol == "http":
                context.tls = self.tls
            context.on_count_changed = self._connections_changed
            self.contexts.append(context)
            await serve(listener, context, config.backlog)
            log.info("listening for %s on %s", listener.listen.protocol, listener.listen.address)

    async def _sweep(self) -> None:
        """Once a second, every connection checks its time limits: one pass, no timer per connection."""
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(_SWEEP_INTERVAL)
            now = loop.time()
            for context in self.contexts:
                context.sweep(now)
            self.budget.sweep()

    def _connections_changed(self) -> None:
        """--max-connections: stop accepting at the cap (the backlog holds new connections), resume below it."""
        if self._stopping:
            return
        total = 0
        for context in self.contexts:  # once per connection opened and closed: no generator
            total += len(context.connections)
        limit = self.config.max_connections
        if not self._accept_paused and total >= limit:
            self._accept_paused = True
            log.warning("%d connections open (--max-connections): not accepting more until some close", total)
            for listener in self.listeners:
                pause(listener)
        elif self._accept_paused and total < limit:
            self._accept_paused = False
            log.info("%d connections open: accepting again", total)
            asyncio.get_running_loop().create_task(self._resume_accepting())

    async def _resume_accepting(self) -> None:
        for listener, context in zip(self.listeners, self.contexts, strict=True):
            if listener.server is None and not self._accept_paused and not self._stopping:
                await serve(listener, context, self.config.backlog)

    async def _until_stopped(self, pool: Supervisor) -> tuple[int, Stop]:
        """Act on each recorded signal until one asks to stop; return the exit status and how to stop."""
        assert self._wake is not None
        loop = asyncio.get_running_loop()
        while True:
            wake_wait = loop.create_task(self._wake.wait())
            waiters: set[asyncio.Future[Any]] = {pool.fatal, wake_wait}
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
            wake_wait.cancel()
            self._wake.clear()
            if pool.fatal.done():
                log.critical("%s; no worker is left, exiting", pool.fatal.result())
                return EXIT_WORKERS_GONE, Stop.IMMEDIATE
            while self.pending_signals:
                stop = self.dispatch_signal(self.pending_signals.popleft())
                if stop is not None:
                    return EXIT_OK, stop

    def dispatch_signal(self, signum: int) -> Stop | None:
        """Run the handler named after ``signum``; what it returns says whether and how to stop."""
        name = signal.Signals(signum).name
        handler = getattr(self, f"handle_{name[3:].lower()}", None)
        if handler is None:
            log.warning("received %s, which the gateway does not handle", name)
            return None
        result: Stop | None = handler()
        return result

    def handle_term(self) -> Stop:
        """SIGTERM, what systemd and most supervisors send: finish what is in flight, then exit."""
        log.info("received SIGTERM: shutting down gracefully")
        return Stop.GRACEFUL

    def handle_int(self) -> Stop:
        """SIGINT (Ctrl-C in a terminal): as SIGTERM."""
        log.info("received SIGINT: shutting down gracefully")
        return Stop.GRACEFUL

    def handle_quit(self) -> Stop:
        """SIGQUIT: exit without waiting for requests in flight."""
        log.info("received SIGQUIT: stopping now")
        return Stop.IMMEDIATE

    def handle_hup(self) -> None:
        """SIGHUP (and --reload): new workers import the app afresh and replace the running ones."""
        log.info("received SIGHUP: reloading the workers")
        if self.pool is not None:
            notify("RELOADING=1")
            self.pool.reload()
            notify("READY=1")

    def handle_usr1(self) -> None:
        """SIGUSR1, sent by logrotate: reopen the access log under its path."""
        log.info("received SIGUSR1: reopening log files")
        if self.access_log is not None:
            self.access_log.reopen()

    def handle_ttin(self) -> None:
        """SIGTTIN: one more worker."""
        if self.pool is not None:
            self.pool.add_worker()

    def handle_ttou(self) -> None:
        """SIGTTOU: one fewer worker (never below one)."""
        if self.pool is not None:
            self.pool.remove_worker()

    async def _watch_sources(self) -> None:
        """--reload: a changed Python file under the app's directory reloads the workers, as SIGHUP does."""
        import watchfiles  # noqa: PLC0415 - a development feature; production never pays for the import

        root = os.getcwd()
        roots = [root, *(os.path.abspath(directory) for directory in self.config.pythonpath)]
        virtualenvs = virtualenvs_under(roots)
        log.info(
            "--reload: watching Python files under %s%s",
            ", ".join(roots),
            f" but not in the virtualenvs {', '.join(virtualenvs)}" if virtualenvs else "",
        )
        python_files = watchfiles.PythonFilter(ignore_paths=virtualenvs)
        async for changes in watchfiles.awatch(*roots, watch_filter=python_files, debounce=200):
            log.info("--reload: %s changed", ", ".join(sorted({os.path.relpath(path, root) for _, path in changes})))
            self._record_signal(signal.SIGHUP)

    async def _shutdown(self, pool: Supervisor, *, immediate: bool) -> None:
        """Stop accepting, let in-flight requests finish, drain responses, then stop the workers."""
        loop = asyncio.get_running_loop()
        timeout = 0.0 if immediate else self.config.graceful_timeout
        deadline = loop.time() + timeout
        self._stopping = True
        for listener in self.listeners:
            pause(listener)
            listener.sock.close()  # refuse new connections now, so the web server tries its next upstream
        await pool.stop(timeout)
        while any(c.output is not None and c.output.pending for ctx in self.contexts for c in ctx.connections):
            if loop.time() >= deadline:
                break
            await asyncio.sleep(0.05)
        for context in self.contexts:
            for connection in list(context.connections):
                if connection.transport is not None:
                    if immediate:
                        connection.transport.abort()
                    else:
                        connection.transport.close()

    def _close_listeners(self) -> None:
        for listener in self.listeners:
            listener.close()
