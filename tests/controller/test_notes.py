"""``cutover notes`` prints the signed manifest's notes in the release process's template."""

from __future__ import annotations

import json
import subprocess
from datetime import UTC, datetime
from pathlib import Path

from cutover.controller.build import build_package
from tests.conftest import BIN

TOML = """app = "ame"
owner = "alice"
[release]
release_type = "minor"
requires_migration = true
[rollback]
database = "needs-confirmation"
owner = "bob"
approver = "carol"
verification = ["GET /health returns 200"]
[notes]
summary = "Invoices can be exported as CSV"
changes = ["CSV export of invoices", "Faster invoice list"]
impacted_areas = ["billing"]
migrations = ["2026_03_07_add_export_table"]
operational_risks = ["export queue load"]
tests_completed = ["unit", "e2e billing"]
[notes.security_impact]
rbac = "new permission invoices.export"
[checklist]
tests_passed = true
code_review = "PR-123"
"""

EXPECTED = """# ame 1.4.0 (minor), 2026-03-07

## Summary
Invoices can be exported as CSV

## Changes
- CSV export of invoices
- Faster invoice list

## Impacted areas
- billing

## Database changes
- migration: yes
- 2026_03_07_add_export_table
- rollback safety: needs-confirmation

## Security impact
- RBAC: new permission invoices.export
- tenant isolation: none
- sensitive data: none

## Testing completed
- unit
- e2e billing
- code_review: PR-123
- tests_passed: yes

## Deployment notes
- owner: alice
- built: 2026-03-07T12:00:00+00:00 from release/1.4 abc123
- rollback owner: bob
- approver: carol
- verify: GET /health returns 200
- risk: export queue load

## Known issues
- none
"""


def _notes(pkg: Path, *args: str) -> str:
    proc = subprocess.run(
        [str(BIN / "cutover"), "notes", str(pkg), *args],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_notes_follow_the_template_in_markdown_and_json(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "cutover.toml").write_text(TOML)
    (src / "index.php").write_text("<?php\n")
    pkg = tmp_path / "ame-1.4.0.cutover"
    build_package(
        src,
        pkg,
        version="1.4.0",
        branch="release/1.4",
        commit="abc123",
        created_at=datetime(2026, 3, 7, 12, 0, tzinfo=UTC),
    )
    assert _notes(pkg) == EXPECTED
    assert _notes(pkg, "--format", "md") == EXPECTED
    data = json.loads(_notes(pkg, "--format", "json"))
    assert data["version"] == "1.4.0" and data["date"] == "2026-03-07"
    assert data["database"]["rollback"] == "needs-confirmation"
    assert data["deployment"]["rollback_owner"] == "bob"
    assert data["checklist"] == {"tests_passed": True, "code_review": "PR-123"}
    assert data == EXPECTED_JSON
    assert json.loads(_notes(pkg, "--json")) == EXPECTED_JSON


# The same template as data, every section (golden).
EXPECTED_JSON = {
    "app": "ame",
    "version": "1.4.0",
    "date": "2026-03-07",
    "release_type": "minor",
    "summary": "Invoices can be exported as CSV",
    "changes": ["CSV export of invoices", "Faster invoice list"],
    "impacted_areas": ["billing"],
    "database": {
        "requires_migration": True,
        "destructive": False,
        "migrations": ["2026_03_07_add_export_table"],
        "rollback": "needs-confirmation",
    },
    "security_impact": {
        "rbac": "new permission invoices.export",
        "tenant_isolation": "",
        "sensitive_data": "",
    },
    "tests_completed": ["unit", "e2e billing"],
    "deployment": {
        "owner": "alice",
        "created_at": "2026-03-07T12:00:00+00:00",
        "branch": "release/1.4",
        "commit": "abc123",
        "rollback_owner": "bob",
        "approver": "carol",
        "verification": ["GET /health returns 200"],
        "config_rollback": "",
        "files_rollback": "",
    },
    "operational_risks": ["export queue load"],
    "checklist": {"tests_passed": True, "code_review": "PR-123"},
    "known_issues": [],
}


def test_changes_from_git_fills_the_changes_with_commit_subjects(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "cutover.toml").write_text('app = "ame"\n[notes]\nsummary = "s"\n')
    env = {
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@example.net",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@example.net",
        "PATH": "/usr/bin:/bin",
    }

    def git(*args: str) -> None:
        subprocess.run(["git", "-C", str(src), *args], check=True, capture_output=True, env=env)

    git("init", "-q")
    git("add", "cutover.toml")
    git("commit", "-q", "-m", "Initial import")
    git("tag", "v1.3.0")
    for subject in ("Add CSV export", "Fix invoice rounding"):
        (src / "index.php").write_text(subject)
        git("add", "index.php")
        git("commit", "-q", "-m", subject)
    pkg = tmp_path / "ame-1.4.0.cutover"
    proc = subprocess.run(
        [
            str(BIN / "cutover"),
            "build",
            str(src),
            "--version",
            "1.4.0",
            "-o",
            str(pkg),
            "--changes-from-git",
            "v1.3.0..HEAD",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    data = json.loads(_notes(pkg, "--format", "json"))
    assert data["changes"] == ["Add CSV export", "Fix invoice rounding"]
    assert data["summary"] == "s"
    bad = subprocess.run(
        [
            str(BIN / "cutover"),
            "build",
            str(src),
            "--version",
            "1.4.1",
            "-o",
            str(tmp_path / "x.cutover"),
            "--changes-from-git",
            "nosuchtag..HEAD",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert bad.returncode == 2 and "nosuchtag..HEAD" in bad.stderr
    assert not (tmp_path / "x.cutover").exists()
