"""Private memcached and nutcracker (twemproxy) processes for the session store tests and the benchmarks.

Each runs on a loopback port with its files under its own scratch directory; the system services are never
touched. A missing binary raises StackError (a RuntimeError) with the install command: the tests then fail, they
never skip, because a suite that passes without the real servers proves nothing about them.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from devstack.ports import free_port
from devstack.processes import ListeningProcess, find_binary


class Memcached(ListeningProcess):
    """``memcached -l 127.0.0.1 -p PORT -U 0 -m 64`` (no UDP, 64 MB)."""

    what = "memcached"

    def __init__(self, scratch: Path, port: int, extra_args: Sequence[str] = ()) -> None:
        super().__init__(scratch, port)
        self.extra_args = tuple(extra_args)

    @property
    def url(self) -> str:
        return f"memcached://127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        args = [find_binary("memcached", "memcached"), "-l", "127.0.0.1", "-p", str(self.port), "-U", "0", "-m", "64"]
        if os.geteuid() == 0:
            args += ["-u", "root"]  # memcached refuses to run as root unless told which user to be
        return [*args, *self.extra_args]


class Nutcracker(ListeningProcess):
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

    @property
    def conf(self) -> Path:
        return self.scratch / f"nutcracker-{self.port}.yml"

    def prepare(self) -> None:
        self.conf.write_text(self.config())

    def command(self) -> list[str]:
        return [
            find_binary("nutcracker", "nutcracker"),
            "-c",
            str(self.conf),
            "-o",
            str(self.log),
            "-p",
            str(self.scratch / f"nutcracker-{self.port}.pid"),
            "-s",
            str(self.stats_port),
            "-a",
            "127.0.0.1",
        ]
