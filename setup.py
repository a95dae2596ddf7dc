"""Build script: the protocol codecs are compiled with mypyc; everything else installs as plain Python.

The codecs (``protocols/``) parse every request the event loop receives, and interpreted they are about a fifth of
its CPU per request. mypyc compiles the same type-checked sources to C extensions (as black and mypy ship), so
there is one codebase, not a Python one and a C one. ``GATEWAY_PURE_PYTHON=1`` installs the sources uncompiled, for
a machine without a C compiler or Python headers; the gateway says at startup which it runs.
"""

from __future__ import annotations

import os
from pathlib import Path

from setuptools import Extension, setup

ROOT = Path(__file__).resolve().parent


def compiled_modules() -> list[str]:
    """The codec sources mypyc compiles: every module of ``protocols/`` but the package ``__init__`` files."""
    return sorted(
        str(path.relative_to(ROOT)) for path in (ROOT / "protocols").rglob("*.py") if path.name != "__init__.py"
    )


def extensions() -> list[Extension]:
    if os.environ.get("GATEWAY_PURE_PYTHON") == "1":
        return []
    from mypyc.build import mypycify  # noqa: PLC0415 (a build requirement, needed only when compiling)

    os.chdir(ROOT)  # mypyc names modules from paths relative to the working directory
    return mypycify(compiled_modules(), opt_level="3", group_name="protocols")


setup(ext_modules=extensions())
