"""Governance enforced at stage, through the real ``cutover-agent`` CLI with real keys and
packages: the approval matrix by role and release type, SemVer bump vs release type, and
``allowed_branches``. Every refusal also proves nothing changed on the host."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from cutover.agent.keys import PrivateKey, generate_keypair
from cutover.controller.build import build_package, sign_package
from tests.conftest import BIN, Host

ROLES = ("technical", "product", "business", "security", "management")

# The matrix of the release process (issue 13), as an agent config would state it.
MATRIX = """
[apps.demo.approvals]
patch = ["technical"]
hotfix = ["technical"]
minor = ["technical", "product"]
major = ["technical", "product", "business"]
security = ["technical", "security"]
destructive_migration = ["technical", "management"]
"""


class Gov:
    """A host whose app trusts one key per role, plus packages built and signed for it."""

    def __init__(self, host: Host) -> None:
        self.host = host
        self.keys: dict[str, PrivateKey] = {}
        keydir = host.tmp / "keys"
        for role in ROLES:
            self.keys[role] = generate_keypair(keydir / role)
        self.n = 0

    def configure(self, extra: str = MATRIX, app_lines: str = "") -> None:
        entries = ", ".join(
            f'{{path = "{self.host.tmp / "keys" / role}.pub", roles = ["{role}"]}}'
            for role in ROLES
        )
        self.host.config.write_text(
            f'[apps.demo]\nroot = "{self.host.root}"\nrelease_keys = [{entries}]\n'
            f"threshold = 1\nkeep = 5\n{app_lines}{extra}"
        )

    def package(
        self,
        version: str,
        release_type: str,
        signed_by: tuple[str, ...],
        *,
        destructive: bool = False,
        branch: str = "main",
        toml: str = "",
    ) -> Path:
        self.n += 1
        src = self.host.tmp / "src" / f"gov-{self.n}"
        src.mkdir(parents=True)
        (src / "index.html").write_text(f"{version}\n")
        (src / "cutover.toml").write_text(
            f'app = "demo"\n{toml}\n[release]\nrelease_type = "{release_type}"\n'
            + ("requires_migration = true\ndestructive_migration = true\n" if destructive else "")
        )
        out = self.host.tmp / "packages" / str(self.n) / f"demo-{version}.cutover"
        build_package(src, out, version=version, branch=branch)
        for role in signed_by:
            sign_package(out, self.keys[role])
        return out

    def refused(self, pkg: Path, *needles: str) -> dict[str, object]:
        before = self.host.snapshot()
        proc = self.host.cli("stage", str(pkg))
        assert proc.returncode == 3, proc.stdout + proc.stderr
        body = json.loads(proc.stdout)
        for needle in needles:
            assert needle in body["message"], body["message"]
        assert self.host.snapshot() == before
        return body


@pytest.fixture
def gov(host: Host) -> Gov:
    g = Gov(host)
    g.configure()
    return g


# (release type, destructive migration, roles the rule needs)
ROWS = [
    pytest.param("patch", False, ("technical",), id="patch"),
    pytest.param("hotfix", False, ("technical",), id="hotfix"),
    pytest.param("minor", False, ("technical", "product"), id="minor"),
    pytest.param("major", False, ("technical", "product", "business"), id="major"),
    pytest.param("security", False, ("technical", "security"), id="security"),
    pytest.param("patch", True, ("technical", "management"), id="destructive_migration"),
]


@pytest.mark.parametrize(("rtype", "destructive", "needs"), ROWS)
def test_each_matrix_row_accepts_its_roles_and_refuses_one_missing(
    gov: Gov, rtype: str, destructive: bool, needs: tuple[str, ...]
) -> None:
    """Without the last required role: refused (exit 3, reason ``approvals``) naming roles signed,
    roles missing and key ids, nothing changed; with every role: staged."""
    missing = needs[-1]
    # A single-role row is still signed, by a trusted key whose role the row does not need.
    others = needs[:-1] or ("business",)
    short = gov.package("1.0.0", rtype, others, destructive=destructive)
    body = gov.refused(short, f"missing: {missing}", f"roles signed: {sorted(others)[0]} (")
    assert body["error"] == "approvals"
    for role in others:
        assert gov.keys[role].keyid[:16] in str(body["message"])
    staged = gov.host.cli_json(
        "stage", str(gov.package("1.0.0", rtype, needs, destructive=destructive))
    )
    assert staged["version"] == "1.0.0"
    assert gov.host.state()["releases"]["1.0.0"]["status"] == "staged"


def test_one_key_with_two_roles_counts_once(gov: Gov, host: Host) -> None:
    """Each required role needs a distinct key: a key holding technical and product cannot approve
    a minor release alone; a count per role asks for that many distinct keys."""
    both = generate_keypair(host.tmp / "keys" / "both")
    gov.configure(
        app_lines="",
        extra='[apps.demo.approvals]\nminor = ["technical", "product"]\nmajor = {technical = 2}\n',
    )
    text = host.config.read_text().replace(
        "release_keys = [",
        f'release_keys = [{{path = "{host.tmp / "keys" / "both"}.pub", '
        'roles = ["technical", "product"]}, ',
    )
    host.config.write_text(text)
    pkg = gov.package("1.0.0", "minor", ())
    sign_package(pkg, both)
    gov.refused(pkg, "missing: ")
    sign_package(pkg, gov.keys["product"])  # now two distinct keys cover the two roles
    assert host.cli_json("stage", str(pkg))["version"] == "1.0.0"
    major = gov.package("2.0.0", "major", ("technical",))
    gov.refused(major, "technical x2", "missing: technical")
    sign_package(major, both)
    assert host.cli_json("stage", str(major))["version"] == "2.0.0"


def test_threshold_stays_the_simple_case_without_a_matrix(gov: Gov) -> None:
    """No approvals table: any one trusted key (threshold 1), whatever its roles."""
    gov.configure(extra="")
    assert gov.host.cli_json("stage", str(gov.package("1.0.0", "major", ("product",))))


def test_semver_release_type_must_match_the_bump(gov: Gov) -> None:
    """With versioning = "semver", a feature bump labelled patch is refused, naming the type the
    bump implies; a non-SemVer version is refused; a correctly labelled bump is staged."""
    gov.configure(extra="", app_lines='versioning = "semver"\n')
    gov.host.cli_json("stage", str(gov.package("1.2.3", "patch", ("technical",))))
    body = gov.refused(
        gov.package("1.3.0", "patch", ("technical",)), "implies a minor release", "1.2.3"
    )
    assert body["error"] == "release_type"
    body = gov.refused(gov.package("2026.03.7", "patch", ("technical",)), "MAJOR.MINOR.PATCH")
    assert body["error"] == "not_semver"
    assert gov.host.cli_json("stage", str(gov.package("1.3.0", "minor", ("technical",))))


def test_branch_outside_allowed_branches_is_refused(gov: Gov) -> None:
    """The signed branch must match a glob of allowed_branches; the refusal names the rule."""
    gov.configure(extra="", app_lines='allowed_branches = ["stg-*", "fix/production-2026"]\n')
    body = gov.refused(
        gov.package("1.0.0", "patch", ("technical",), branch="feature/x"),
        "'feature/x'",
        "allowed_branches = ['stg-*', 'fix/production-2026']",
    )
    assert body["error"] == "branch"
    pkg = gov.package("1.0.0", "patch", ("technical",), branch="stg-42")
    assert gov.host.cli_json("stage", str(pkg))["version"] == "1.0.0"


# Windows in force at any instant a test can run, so the real CLI needs no fake clock (the
# window arithmetic itself is tested against an injected instant in test_freeze.py).
FREEZES = [
    pytest.param(
        '[[apps.demo.freeze.weekly]]\nname = "always-weekly"\n'
        'days = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]\nfrom = "00:00"\nto = "00:00"\n'
        'timezone = "Asia/Tokyo"\noverride_roles = ["management"]\n',
        "always-weekly",
        id="weekly",
    ),
    pytest.param(
        '[[apps.demo.freeze.dated]]\nname = "the-long-freeze"\nfrom = 2000-01-01T00:00:00Z\n'
        'to = 2100-01-01T00:00:00Z\nrelease_types = ["patch"]\noverride_roles = ["management"]\n',
        "the-long-freeze",
        id="dated",
    ),
]


@pytest.mark.parametrize(("freeze", "name"), FREEZES)
def test_freeze_refuses_activation_allows_staging_and_rollback_and_journals_override(
    gov: Gov, freeze: str, name: str
) -> None:
    gov.configure(extra="")
    host = gov.host
    for v in ("1.0.0", "1.0.1"):
        host.cli_json("stage", str(gov.package(v, "patch", ("technical",))))
        host.cli_json("activate", v)
    gov.configure(extra=freeze)
    status = host.cli_json("status")["apps"][0]["freeze"]
    assert [w["name"] for w in status["active"]] == [name]
    pkg = gov.package("1.0.2", "patch", ("technical",))
    host.cli_json("stage", str(pkg))  # staging is allowed during a freeze
    before = host.snapshot()
    proc = host.cli("activate", "1.0.2")
    body = json.loads(proc.stdout)
    assert proc.returncode == 1 and body["error"] == "frozen", proc.stdout
    assert f"freeze window {name!r} is in force until" in body["message"]
    assert "role management" in body["message"]
    assert host.snapshot() == before and host.current == "releases/1.0.1"
    # Rollback is always allowed, freeze or not.
    assert host.cli_json("rollback")["current"] == "1.0.0"
    host.cli_json("rollback", "--to", "1.0.1")
    # An override: a management key signs the same manifest; re-staging records the signer.
    sign_package(pkg, gov.keys["management"])
    assert host.cli_json("stage", str(pkg))["signers_added"] == [gov.keys["management"].keyid]
    done = host.cli_json("activate", "1.0.2")
    assert done["current"] == "1.0.2"
    overrides = [e for e in host.journal() if e["event"] == "freeze.override"]
    assert len(overrides) == 1
    assert overrides[0]["window"] == name and overrides[0]["version"] == "1.0.2"
    assert overrides[0]["keyid"] == gov.keys["management"].keyid
    assert overrides[0]["roles"] == ["management"]


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


def test_rollback_across_an_unsafe_database_rollback_needs_accept_db_risk(gov: Gov) -> None:
    """Refused (nothing changed) without --accept-db-risk; with it, rolled back and journaled."""
    gov.configure(extra="")
    host = gov.host
    host.cli_json("stage", str(gov.package("1.0.0", "patch", ("technical",))))
    host.cli_json("activate", "1.0.0")
    host.cli_json("stage", str(gov.package("1.0.1", "patch", ("technical",), toml=GOVERNED)))
    host.cli_json("activate", "1.0.1")
    before = host.snapshot()
    proc = host.cli("rollback")
    body = json.loads(proc.stdout)
    assert proc.returncode == 1 and body["error"] == "invalid_state", proc.stdout
    assert "1.0.1" in body["message"] and "--accept-db-risk" in body["message"]
    assert host.snapshot() == before
    assert host.cli_json("rollback", "--accept-db-risk")["current"] == "1.0.0"
    accepted = [e for e in host.journal() if e["event"] == "rollback.db_risk_accepted"]
    assert [(e["version"], e["crossed"]) for e in accepted] == [("1.0.0", ["1.0.1"])]
