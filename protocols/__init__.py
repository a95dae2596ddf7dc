"""Wire codecs for the protocols a web server speaks to the gateway.

Everything below this package is sans-IO: bytes in, events out; calls in, bytes out. No asyncio, no sockets, no
clock, so each codec can be tested exhaustively and reused by any I/O layer (the gateway, the test clients, the
benchmark load tool).

The modules are compiled to C extensions by mypyc when the project is installed (``setup.py``); the same sources
run interpreted where they were not. Package ``__init__`` files are never compiled.
"""

from __future__ import annotations

import importlib.machinery
from pathlib import Path

_ROOT = Path(__file__).resolve().parent


def compiled() -> bool:
    """Whether the codecs run compiled (less CPU per request in the event loop; benchmarks/RESULTS.md) or
    interpreted."""
    from gateway.protocols import errors  # noqa: PLC0415 (imported here so this package's import stays free)

    return not (errors.__file__ or "").endswith(".py")


def build_kind() -> str:
    """``compiled`` or ``interpreted``, for start-up lines, ``--version`` and reports."""
    return "compiled" if compiled() else "interpreted"


def stale_sources() -> list[str]:
    """Sources edited after their compiled module was built: the compiled (older) code runs until a rebuild.

    Only a project checkout (``setup.py`` beside the package) is checked: an installed wheel's files carry their
    install times, in whatever order the installer wrote them.
    """
    stale: list[str] = []
    if not (_ROOT.parent / "setup.py").exists():
        return stale
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        for extension in _ROOT.rglob(f"*{suffix}"):
            source = extension.with_name(extension.name.removesuffix(suffix) + ".py")
            if source.exists() and source.stat().st_mtime > extension.stat().st_mtime:
                stale.append(str(source.relative_to(_ROOT.parent)))
    return sorted(stale)
