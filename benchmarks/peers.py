"""The peers' virtualenv: uWSGI, gunicorn, flup, fcgisgi, waitress (and matplotlib for the charts) live in
``benchmarks/.peers-venv``, created with our python and filled from PyPI on demand, so none of them is a dependency
of our project. A peer that fails to install costs only its own rows, which say why."""

from __future__ import annotations

import fcntl
import json
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks.core import BENCH_DIR, ROOT, log

PEERS_VENV = BENCH_DIR / ".peers-venv"
CHARTS_PACKAGE = "matplotlib"
_INSTALL_TIMEOUT = 900.0


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


def smoke_packages() -> list[str]:
    """What the smoke tests' ``--quick`` runs install: the peers of their servers, the curves' app-level session
    client and matplotlib for the charts."""
    # Imported here: both modules import this one.
    from benchmarks.curves import APP_SESSION_PACKAGE, DEFAULT_SERVERS  # noqa: PLC0415
    from benchmarks.harness import QUICK_SERVERS, select_servers  # noqa: PLC0415

    specs = select_servers([*QUICK_SERVERS, *DEFAULT_SERVERS])
    from benchmarks.realapp import APP_PACKAGE  # noqa: PLC0415

    return [*sorted({spec.package for spec in specs if spec.package}), APP_SESSION_PACKAGE, APP_PACKAGE, CHARTS_PACKAGE]


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m benchmarks.peers [PACKAGE...]``: fill the peers' virtualenv ahead of a run (without packages:
    ``smoke_packages``, which ``make test`` installs so that no test waits for PyPI within its timeout)."""
    packages = list(sys.argv[1:] if argv is None else argv) or smoke_packages()
    peers = ensure_peers(packages)
    for package, reason in sorted(peers.failures.items()):
        log(f"{package}: {reason}")
    log("peers: " + ", ".join(f"{name} {version}" for name, version in sorted(peers.versions.items())))
    return 1 if peers.failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
