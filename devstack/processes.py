"""The child processes devstack starts: finding their binaries, stopping and reaping them, and the gateway itself.

Every child is reaped (an unreaped Popen is a ResourceWarning, which the tests turn into an error), and whatever
a child forked and left behind is killed with it, so a stray worker never holds a port into the next run.

The gateway reports readiness the way it does to systemd: ``READY=1`` on the datagram socket named by
``$NOTIFY_SOCKET`` (sd_notify(3)). ``GatewayProcess`` binds that socket itself, so it waits for the event rather
than for a line in a log that could be reworded.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Self

#: sun_path holds 108 bytes with the terminating NUL; a longer scratch path falls back to an abstract address.
_SUN_PATH_MAX = 107


class StackError(RuntimeError):
    """A component would not start or stop as asked; the message names it and shows or points at its log."""


def find_binary(name: str, package: str) -> str:
    """The path of ``name`` (PATH, then /usr/bin and /usr/sbin, which a non-root PATH may lack), or a StackError
    with the command that installs it: the tests fail on a missing server, they never skip."""
    for candidate in (shutil.which(name), f"/usr/bin/{name}", f"/usr/sbin/{name}"):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    raise StackError(f"{name} is not installed: run `apt-get install -y {package}` (or `make test-deps`)")


def log_tail(path: Path, lines: int = 15) -> str:
    """The end of a log, for an error message: the reason a server refused to start is nearly always there."""
    if not path.exists():
        return f"(no log at {path})"
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def stat_fields(pid: int) -> list[bytes] | None:
    """The fields of /proc/PID/stat after the command name (state first), or None once the process is gone."""
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
        fields = stat_fields(int(entry))
        if fields is not None and fields[0] != b"Z":
            children.setdefault(int(fields[1]), []).append(int(entry))
    if stat_fields(root) is None:
        return []
    found, queue = [], [root]
    while queue:
        pid = queue.pop()
        found.append(pid)
        queue.extend(children.get(pid, ()))
    return found


def stop_process(
    process: subprocess.Popen[bytes] | None, sig: int = signal.SIGTERM, timeout: float = 15.0
) -> int | None:
    """Signal ``process`` the way it wants to be stopped, wait (SIGKILL after ``timeout``), reap it, then SIGKILL
    what is left of the tree it had (a prefork child that missed its master's exit would hold the port for the next
    run). Returns its exit status, or None when there was no process."""
    if process is None:
        return None
    if process.poll() is not None:
        return process.returncode
    descendants = [pid for pid in tree_pids(process.pid) if pid != process.pid]
    with contextlib.suppress(ProcessLookupError):
        process.send_signal(sig)
    try:
        status = process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        status = process.wait()
    for pid in descendants:
        if stat_fields(pid) is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    return status


def _thread_states(pid: int) -> list[str]:
    """The scheduler state letter of each thread of ``pid`` ("T" or "t" when stopped), from /proc."""
    states = []
    for stat in Path(f"/proc/{pid}/task").glob("*/stat"):
        with contextlib.suppress(FileNotFoundError, IndexError):  # a thread that just exited
            states.append(stat.read_text().rsplit(")", 1)[1].split()[0])
    return states


class ListeningProcess:
    """A server child that listens on 127.0.0.1:``port``, with its files under ``scratch``.

    ``start`` returns once the port accepts connections (or raises StackError with the log's tail: a server that
    could not bind says so there); ``stop`` uses ``stop_signal``; ``pause`` and ``resume`` freeze it with
    SIGSTOP/SIGCONT, for tests of a server that accepts but never answers.
    """

    what = "process"
    stop_signal: int = signal.SIGTERM
    start_timeout = 10.0

    def __init__(self, scratch: Path, port: int) -> None:
        self.scratch = scratch
        self.port = port
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def log(self) -> Path:
        """Where the child's stdout and stderr go (appended to across restarts)."""
        return self.scratch / f"{self.what}-{self.port}.log"

    def command(self) -> list[str]:
        raise NotImplementedError

    def prepare(self) -> None:
        """Write what the command needs (a config file) before it runs; nothing by default."""

    def start(self) -> Self:
        from devstack.ports import wait_for_port  # noqa: PLC0415 - ports imports StackError from this module

        self.scratch.mkdir(parents=True, exist_ok=True)
        self.prepare()
        command = self.command()
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=log, stdin=subprocess.DEVNULL)
        try:
            wait_for_port(self.port, self.process, self.what, self.log, self.start_timeout)
        except StackError:
            self.kill()
            raise
        return self

    def stop(self) -> int | None:
        """``stop_signal`` (after SIGCONT, in case it is paused), wait and reap."""
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGCONT)
        return stop_process(process, self.stop_signal, 5.0)

    def kill(self) -> None:
        """SIGKILL: the server vanishes without closing anything gracefully."""
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            process.kill()
        if process is not None:
            process.wait()

    def pause(self) -> None:
        """SIGSTOP: the kernel still accepts connections and data, but nothing is ever answered.

        Returns once every thread has stopped: each stops only when it next runs, so on a busy machine a worker
        thread could otherwise still answer a request sent right after the signal.
        """
        assert self.process is not None
        self.process.send_signal(signal.SIGSTOP)
        self._wait_for_threads(stopped=True)

    def resume(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGCONT)
        self._wait_for_threads(stopped=False)

    def _wait_for_threads(self, *, stopped: bool) -> None:
        assert self.process is not None
        deadline = time.monotonic() + self.start_timeout
        while True:
            states = _thread_states(self.process.pid)
            if not states or all(state in "tT" for state in states) == stopped:
                return
            if time.monotonic() > deadline:
                raise StackError(f"{self.what} (pid {self.process.pid}) did not {'stop' if stopped else 'continue'}")
            time.sleep(0.001)

    def restart(self) -> None:
        """Stop (if still running) and start again on the same port."""
        self.stop()
        self.start()


