"""``cutover`` whose stdout reader went away (agent/_util/stdout.py): 120 and no traceback, or
the error's own code for a ``--json`` error line; never "error: Broken pipe". Real processes."""

from __future__ import annotations

import subprocess
from pathlib import Path

from tests.conftest import BIN, PackageFactory, run_to_a_closed_pipe


def _cutover(*args: str) -> subprocess.CompletedProcess[bytes]:
    return run_to_a_closed_pipe([str(BIN / "cutover"), *args], unbuffered=True)


def test_output_to_a_closed_pipe_exits_120_quietly(make_package: PackageFactory) -> None:
    package = make_package("1.0.0")
    before = package.read_bytes()
    proc = _cutover("inspect", "--json", str(package))
    assert proc.returncode == 120, proc.stderr
    assert proc.stderr == b"", proc.stderr  # no "error: Broken pipe", no traceback
    assert package.read_bytes() == before


def test_a_json_error_to_a_closed_pipe_keeps_its_code(tmp_path: Path) -> None:
    proc = _cutover("inspect", "--json", str(tmp_path / "missing.cutover"))
    assert proc.returncode == 5, proc.stderr  # not found
    assert b"Traceback" not in proc.stderr and b"Broken pipe" not in proc.stderr, proc.stderr
    assert list(tmp_path.iterdir()) == []
