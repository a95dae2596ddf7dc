"""systemd integration without a dependency: socket activation (LISTEN_FDS) and sd_notify.

Both protocols are a few lines of environment and one datagram (sd_listen_fds(3), sd_notify(3)); the optional
python-systemd binding would add a C build for nothing.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket

log = logging.getLogger("gateway.systemd")

#: The first inherited descriptor, per sd_listen_fds(3).
LISTEN_FDS_START = 3


def inherited_sockets() -> list[tuple[str, socket.socket]]:
    """Listening sockets passed by systemd, with their FileDescriptorName (empty when unnamed).

    The variables are removed from the environment so workers (and their children) do not think the sockets are
    theirs.
    """
    if os.environ.get("LISTEN_PID") != str(os.getpid()):
        return []
    count = int(os.environ.get("LISTEN_FDS", "0") or 0)
    names = os.environ.get("LISTEN_FDNAMES", "").split(":")
    for variable in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
        os.environ.pop(variable, None)
    sockets = []
    for index in range(count):
        fd = LISTEN_FDS_START + index
        sock = socket.socket(fileno=fd)
        os.set_inheritable(fd, False)
        name = names[index] if index < len(names) else ""
        sockets.append((name, sock))
    return sockets


def notify(state: str) -> None:
    """Tell the service manager ``state`` (READY=1, STOPPING=1, RELOADING=1, STATUS=...); a no-op elsewhere."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return
    if address.startswith("@"):
        address = "\0" + address[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock, contextlib.suppress(OSError):
        sock.connect(address)
        sock.sendall(state.encode())
