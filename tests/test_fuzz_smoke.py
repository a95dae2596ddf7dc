"""A seconds-long run of each fuzzer (``make fuzz`` runs them for minutes): they start, find nothing, and stop.

Each runs in a subprocess, as ``make fuzz`` runs it: atheris takes over the process it fuzzes in.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}


@pytest.mark.parametrize("target", ["fastcgi", "uwsgi", "channel"])
def test_codec_fuzzer_smoke(target: str, tmp_path: Path) -> None:
    command = [sys.executable, "-m", "fuzz.codecs", target, "-runs=1000", f"-artifact_prefix={tmp_path}/"]
    done = subprocess.run(command, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Done 1000 runs" in done.stderr
    assert not list(tmp_path.iterdir()), "the fuzzer left a crash input"


def test_gateway_fuzzer_smoke() -> None:
    command = [sys.executable, "-m", "fuzz.gateway", "--requests", "200", "--seconds", "20"]
    done = subprocess.run(command, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "wrong 0" in done.stdout and "tracebacks in its log 0" in done.stdout
