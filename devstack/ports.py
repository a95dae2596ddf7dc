"""Loopback ports for the servers devstack starts: reserving one that cannot be taken meanwhile, and waiting for a
server to listen on it.

Binding port 0 and closing the socket hands back a port the kernel may give the very next process that asks for an
ephemeral port (any outgoing connection does), before our server binds it. ``free_port`` instead leaves the port in
TIME_WAIT on the server side of a connection it made to itself: for the TIME_WAIT period the kernel hands the port
to no bind(0) and no connect(), while a server that binds it with SO_REUSEADDR (the gateway, nginx, memcached,
nutcracker, and every peer of the benchmarks do) takes it at once.
"""

from __future__ import annotations

import os
import socket
import subprocess
import threading
import time
from pathlib import Path

from devstack.processes import StackError, log_tail, tree_pids

#: Reservations tried before giving up: the kernel repeats a port only once the earlier TIME_WAIT has expired.
_ATTEMPTS = 64

#: /proc/net/tcp's state code for a listening socket.
_LISTEN = "0A"

_given: set[int] = set()
_given_lock = threading.Lock()


def _reserve() -> int:
    """A port in TIME_WAIT on 127.0.0.1 (see the module's docstring)."""
    with socket.socket() as listener:
        # The TIME_WAIT entry inherits SO_REUSEADDR from the listener: only servers that set it may bind the port.
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        port = int(listener.getsockname()[1])
        with socket.create_connection(("127.0.0.1", port)) as client:
            accepted, _ = listener.accept()
            # Whoever closes first is left in TIME_WAIT: it must be the side whose local port is PORT.
            accepted.close()
            client.recv(1)  # the server side's FIN has arrived; closing now completes the handshake
    return port


def free_port() -> int:
    """A loopback TCP port for a server that binds with SO_REUSEADDR; never the same one twice in a process."""
    for _ in range(_ATTEMPTS):
        port = _reserve()
        with _given_lock:
            if port not in _given:
                _given.add(port)
                return port
    raise StackError(f"no loopback port that this process was not given already in {_ATTEMPTS} reservations")


def _listening_inodes(port: int) -> set[str]:
    """The socket inodes listening on TCP ``port`` (any address, IPv4 or IPv6), from /proc/net."""
    inodes = set()
    hex_port = f"{port:04X}"
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = open(table)  # noqa: SIM115 - closed below; iterated lazily on purpose
        except OSError:  # no IPv6 in this kernel
            continue
        # The kernel lists the listening sockets first, then every other one. Stop at the first that is not
        # listening: reading the whole table walks the connection hash once per page of output, which takes
        # seconds while a load test leaves thousands of connections in TIME_WAIT.
        with lines:
            next(lines, None)  # the header
            for line in lines:
                fields = line.split()
                if fields[3] != _LISTEN:
                    break
                if fields[1].rsplit(":", 1)[1] == hex_port:
                    inodes.add(fields[9])
    return inodes


def _holds_any(pids: list[int], inodes: set[str]) -> bool:
    wanted = {f"socket:[{inode}]" for inode in inodes}
    for pid in pids:
        try:
            descriptors = os.scandir(f"/proc/{pid}/fd")
        except OSError:  # gone meanwhile
            continue
        with descriptors:
            for descriptor in descriptors:
                try:
                    if os.readlink(descriptor.path) in wanted:
                        return True
                except OSError:
                    continue
    return False


def wait_for_port(port: int, process: subprocess.Popen[bytes], what: str, log: Path, timeout: float) -> None:
    """Return once ``process`` (or a process it forked) listens on TCP ``port``; StackError with the tail of ``log``
    when it exits first (a server that cannot bind its port exits and says why in its log) or after ``timeout``.

    The listener must be the process's own: a port that merely accepts connections might be someone else's, and a
    server that failed to bind would then pass for ready.
    """
    deadline = time.monotonic() + timeout
    while True:
        if process.poll() is not None:
            raise StackError(f"{what} exited with status {process.returncode}; {log}:\n{log_tail(log)}")
        inodes = _listening_inodes(port)
        if inodes and _holds_any(tree_pids(process.pid), inodes):
            return
        if time.monotonic() >= deadline:
            holder = "another process listens there" if inodes else "nothing listens there"
            raise StackError(
                f"{what} did not listen on 127.0.0.1:{port} within {timeout:.0f} s ({holder}); {log}:\n{log_tail(log)}"
            )
        time.sleep(0.02)
