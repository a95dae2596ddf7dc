"""pytest plugin (``-p tests.pure_python``): import ``protocols/`` and the per-request modules
(``gateway/compiled.py``) from their sources even where they were compiled.

``make test`` runs the whole suite on the compiled build (what an installed gateway runs), then the codec, worker
and loop unit tests again through this plugin, so the interpreted fallback (``GATEWAY_PURE_PYTHON=1``) is tested as
well. A path hook placed ahead of the default one gives those modules' directories a finder that knows only
``.py`` and ``.pyc``.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from importlib.abc import PathEntryFinder
from importlib.machinery import BYTECODE_SUFFIXES, SOURCE_SUFFIXES, FileFinder, SourceFileLoader, SourcelessFileLoader
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTOCOLS = ROOT / "protocols"
#: The directories of the compiled hot-path modules (gateway/compiled.py, read without importing gateway).
HOT_DIRECTORIES = {ROOT / "gateway" / "contract", ROOT / "gateway" / "worker", ROOT / "gateway" / "loop"}

_sources_only: Callable[[str], PathEntryFinder] = FileFinder.path_hook(
    (SourceFileLoader, SOURCE_SUFFIXES), (SourcelessFileLoader, BYTECODE_SUFFIXES)
)


def _hook(path: str) -> PathEntryFinder:
    resolved = Path(path).resolve()
    if resolved != PROTOCOLS and PROTOCOLS not in resolved.parents and resolved not in HOT_DIRECTORIES:
        raise ImportError  # not ours: the next hook (the default one) takes it
    return _sources_only(path)


_COVERED = ("gateway.protocols", "gateway.contract", "gateway.worker", "gateway.loop")
if any(name == covered or name.startswith(covered + ".") for name in sys.modules for covered in _COVERED):
    raise RuntimeError("tests.pure_python must be loaded before anything imports protocols (pass it with -p)")
sys.path_hooks.insert(0, _hook)
sys.path_importer_cache.clear()
