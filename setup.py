"""Build script: the protocol codecs and the per-request path of the loop and the workers are compiled with mypyc;
everything else installs as plain Python.

The codecs (``protocols/``) parse every request the event loop receives; compiled, the loop spends less CPU per
request (measured A/B in benchmarks/RESULTS.md). The per-request modules of a worker and of the loop
(``gateway/compiled.py`` lists them and says why) are compiled as two more groups, so a codec change does not
recompile them. mypyc compiles the same type-checked sources to C
extensions (as black and mypy ship), so there is one codebase, not a Python one and a C one. Where they cannot be
compiled (``GATEWAY_PURE_PYTHON=1``, no C compiler or Python headers, mypyc refusing the sources) the same sources
install uncompiled, with a warning here and another each time the gateway starts.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
import sysconfig
from pathlib import Path
from types import ModuleType
from typing import cast

from setuptools import Extension, setup

ROOT = Path(__file__).resolve().parent


def compiled_modules() -> list[str]:
    """The codec sources mypyc compiles: every module of ``protocols/`` but the package ``__init__`` files.

    They are named through ``gateway/protocols`` (a link to ``protocols/``), the package they install as, so mypyc
    gives each module its installed name (``gateway.protocols.fastcgi.server``).
    """
    package = ROOT / "gateway" / "protocols"
    return sorted(
        str(package.relative_to(ROOT) / path.relative_to(package))
        for path in package.rglob("*.py")
        if path.name != "__init__.py"
    )


def _load_compiled_list() -> ModuleType:
    """gateway/compiled.py by its path: the package itself is not importable before it is installed."""
    spec = importlib.util.spec_from_file_location("gateway_compiled_list", ROOT / "gateway" / "compiled.py")
    if spec is None or spec.loader is None:
        raise SystemExit("setup.py: cannot load gateway/compiled.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def hot_groups() -> list[tuple[list[str], str]]:
    """The per-request modules compiled beside the codecs (gateway/compiled.py), as (sources, group name)."""
    listed = _load_compiled_list()
    return [(list(listed.WORKER_MODULES), "gateway.hotpath"), (list(listed.LOOP_MODULES), "gateway.hotloop")]


def hot_modules() -> list[str]:
    return [module for modules, _ in hot_groups() for module in modules]


def missing_build_tools() -> str | None:
    """What compiling needs and this machine lacks, or None."""
    compiler = (os.environ.get("CC") or "cc").split()[0]
    if shutil.which(compiler) is None:
        return f"no C compiler ({compiler})"
    headers = Path(sysconfig.get_paths()["include"]) / "Python.h"
    if not headers.exists():
        return f"no Python headers ({headers})"
    return None


def extensions() -> list[Extension]:
    if os.environ.get("GATEWAY_PURE_PYTHON") == "1":
        return []
    missing = missing_build_tools()
    if missing is not None:
        return _interpreted(f"{missing}; apt-get install gcc python3-dev")
    try:
        from mypyc.build import mypycify  # noqa: PLC0415 (a build requirement, needed only when compiling)

        os.chdir(ROOT)  # mypyc names modules from paths relative to the working directory
        groups: list[tuple[list[str], str | None]] = [(compiled_modules(), "gateway.protocols"), *hot_groups()]
        sources = [source for group, _ in groups for source in group]
        # distutils Extension objects, which setuptools accepts as its own
        return cast("list[Extension]", mypycify(sources, opt_level="3", separate=groups))
    except (Exception, SystemExit) as err:  # mypyc missing, or refusing the sources (it exits on type errors)
        return _interpreted(f"mypyc failed: {err!r}")


def _interpreted(reason: str) -> list[Extension]:
    print(
        "WARNING: the protocol codecs and the per-request path of the loop and the workers are installed "
        f"interpreted, not compiled: {reason}",
        file=sys.stderr,
    )
    return []


if __name__ == "__main__":  # as setuptools and `python setup.py` run it; the tests import it
    setup(ext_modules=extensions())
