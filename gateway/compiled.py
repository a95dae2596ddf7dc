"""The modules beyond the codecs that ``setup.py`` compiles with mypyc: the per-request path of both processes.

A hello-world request costs a worker about as much Python as it costs the event loop (decode the REQUEST frame,
build the environ, validate and encode the head, frame the response), and none of it is asyncio: plain classes
and functions, which mypyc turns into native code. On the loop's side every module a request passes through is
compiled: the fronts (FastCGI, uwsgi, HTTP and their base), the request, dispatch, the scheduler, the relay, the
spool and the session hook. What each measured is in benchmarks/RESULTS.md, History. The same sources run
interpreted where they were not compiled (``GATEWAY_PURE_PYTHON=1``, no C compiler), as the codecs do;
``tests.pure_python`` tests that.

Standard library only: ``setup.py`` loads this file by its path before anything is installed. Nothing here imports
the modules it lists, so the master can ask about the build without loading the worker's code.
"""

from __future__ import annotations

import importlib.machinery
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

#: Paths from the project's root, as setup.py hands them to mypyc. The worker's group holds the channel framing,
#: which the loop imports too; the loop's group is never loaded by a worker (tests/test_layout.py).
WORKER_MODULES = (
    "gateway/contract/channel.py",
    "gateway/worker/frames.py",
    "gateway/worker/process.py",
    "gateway/worker/threads.py",
    "gateway/worker/wsgi.py",
)
LOOP_MODULES = (
    "gateway/loop/front.py",
    "gateway/loop/fastcgi_front.py",
    "gateway/loop/uwsgi_front.py",
    "gateway/loop/http_front.py",
    "gateway/loop/dispatch.py",
    "gateway/loop/relay.py",
    "gateway/loop/request.py",
    "gateway/loop/scheduler.py",
    "gateway/loop/session_hook.py",
    "gateway/loop/spool.py",
)
#: Both groups, as the Makefile's HOT_SOURCES lists them.
HOT_MODULES = WORKER_MODULES + LOOP_MODULES
#: The package of each listed module, as its compiled extension is named.
HOT_MODULE_NAMES = tuple(path.removesuffix(".py").replace("/", ".") for path in HOT_MODULES)


def _extensions(source: Path) -> list[Path]:
    stem = source.name.removesuffix(".py")
    return [source.with_name(stem + suffix) for suffix in importlib.machinery.EXTENSION_SUFFIXES]


def compiled(root: Path = ROOT) -> bool:
    """Whether every listed module has its compiled extension beside its source (what a worker will import)."""
    return all(any(path.exists() for path in _extensions(root / module)) for module in HOT_MODULES)


def stale_sources(root: Path = ROOT) -> list[str]:
    """Listed sources edited after their extension was built: the older compiled code runs until a rebuild.

    Only a project checkout (``setup.py`` at the root) is checked, as for the codecs: an installed wheel's files
    carry their install times, in whatever order the installer wrote them.
    """
    if not (root / "setup.py").exists():
        return []
    stale = []
    for module in HOT_MODULES:
        source = root / module
        built = [path.stat().st_mtime for path in _extensions(source) if path.exists()]
        if built and source.exists() and source.stat().st_mtime > max(built):
            stale.append(module)
    return stale
