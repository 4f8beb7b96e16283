"""Governance enforced at stage, through the real ``cutover-agent`` CLI with real keys and
packages: the approval matrix by role and release type, SemVer bump vs release type,
``allowed_branches``, and freeze windows at activation. Every refusal also proves nothing changed
on the host. Required fields and the rollback plan: test_release_plan.py."""

from __future__ import annotations

import json
import re
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from cutover.agent.config import load_config
from cutover.agent.errors import MismatchError, SignatureError
from cutover.agent.keys import generate_keypair
from cutover.agent.package.container import open_package
from cutover.agent.trust.policy import HostHistory, verify_release
from cutover.controller.build import sign_package
from tests.agent.governance_kit import Gov, offline, online, verify
from tests.conftest import BIN, Host


@pytest.fixture
def gov(host: Host) -> Gov:
    return online(host)


@pytest.fixture
def offline_gov(tmp_path: Path) -> Gov:
    return offline(tmp_path)


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
        verify(gov, pkg)
    sign_package(pkg, gov.keys["product"])  # now two distinct keys cover the two roles
    verify(gov, pkg)
    major = gov.package("2.0.0", "major", ("technical",))
    with pytest.raises(SignatureError, match=r"technical x2.*missing: technical"):
        verify(gov, major)
    sign_package(major, both)
    verify(gov, major)


def test_threshold_stays_the_simple_case_without_a_matrix(offline_gov: Gov) -> None:
    """No approvals table: any one trusted key (threshold 1), whatever its roles."""
    offline_gov.configure(extra="")
    verify(offline_gov, offline_gov.package("1.0.0", "major", ("product",)))


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
        verify(offline_gov, pkg, highest="1.2.3")
    else:
        with pytest.raises(MismatchError, match=re.escape(error)):
            verify(offline_gov, pkg, highest="1.2.3")


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
        verify(offline_gov, pkg)
    else:
        with pytest.raises(MismatchError) as exc:
            verify(offline_gov, pkg)
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
