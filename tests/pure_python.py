"""pytest plugin (``-p tests.pure_python``): import ``protocols/`` from its sources even where it was compiled.

``make test`` runs the whole suite on the compiled codecs (what an installed gateway runs), then the codec tests
again through this plugin, so the interpreted fallback (``GATEWAY_PURE_PYTHON=1``) is tested as well. A path hook
placed ahead of the default one gives the package's directories a finder that knows only ``.py`` and ``.pyc``.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from importlib.abc import PathEntryFinder
from importlib.machinery import BYTECODE_SUFFIXES, SOURCE_SUFFIXES, FileFinder, SourceFileLoader, SourcelessFileLoader
from pathlib import Path

PROTOCOLS = Path(__file__).resolve().parent.parent / "protocols"

_sources_only: Callable[[str], PathEntryFinder] = FileFinder.path_hook(
    (SourceFileLoader, SOURCE_SUFFIXES), (SourcelessFileLoader, BYTECODE_SUFFIXES)
)


def _hook(path: str) -> PathEntryFinder:
    resolved = Path(path).resolve()
    if resolved != PROTOCOLS and PROTOCOLS not in resolved.parents:
        raise ImportError  # not ours: the next hook (the default one) takes it
    return _sources_only(path)


if any(name == "gateway.protocols" or name.startswith("gateway.protocols.") for name in sys.modules):
    raise RuntimeError("tests.pure_python must be loaded before anything imports protocols (pass it with -p)")
sys.path_hooks.insert(0, _hook)
sys.path_importer_cache.clear()
