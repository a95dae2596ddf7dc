"""Start a gateway the way systemd's socket activation does, for the tests that check it does what systemd expects."""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

#: What systemd does between fork and exec: the socket at fd 3 and LISTEN_PID naming the process that then execs
#: the gateway (so the pid is the gateway's own, as sd_listen_fds(3) requires).
_LAUNCHER = (
    "import os, sys; os.dup2(int(sys.argv[1]), 3); os.environ['LISTEN_PID'] = str(os.getpid()); "
    "os.execv(sys.executable, [sys.executable, '-m', 'gateway', *sys.argv[2:]])"
)


def start_activated(
    listener: socket.socket, name: str, args: list[str], env: Mapping[str, str], log_path: Path
) -> subprocess.Popen[bytes]:
    """A gateway serving ``listener`` (named ``name``, as FileDescriptorName does), then closed on our side."""
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-c", _LAUNCHER, str(listener.fileno()), *args],
            pass_fds=(listener.fileno(),),
            env={**env, "LISTEN_FDS": "1", "LISTEN_FDNAMES": name},
            stdout=log,
            stderr=log,
        )
    listener.close()
    return process
