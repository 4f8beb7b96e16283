"""What a release must declare, through the real ``cutover-agent`` and ``cutover build`` CLIs
with real keys and packages: fields required per release type (refused at build and again at
stage), the owner and database-rollback safety recorded, and a rollback across an ``unsafe``
database rollback refused without ``--accept-db-risk``. Every refusal proves nothing changed."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest

from cutover.agent.errors import ManifestError
from tests.agent.governance_kit import Gov, offline, online, verify
from tests.conftest import BIN, Host


@pytest.fixture
def gov(host: Host) -> Gov:
    return online(host)


@pytest.fixture
def offline_gov(tmp_path: Path) -> Gov:
    return offline(tmp_path)


GOVERNED = """owner = "alice"
[rollback]
database = "unsafe"
owner = "bob"
verification = ["GET /health"]
[notes]
summary = "Drops the legacy orders table"
[checklist]
code_review = "PR-123"
backup_confirmed = true
"""
REQUIRE = '[apps.demo.require]\nall = ["owner", "checklist.tests_passed"]\n'


def test_a_missing_required_field_is_refused_at_build_and_again_at_stage(gov: Gov) -> None:
    """checklist.tests_passed is required: ``cutover build --require`` refuses to build without
    it, and a package built without the check is refused by the agent, nothing changed."""
    host = gov.host
    gov.configure(extra=REQUIRE)
    require = host.tmp / "require.toml"
    require.write_text('[require]\nall = ["owner", "checklist.tests_passed"]\n')
    src = host.tmp / "src" / "governed"
    src.mkdir(parents=True)
    (src / "cutover.toml").write_text('app = "demo"\n' + GOVERNED)
    (src / "index.html").write_text("hi\n")
    out = host.tmp / "packages" / "governed.cutover"
    proc = subprocess.run(
        [
            str(BIN / "cutover"),
            "build",
            "--json",
            str(src),
            "--version",
            "1.0.0",
            "-o",
            str(out),
            "--require",
            str(require),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    body = json.loads(proc.stdout)
    assert proc.returncode == 3 and body["error"] == "missing_field", proc.stdout
    assert "checklist.tests_passed" in body["message"] and not out.exists()
    pkg = gov.package("1.0.0", "patch", ("technical",), toml=GOVERNED)
    body = gov.refused(pkg, "lacks required field(s): checklist.tests_passed")
    assert body["error"] == "missing_field"
    ok = gov.package("1.0.0", "patch", ("technical",), toml=GOVERNED + "tests_passed = true\n")
    assert host.cli_json("stage", str(ok))["version"] == "1.0.0"
    record = host.state()["releases"]["1.0.0"]
    assert record["owner"] == "alice" and record["db_rollback"] == "unsafe"
    table = subprocess.run(
        [str(BIN / "cutover-agent"), "--config", str(host.config), "releases"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    assert table[0].split()[:4] == ["VERSION", "STATUS", "TYPE", "OWNER"]
    assert table[1].split()[:4] == ["1.0.0", "staged", "patch", "alice"]


@pytest.mark.parametrize("plan", ["unsafe", "needs-confirmation"])
def test_rollback_across_an_unsafe_database_rollback_needs_accept_db_risk(
    gov: Gov, plan: str
) -> None:
    """Refused (nothing changed) without --accept-db-risk, also with --restore alone when no
    migration's checkpoint can restore the database (the advice must not send the operator to
    --restore then); with it, rolled back and journaled. ``needs-confirmation`` is the same gate:
    the operator confirms with --accept-db-risk."""
    gov.configure(extra="")
    host = gov.host
    host.cli_json("stage", str(gov.package("1.0.0", "patch", ("technical",))))
    host.cli_json("activate", "1.0.0")
    toml = GOVERNED.replace('database = "unsafe"', f'database = "{plan}"')
    host.cli_json("stage", str(gov.package("1.0.1", "patch", ("technical",), toml=toml)))
    host.cli_json("activate", "1.0.1")
    before = host.snapshot()
    for extra in ([], ["--restore"]):
        proc = host.cli("rollback", *extra)
        body = json.loads(proc.stdout)
        assert proc.returncode == 1 and body["error"] == "invalid_state", proc.stdout
        assert f"1.0.1 ({plan})" in body["message"] and "--accept-db-risk" in body["message"]
        assert "--restore" not in body["message"], body["message"]
        assert host.snapshot() == before
    assert host.cli_json("rollback", "--accept-db-risk")["current"] == "1.0.0"
    accepted = [e for e in host.journal() if e["event"] == "rollback.db_risk_accepted"]
    assert [(e["version"], e["crossed"]) for e in accepted] == [("1.0.0", ["1.0.1"])]


REQUIRE_BY_TYPE = """[apps.demo.require]
all = ["owner", "checklist.tests_passed"]
migration = ["rollback.database", "checklist.backup_confirmed"]
security = ["release_notes.security_impact"]
"""
OWNED = 'owner = "alice"\n'


@pytest.mark.parametrize(
    ("rtype", "migrating", "toml", "missing"),
    [
        pytest.param("patch", False, OWNED + "[checklist]\ntests_passed = true\n", None, id="patch-ok"),
        pytest.param(
            "patch", False, OWNED + "[checklist]\ntests_passed = false\n",
            "checklist.tests_passed", id="tests-not-passed",
        ),
        pytest.param("patch", False, "[checklist]\ntests_passed = true\n", "owner", id="no-owner"),
        pytest.param(
            "patch", True, OWNED + "[checklist]\ntests_passed = true\n",
            "rollback.database, checklist.backup_confirmed", id="migrating-without-plan",
        ),
        pytest.param(
            "patch", True,
            OWNED + '[rollback]\ndatabase = "safe"\n[checklist]\ntests_passed = true\n'
            "backup_confirmed = true\n",
            None, id="migrating-with-plan",
        ),
        pytest.param(
            "security", False, OWNED + "[checklist]\ntests_passed = true\n",
            "release_notes.security_impact", id="security-without-impact",
        ),
        pytest.param(
            "security", False,
            OWNED + '[notes.security_impact]\nrbac = "unchanged"\n[checklist]\ntests_passed = true\n',
            None, id="security-with-impact",
        ),
    ],
)  # fmt: skip
def test_required_fields_by_release_type_at_stage(
    offline_gov: Gov, rtype: str, migrating: bool, toml: str, missing: str | None
) -> None:
    """The agent's stage-time verification asks the fields of ``all``, of the release's type and,
    for a migrating release, of ``migration``; a checklist item counts only when true."""
    offline_gov.configure(extra=REQUIRE_BY_TYPE)
    pkg = offline_gov.package("1.0.0", rtype, ("technical",), toml=toml, migrating=migrating)
    if missing is None:
        verify(offline_gov, pkg)
    else:
        with pytest.raises(ManifestError, match=re.escape(f"lacks required field(s): {missing};")):
            verify(offline_gov, pkg)