#: Signals a process using devstack acts on in its main thread (Ctrl-C, a supervisor's stop).
_MAIN_THREAD_SIGNALS = {signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT}


class NotifySocket:
    """The receiving end of sd_notify(3): a unix datagram socket, drained by a thread into ``messages``.

    Draining is not optional: the kernel queues only a few datagrams per socket (net.unix.max_dgram_qlen) and the
    gateway's notify blocks when the queue is full, so a reader that fell behind would stall the gateway's master.
    """

    def __init__(self, path: Path) -> None:
        self.path: Path | None = path
        encoded = os.fsencode(path)
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        if len(encoded) <= _SUN_PATH_MAX:
            path.unlink(missing_ok=True)  # left by an earlier start in the same scratch directory
            self._sock.bind(str(path))
            self.address = str(path)
        else:
            self.path = None
            self._sock.bind(f"\0devstack-notify-{os.getpid()}-{id(self)}")
            self.address = "@" + self._sock.getsockname()[1:].decode()
        self._sock.settimeout(0.1)  # how often the drain thread checks that it should stop
        self.messages: list[frozenset[str]] = []
        self._changed = threading.Condition()
        self._closing = threading.Event()
        self._thread = threading.Thread(target=self._drain, name="devstack-notify", daemon=True)
        # The kernel may deliver a process's signal to any thread that does not block it. Delivered to this one, a
        # Ctrl-C would leave the main thread asleep in a blocking wait (only the thread that takes a signal sees
        # EINTR), and `make run` would not stop. The thread is started with them blocked (it inherits the mask).
        unblocked = signal.pthread_sigmask(signal.SIG_BLOCK, _MAIN_THREAD_SIGNALS)
        try:
            self._thread.start()
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, unblocked)

    def _drain(self) -> None:
        while not self._closing.is_set():
            try:
                datagram = self._sock.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            with self._changed:
                self.messages.append(frozenset(datagram.decode(errors="replace").splitlines()))
                self._changed.notify_all()

    def wait_for(self, state: str, after: int, deadline: float, alive: subprocess.Popen[bytes]) -> int | None:
        """The index of the first message from ``after`` on that holds ``state`` (e.g. "READY=1"), waiting until
        ``deadline`` (time.monotonic) or until ``alive`` exits; None when neither brought it."""
        with self._changed:
            while True:
                for index in range(after, len(self.messages)):
                    if state in self.messages[index]:
                        return index
                after = len(self.messages)
                if alive.poll() is not None or time.monotonic() >= deadline:
                    return None
                # Woken by each message; the timeout only bounds how late an exit is noticed.
                self._changed.wait(min(0.1, max(0.0, deadline - time.monotonic())))

    def close(self) -> None:
        self._closing.set()
        self._thread.join()
        self._sock.close()
        if self.path is not None:
            self.path.unlink(missing_ok=True)


