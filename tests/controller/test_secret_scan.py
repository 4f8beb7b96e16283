"""``cutover build`` refuses release notes or metadata that hold a secret, naming the field."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.conftest import BIN

# Test fixtures shaped like real secrets (AWS's documented example key id; a throwaway URL).
PLANTED = [
    pytest.param(
        '[notes]\nchanges = ["rotate", "use key AKIAIOSFODNN7EXAMPLE"]\n',
        "release_notes.changes[1] (AWS Access Key)",
        id="aws-key-in-changes",
    ),
    pytest.param(
        '[rollback]\nconfig = "psql postgres://admin:hunter2pass@db.example.net/app"\n',
        "rollback.config (Basic Auth Credentials)",
        id="password-in-url",
    ),
    pytest.param(
        '[notes]\nknown_issues = ["""-----BEGIN RSA PRIVATE KEY-----\nMIIE\n"""]\n',
        "release_notes.known_issues[0] (Private Key)",
        id="private-key",
    ),
]


def _build(tmp_path: Path, toml: str) -> tuple[subprocess.CompletedProcess[str], Path]:
    src = tmp_path / "src"
    src.mkdir()
    (src / "cutover.toml").write_text('app = "ame"\n' + toml)
    (src / "index.php").write_text("<?php\n")
    out = tmp_path / "ame-1.0.0.cutover"
    proc = subprocess.run(
        [str(BIN / "cutover"), "build", "--json", str(src), "--version", "1.0.0", "-o", str(out)],
        capture_output=True,
        text=True,
        check=False,
    )
    return proc, out


@pytest.mark.parametrize(("toml", "where"), PLANTED)
def test_a_secret_planted_in_notes_is_refused_at_build(
    tmp_path: Path, toml: str, where: str
) -> None:
    proc, out = _build(tmp_path, toml)
    body = json.loads(proc.stdout)
    assert proc.returncode == 3 and body["error"] == "secret_in_notes", proc.stdout
    assert where in body["message"]
    assert "hunter2pass" not in body["message"] and "AKIAIOSFODNN7EXAMPLE" not in body["message"]
    assert not out.exists() and list(tmp_path.iterdir()) == [tmp_path / "src"]


def test_ordinary_notes_with_urls_and_hashes_build(tmp_path: Path) -> None:
    proc, out = _build(
        tmp_path,
        '[notes]\nsummary = "Faster invoices"\nchanges = ["3f9a1c2b4d5e6f708192a3b4c5d6e7f8"]\n'
        '[checklist]\npipeline = "https://ci.example.net/runs/4711"\ncode_review = "PR-123"\n',
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert out.exists()
