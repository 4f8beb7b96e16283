"""``cutover build`` refuses release notes or metadata that hold a secret, naming the field."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from cutover.agent.errors import ManifestError
from cutover.controller.build import build_package
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


KEY = "AKIAIOSFODNN7EXAMPLE"  # AWS's documented example access key id
# (where the secret goes: cutover.toml lines or a build_package argument, the field it names)
FIELDS = [
    pytest.param({"notes": f"rotated {KEY}"}, "", "notes", id="notes"),
    pytest.param({"branch": f"fix/{KEY}"}, "", "branch", id="branch"),
    pytest.param({"build": f"ci-{KEY}"}, "", "build", id="build"),
    pytest.param({}, f'owner = "{KEY}"\n', "owner", id="owner"),
    *(
        pytest.param({}, f'[notes]\n{key} = "{KEY}"\n', f"release_notes.{key}", id=key)
        for key in ("summary",)
    ),
    *(
        pytest.param({}, f'[notes]\n{key} = ["ok", "{KEY}"]\n', f"release_notes.{key}[1]", id=key)
        for key in (
            "changes",
            "impacted_areas",
            "migrations",
            "operational_risks",
            "tests_completed",
            "known_issues",
        )
    ),
    *(
        pytest.param(
            {},
            f'[notes.security_impact]\n{key} = "{KEY}"\n',
            f"release_notes.security_impact.{key}",
            id=f"security_impact.{key}",
        )
        for key in ("rbac", "tenant_isolation", "sensitive_data")
    ),
    *(
        pytest.param({}, f'[rollback]\n{key} = "{KEY}"\n', f"rollback.{key}", id=f"rollback.{key}")
        for key in ("config", "files", "owner", "approver")
    ),
    pytest.param(
        {}, f'[rollback]\nverification = ["{KEY}"]\n', "rollback.verification[0]", id="verification"
    ),
    pytest.param(
        {}, f'[checklist]\ncode_review = "{KEY}"\n', "checklist.code_review", id="checklist"
    ),
]


@pytest.mark.parametrize(("kwargs", "toml", "field"), FIELDS)
def test_a_secret_in_any_notes_field_is_refused_naming_that_field(
    tmp_path: Path, kwargs: dict[str, str], toml: str, field: str
) -> None:
    """Every human-written field the notes and metadata publish is scanned: the refusal
    (``secret_in_notes``) names the field and the kind, never the secret, and writes nothing."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "cutover.toml").write_text('app = "ame"\n' + toml)
    (src / "index.php").write_text("<?php\n")
    out = tmp_path / "dist" / "ame-1.0.0.cutover"
    out.parent.mkdir()
    with pytest.raises(ManifestError) as exc:
        build_package(src, out, version="1.0.0", **kwargs)
    assert exc.value.code == "secret_in_notes"
    assert f"{field} (AWS Access Key)" in exc.value.message, exc.value.message
    assert KEY not in exc.value.message
    assert list(out.parent.iterdir()) == []  # no package, no temp file
