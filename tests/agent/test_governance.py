"""Governance enforced at stage, through the real ``cutover-agent`` CLI with real keys and
packages: the approval matrix by role and release type, SemVer bump vs release type, and
``allowed_branches``. Every refusal also proves nothing changed on the host."""

from __future__ import annotations

import json
import re
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from cutover.agent.config import load_config
from cutover.agent.errors import ManifestError, MismatchError, SignatureError
from cutover.agent.keys import PrivateKey, generate_keypair
from cutover.agent.package.container import open_package
from cutover.agent.trust.policy import HostHistory, verify_release
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
        migrating: bool = False,
    ) -> Path:
        self.n += 1
        src = self.host.tmp / "src" / f"gov-{self.n}"
        src.mkdir(parents=True)
        (src / "index.html").write_text(f"{version}\n")
        (src / "cutover.toml").write_text(
            f'app = "demo"\n{toml}\n[release]\nrelease_type = "{release_type}"\n'
            + ("requires_migration = true\n" if destructive or migrating else "")
            + ("destructive_migration = true\n" if destructive else "")
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


@pytest.fixture
def offline_gov(tmp_path: Path) -> Gov:
    """The same keys and config for in-process checks: no CLI, no ``init`` (faster)."""
    host = Host(tmp_path / "srv" / "demo", tmp_path / "etc" / "agent.toml", "demo", tmp_path)
    host.root.mkdir(parents=True)
    host.config.parent.mkdir(parents=True)
    (tmp_path / "keys").mkdir()
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
def test_each_matrix_row_accepts_its_roles_and_refuses_any_one_missing(
    offline_gov: Gov, rtype: str, destructive: bool, needs: tuple[str, ...]
) -> None:
    """In-process, through the agent's own verification (real keys, real packages): each row
    passes with every role, and without any one of them is refused (reason ``approvals``)
    naming the roles signed with their key ids and the role missing."""
    gov = offline_gov
    cfg = load_config(gov.host.config)
    policy = cfg.policies["demo"]

    def verify(pkg: Path) -> None:
        parts, fh = open_package(pkg)
        fh.close()
        verify_release(
            parts.manifest_bytes,
            parts.signatures_bytes,
            policy,
            expected_version=None,
            history=HostHistory(),
            now=datetime.now(UTC),
        )

    verify(gov.package("1.0.0", rtype, needs, destructive=destructive))
    for missing in needs:
        # Still signed by a trusted key, whose role the row does not need, when nothing else is.
        others = tuple(r for r in needs if r != missing) or ("business",)
        with pytest.raises(SignatureError) as exc:
            verify(gov.package("1.0.0", rtype, others, destructive=destructive))
        assert exc.value.code == "approvals"
        msg = str(exc.value)
        assert f"missing: {missing}" in msg
        for role in others:
            assert f"{role} ({gov.keys[role].keyid[:16]}" in msg


def test_a_missing_role_is_refused_by_the_cli_with_nothing_changed(gov: Gov) -> None:
    """The real CLI: a major release without the business signature exits 3 (``approvals``),
    lists roles signed and missing, changes nothing; with it, the release is staged."""
    short = gov.package("1.0.0", "major", ("technical", "product"))
    body = gov.refused(short, "missing: business", "roles signed: product (", "technical (")
    assert body["error"] == "approvals"
    full = gov.package("1.0.0", "major", ("technical", "product", "business"))
    assert gov.host.cli_json("stage", str(full))["version"] == "1.0.0"
    assert gov.host.state()["releases"]["1.0.0"]["status"] == "staged"


def test_every_matrix_row_through_the_cli(gov: Gov) -> None:
    """The real CLI, one host, each row in turn: without the row's last role the stage is refused
    (exit 3, ``approvals``, the missing role named) with nothing changed; with every role of the
    row, the same version is staged."""
    for n, (rtype, destructive, needs) in enumerate(p.values for p in ROWS):
        version = f"1.0.{n}"
        short = gov.package(version, rtype, needs[:-1] or ("business",), destructive=destructive)
        body = gov.refused(short, f"missing: {needs[-1]}")
        assert body["error"] == "approvals"
        full = gov.package(version, rtype, needs, destructive=destructive)
        assert gov.host.cli_json("stage", str(full))["version"] == version
        record = gov.host.state()["releases"][version]
        assert record["status"] == "staged" and record["release_type"] == rtype


def _verify(gov: Gov, pkg: Path, highest: str | None = None) -> None:
    """The agent's stage-time verification of ``pkg`` under the current config, in-process."""
    parts, fh = open_package(pkg)
    fh.close()
    verify_release(
        parts.manifest_bytes,
        parts.signatures_bytes,
        load_config(gov.host.config).policies["demo"],
        expected_version=None,
        history=HostHistory(highest_version=highest),
        now=datetime.now(UTC),
    )


def test_one_key_with_two_roles_counts_once(offline_gov: Gov) -> None:
    """Each required role needs a distinct key: a key holding technical and product cannot approve
    a minor release alone; a count per role asks for that many distinct keys."""
    gov, tmp = offline_gov, offline_gov.host.tmp
    both = generate_keypair(tmp / "keys" / "both")
    gov.configure(
        extra='[apps.demo.approvals]\nminor = ["technical", "product"]\nmajor = {technical = 2}\n'
    )
    text = gov.host.config.read_text().replace(
        "release_keys = [",
        f'release_keys = [{{path = "{tmp / "keys" / "both"}.pub", '
        'roles = ["technical", "product"]}, ',
    )
    gov.host.config.write_text(text)
    pkg = gov.package("1.0.0", "minor", ())
    sign_package(pkg, both)
    with pytest.raises(SignatureError, match=r"missing: (product|technical)"):
        _verify(gov, pkg)
    sign_package(pkg, gov.keys["product"])  # now two distinct keys cover the two roles
    _verify(gov, pkg)
    major = gov.package("2.0.0", "major", ("technical",))
    with pytest.raises(SignatureError, match=r"technical x2.*missing: technical"):
        _verify(gov, major)
    sign_package(major, both)
    _verify(gov, major)


def test_threshold_stays_the_simple_case_without_a_matrix(offline_gov: Gov) -> None:
    """No approvals table: any one trusted key (threshold 1), whatever its roles."""
    offline_gov.configure(extra="")
    _verify(offline_gov, offline_gov.package("1.0.0", "major", ("product",)))


@pytest.mark.parametrize(
    ("version", "rtype", "error"),
    [
        pytest.param("1.3.0", "patch", "implies a minor release", id="feature-labelled-patch"),
        pytest.param("2.0.0", "minor", "implies a major release", id="major-labelled-minor"),
        pytest.param("1.2.4", "major", "implies a patch release", id="patch-labelled-major"),
        pytest.param("2026.03.7", "patch", "MAJOR.MINOR.PATCH", id="not-semver"),
        pytest.param("1.2.4", "hotfix", None, id="hotfix-is-a-patch"),
        pytest.param("1.3.0", "minor", None, id="minor"),
        pytest.param("2.0.0", "major", None, id="major"),
        pytest.param("2.0.0", "security", None, id="security-follows-its-bump"),
    ],
)
def test_semver_release_type_must_match_the_bump(
    offline_gov: Gov, version: str, rtype: str, error: str | None
) -> None:
    """With versioning = "semver", over 1.2.3 on the host: a mislabelled bump is refused naming
    the type the bump implies; a non-SemVer version is refused; a matching label passes."""
    offline_gov.configure(extra="", app_lines='versioning = "semver"\n')
    pkg = offline_gov.package(version, rtype, ("technical",))
    if error is None:
        _verify(offline_gov, pkg, highest="1.2.3")
    else:
        with pytest.raises(MismatchError, match=re.escape(error)):
            _verify(offline_gov, pkg, highest="1.2.3")


def test_a_mislabelled_bump_is_refused_by_the_cli(gov: Gov) -> None:
    gov.configure(extra="", app_lines='versioning = "semver"\n')
    gov.host.cli_json("stage", str(gov.package("1.2.3", "patch", ("technical",))))
    body = gov.refused(
        gov.package("1.3.0", "patch", ("technical",)), "implies a minor release", "1.2.3"
    )
    assert body["error"] == "release_type"


@pytest.mark.parametrize(
    ("branch", "ok"),
    [("stg-42", True), ("fix/production-2026", True), ("feature/x", False), ("", False)],
    ids=["glob", "exact", "other", "none"],
)
def test_branch_outside_allowed_branches_is_refused(
    offline_gov: Gov, branch: str, ok: bool
) -> None:
    """The signed branch must match a glob of allowed_branches; the refusal names the rule."""
    offline_gov.configure(
        extra="", app_lines='allowed_branches = ["stg-*", "fix/production-2026"]\n'
    )
    pkg = offline_gov.package("1.0.0", "patch", ("technical",), branch=branch)
    if ok:
        _verify(offline_gov, pkg)
    else:
        with pytest.raises(MismatchError) as exc:
            _verify(offline_gov, pkg)
        assert exc.value.code == "branch"
        assert "allowed_branches = ['stg-*', 'fix/production-2026']" in str(exc.value)


DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


def freezes_around_now() -> list[tuple[str, str]]:
    """(config, window name): a weekly and a dated window in force from an hour before the real
    now to an hour after, built around it (no sleeping, no fake clock in a real process; the
    window arithmetic is tested against an injected clock in test_freeze.py). The weekly one is
    in Tokyo's local time and may run past midnight there; with it, a dated window starting in
    two hours, which ``status`` shows as upcoming."""
    now = datetime.now(UTC)
    tokyo = ZoneInfo("Asia/Tokyo")
    start, end = (
        (now - timedelta(hours=1)).astimezone(tokyo),
        (now + timedelta(hours=1)).astimezone(tokyo),
    )

    def instant(t: datetime) -> str:
        return t.strftime("%Y-%m-%dT%H:%M:%SZ")

    weekly = (
        f'[[apps.demo.freeze.weekly]]\nname = "around-now-weekly"\ndays = ["{DAYS[start.weekday()]}"]\n'
        f'from = "{start:%H:%M}"\nto = "{end:%H:%M}"\ntimezone = "Asia/Tokyo"\n'
        'override_roles = ["management"]\n'
        f'[[apps.demo.freeze.dated]]\nname = "soon"\nfrom = {instant(now + timedelta(hours=2))}\n'
        f"to = {instant(now + timedelta(hours=3))}\n"
    )
    dated = (
        f'[[apps.demo.freeze.dated]]\nname = "around-now-dated"\nfrom = {instant(now - timedelta(hours=1))}\n'
        f'to = {instant(now + timedelta(hours=1))}\nrelease_types = ["patch"]\noverride_roles = ["management"]\n'
    )
    return [(weekly, "around-now-weekly"), (dated, "around-now-dated")]


def test_freeze_refuses_activation_allows_staging_and_rollback_and_journals_override(
    gov: Gov,
) -> None:
    """In a weekly and in a dated window: activation refused (``frozen``, window named, how to
    override, nothing changed), staging and rollback allowed; then a management signature
    overrides the dated window and the override is journaled with its key."""
    gov.configure(extra="")
    host = gov.host
    for v in ("1.0.0", "1.0.1"):
        host.cli_json("stage", str(gov.package(v, "patch", ("technical",))))
        host.cli_json("activate", v)
    pkg = gov.package("1.0.2", "patch", ("technical",))
    for i, (freeze, name) in enumerate(freezes_around_now()):
        gov.configure(extra=freeze)
        if i == 0:
            host.cli_json("stage", str(pkg))  # staging is allowed during a freeze
            status = host.cli_json("status")["apps"][0]["freeze"]
            assert [w["name"] for w in status["active"]] == [name]
            # in two hours, then the weekly window's next occurrence, six days and 23 hours away
            assert [w["name"] for w in status["upcoming"]] == ["soon", name]
            human = subprocess.run(
                [str(BIN / "cutover-agent"), "--config", str(host.config), "status"],
                capture_output=True,
                text=True,
                check=True,
            ).stdout
            assert (
                f"FROZEN    {name} until " in human
                and "(override: a signature by role management)" in human
            )
            assert "freeze    soon from " in human
        before = host.snapshot()
        proc = host.cli("activate", "1.0.2")
        body = json.loads(proc.stdout)
        assert proc.returncode == 1 and body["error"] == "frozen", proc.stdout
        assert f"freeze window {name!r} is in force until" in body["message"]
        assert "role management" in body["message"]
        assert host.snapshot() == before
        # Rollback is always allowed, freeze or not.
        target = "1.0.0" if i == 0 else "1.0.1"
        assert host.cli_json("rollback", "--to", target)["current"] == target
    # An override: a management key signs the same manifest; re-staging records the signer.
    sign_package(pkg, gov.keys["management"])
    assert host.cli_json("stage", str(pkg))["signers_added"] == [gov.keys["management"].keyid]
    assert host.cli_json("activate", "1.0.2")["current"] == "1.0.2"
    overrides = [e for e in host.journal() if e["event"] == "freeze.override"]
    assert [(e["window"], e["version"], e["keyid"], e["roles"]) for e in overrides] == [
        ("around-now-dated", "1.0.2", gov.keys["management"].keyid, ["management"])
    ]


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
        _verify(offline_gov, pkg)
    else:
        with pytest.raises(ManifestError, match=re.escape(f"lacks required field(s): {missing};")):
            _verify(offline_gov, pkg)
