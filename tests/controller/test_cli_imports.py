"""``cutover``'s local commands (build, sign, inspect, keygen) import no HTTP stack: the agent
client (aiohttp) and what imports it (structlog, via the upload code) load only for a command
that talks to hosts. A fresh interpreter records ``sys.modules`` at exit; a behaviour check of
the import set, not a timing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import PackageFactory

_CLI = """
import atexit, json, os, sys

def _record():
    with open(os.environ["CUTOVER_TEST_MODULES"], "w") as fh:
        json.dump(sorted(sys.modules), fh)

atexit.register(_record)
from cutover.controller.cli import main
sys.exit(main(sys.argv[1:]))
"""

NEVER = ("aiohttp", "structlog", "cutover.controller.client", "cutover.controller.transport")


def _run(tmp_path: Path, *args: str) -> tuple[subprocess.CompletedProcess[str], set[str]]:
    record = tmp_path / "modules.json"
    proc = subprocess.run(
        [sys.executable, "-c", _CLI, *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "CUTOVER_TEST_MODULES": str(record)},
        check=False,
    )
    return proc, set(json.loads(record.read_text()))


def _loaded(modules: set[str]) -> list[str]:
    return sorted(m for m in modules if any(m == n or m.startswith(n + ".") for n in NEVER))


def test_inspect_imports_no_http_client(tmp_path: Path, make_package: PackageFactory) -> None:
    proc, modules = _run(tmp_path, "inspect", "--json", str(make_package("1.0.0")))
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["version"] == "1.0.0"
    assert _loaded(modules) == []


def test_keygen_imports_no_http_client(tmp_path: Path) -> None:
    key = tmp_path / "k" / "release"
    key.parent.mkdir()
    proc, modules = _run(tmp_path, "keygen", str(key))
    assert proc.returncode == 0, proc.stderr
    assert key.exists() and Path(f"{key}.pub").exists()
    assert _loaded(modules) == []
