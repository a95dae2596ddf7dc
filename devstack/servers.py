"""Private memcached and nutcracker (twemproxy) processes for the session store tests.

Each runs on a loopback port with its files under its own scratch directory; the system services are never
touched. A missing binary raises RuntimeError with the install command: the tests then fail, they never skip,
because a suite that passes without the real servers proves nothing about them.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

from devstack.stack import free_port

_START_TIMEOUT = 10.0


def _binary(name: str, package: str) -> str:
    for candidate in (shutil.which(name), f"/usr/bin/{name}", f"/usr/sbin/{name}"):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    raise RuntimeError(f"{name} is not installed: run `apt-get install -y {package}` (or `make test-deps`)")


def _wait_for_port(port: int, process: subprocess.Popen[bytes], what: str, log: Path) -> None:
    deadline = time.monotonic() + _START_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited with status {process.returncode}; see {log}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.02)
    raise RuntimeError(f"{what} did not listen on 127.0.0.1:{port} within {_START_TIMEOUT:.0f} s; see {log}")


def _thread_states(pid: int) -> list[str]:
    """The scheduler state letter of each thread of ``pid`` ("T" or "t" when stopped), from /proc."""
    states = []
    for stat in Path(f"/proc/{pid}/task").glob("*/stat"):
        with contextlib.suppress(FileNotFoundError, IndexError):  # a thread that just exited
            states.append(stat.read_text().rsplit(")", 1)[1].split()[0])
    return states


class _Process:
    """A child process we start, signal and always reap (an unreaped Popen is a ResourceWarning, i.e. an error)."""

    what = "process"

    def __init__(self, scratch: Path, port: int) -> None:
        self.scratch = scratch
        self.port = port
        self.process: subprocess.Popen[bytes] | None = None
        self.log = scratch / f"{self.what}-{port}.log"

    def command(self) -> list[str]:
        raise NotImplementedError

    def start(self) -> _Process:
        self.scratch.mkdir(parents=True, exist_ok=True)
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(self.command(), stdout=log, stderr=log, stdin=subprocess.DEVNULL)
        _wait_for_port(self.port, self.process, self.what, self.log)
        return self

    def stop(self) -> None:
        """SIGTERM (after SIGCONT, in case it is paused) and reap."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGCONT)
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def kill(self) -> None:
        """SIGKILL: the server vanishes without closing anything gracefully."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self.process = None

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
        deadline = time.monotonic() + _START_TIMEOUT
        while True:
            states = _thread_states(self.process.pid)
            if not states or all(state in "tT" for state in states) == stopped:
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.what} (pid {self.process.pid}) did not {'stop' if stopped else 'continue'}")
            time.sleep(0.001)

    def restart(self) -> None:
        """Stop (if still running) and start again on the same port, empty."""
        self.stop()
        self.start()


class Memcached(_Process):
    """``memcached -l 127.0.0.1 -p PORT -U 0 -m 64`` (no UDP, 64 MB)."""

    what = "memcached"

    def __init__(self, scratch: Path, port: int, extra_args: Sequence[str] = ()) -> None:
        super().__init__(scratch, port)
        self.extra_args = tuple(extra_args)

    def command(self) -> list[str]:
        args = [_binary("memcached", "memcached"), "-l", "127.0.0.1", "-p", str(self.port), "-U", "0", "-m", "64"]
        if os.geteuid() == 0:
            args += ["-u", "root"]  # memcached refuses to run as root unless told which user to be
        return [*args, *self.extra_args]

    def start(self) -> Memcached:
        super().start()
        return self


class Nutcracker(_Process):
    """twemproxy on PORT in front of memcached servers on ``servers`` (loopback ports), ketama-distributed."""

    what = "nutcracker"

    def __init__(self, scratch: Path, port: int, servers: list[int]) -> None:
        super().__init__(scratch, port)
        self.servers = list(servers)
        self.stats_port = free_port()  # its stats listener defaults to 22222; two instances would collide

    def config(self) -> str:
        lines = [
            "sessions:",
            f"  listen: 127.0.0.1:{self.port}",
            "  hash: fnv1a_64",
            "  distribution: ketama",
            "  auto_eject_hosts: false",
            "  server_retry_timeout: 2000",
            "  servers:",
            *(f"   - 127.0.0.1:{server}:1" for server in self.servers),
        ]
        return "\n".join(lines) + "\n"

    def command(self) -> list[str]:
        conf = self.scratch / f"nutcracker-{self.port}.yml"
        conf.write_text(self.config())
        return [
            _binary("nutcracker", "nutcracker"),
            "-c",
            str(conf),
            "-o",
            str(self.log),
            "-p",
            str(self.scratch / f"nutcracker-{self.port}.pid"),
            "-s",
            str(self.stats_port),
            "-a",
            "127.0.0.1",
        ]

    def start(self) -> Nutcracker:
        super().start()
        return self