@dataclass
class GatewayProcess:
    """A ``python -m gateway`` subprocess; ``log`` collects its stdout and stderr across restarts.

    ``start`` returns once the gateway has sent READY=1 to its notify socket (``scratch/notify.sock``), and fails
    with the log when it exits first or does not get there within the timeout. ``reload`` sends SIGHUP and waits
    for the RELOADING=1 and READY=1 that follow it.
    """

    scratch: Path
    args: Sequence[str]
    env: dict[str, str] | None = None
    process: subprocess.Popen[bytes] | None = None
    cwd: Path | None = None
    log: Path = field(init=False)
    notify: NotifySocket | None = field(init=False, default=None, repr=False)

    def __post_init__(self) -> None:
        self.log = self.scratch / "gateway.log"

    def command(self) -> list[str]:
        return [sys.executable, "-m", "gateway", *self.args]

    def start(self, timeout: float = 30.0) -> GatewayProcess:
        self.scratch.mkdir(parents=True, exist_ok=True)
        self._close_notify()
        notify = self.notify = NotifySocket(self.scratch / "notify.sock")
        env = {**(os.environ if self.env is None else self.env), "NOTIFY_SOCKET": notify.address}
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                self.command(), stdout=log, stderr=log, env=env, stdin=subprocess.DEVNULL, cwd=self.cwd
            )
        if notify.wait_for("READY=1", 0, time.monotonic() + timeout, self.process) is None:
            self._fail(f"was not ready within {timeout:.0f} s")
        return self

    def reload(self, timeout: float = 30.0) -> None:
        """SIGHUP, then wait until the gateway reports RELOADING=1 and the READY=1 after it."""
        assert self.process is not None
        assert self.notify is not None
        deadline = time.monotonic() + timeout
        seen = len(self.notify.messages)
        self.process.send_signal(signal.SIGHUP)
        reloading = self.notify.wait_for("RELOADING=1", seen, deadline, self.process)
        if reloading is None or self.notify.wait_for("READY=1", reloading + 1, deadline, self.process) is None:
            self._fail(f"did not finish reloading within {timeout:.0f} s")

    def _fail(self, what: str) -> None:
        """Stop what is left of a gateway that did not get where it was asked to, and raise with its log."""
        assert self.process is not None
        exited = self.process.poll()
        status = self.stop(signal.SIGKILL)
        reason = f"exited with status {status}" if exited is not None else what
        raise StackError(f"the gateway {reason}:\n{self.log_text()}")

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def listening_port(self, protocol: str) -> int:
        """The port its first ``protocol`` listener on 127.0.0.1 took, as its log says (``127.0.0.1:0`` lets the
        kernel choose one)."""
        match = re.search(rf"listening for {protocol} on 127\.0\.0\.1:(\d+)", self.log_text())
        if match is None:
            raise StackError(f"no {protocol} listener in the gateway's log:\n{self.log_text()}")
        return int(match.group(1))

    def open_files(self) -> int:
        """The master's open descriptors that are not sockets: a file response or a static file left open shows
        here (the web server may keep more or fewer connections open, so sockets are not counted)."""
        assert self.process is not None
        directory = f"/proc/{self.process.pid}/fd"
        links = []
        for name in os.listdir(directory):
            try:
                links.append(os.readlink(f"{directory}/{name}"))
            except FileNotFoundError:
                continue
        return sum(1 for link in links if not link.startswith("socket:"))

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 40.0) -> int | None:
        try:
            return stop_process(self.process, sig, timeout)
        finally:
            self._close_notify()

    def _close_notify(self) -> None:
        if self.notify is not None:
            self.notify.close()
            self.notify = None
