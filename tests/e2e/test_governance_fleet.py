"""Governance across a fleet, end to end: three real agents on 127.0.0.1 driven by the real
``cutover`` CLI (issue 13): the release log (Version | Date | Type | Owner | Status | Notes,
merged from the agents' records and journals), a fleet rollback across an ``unsafe`` database
rollback (``--accept-db-risk``), and the fleet-wide immutability check, where one host holds a
different build of a version, staged on it directly through its own trust config.

Tests run in file order on one fleet; each states what it builds on.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest

from cutover.agent.package.container import open_package
from cutover.agent.package.manifest import parse_manifest
from cutover.agent.trust.policy import manifest_digest
from cutover.controller.build import build_package, sign_package
from tests.e2e.conftest import APP, BIN, Keys
from tests.e2e.fleet_fixture import Fleet, results

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

GROUPS = {"web-1": ["web"], "web-2": ["web"], "web-3": ["web"]}
WEB = ("web-1", "web-2", "web-3")

RELEASES = {
    "1.0.0": (
        'owner = "alice"\n[release]\nrelease_type = "patch"\n'
        '[notes]\nsummary = "First release | with a pipe"\n'
    ),
    "1.1.0": (
        'owner = "bob"\n[release]\nrelease_type = "minor"\n'
        '[rollback]\ndatabase = "unsafe"\nowner = "carol"\n'
        '[notes]\nsummary = "Drops the legacy orders table"\n'
    ),
    "1.2.0": 'owner = "dave"\n[release]\nrelease_type = "minor"\n',
}


def _package(tmp: Path, keys: Keys, version: str, toml: str, content: str) -> Path:
    src = tmp / f"src-{version}-{content}"
    src.mkdir(parents=True)
    (src / "index.html").write_text(f"{version} {content}\n")
    (src / "cutover.toml").write_text(f'app = "{APP}"\n{toml}')
    out = tmp / content / f"{APP}-{version}.cutover"
    build_package(src, out, version=version)
    sign_package(out, keys.release)
    return out


def _digests(pkg: Path) -> tuple[str, str]:
    """(manifest digest, payload digest) of a package, read with the agent's own parsers."""
    parts, fh = open_package(pkg)
    fh.close()
    return manifest_digest(parts.manifest_bytes), parse_manifest(
        parts.manifest_bytes
    ).payload.sha256


@pytest.fixture(scope="module")
def gov_packages(tmp_path_factory: pytest.TempPathFactory, keys: Keys) -> dict[str, Path]:
    """The releases, plus ``1.2.0-odd``: another build of 1.2.0, signed by the same release key."""
    tmp = tmp_path_factory.mktemp("gov-packages")
    out = {v: _package(tmp, keys, v, toml, "official") for v, toml in RELEASES.items()}
    out["1.2.0-odd"] = _package(tmp, keys, "1.2.0", RELEASES["1.2.0"], "odd")
    return out


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory, keys: Keys) -> Iterator[Fleet]:
    f = Fleet(tmp_path_factory.mktemp("gov-fleet"), keys, GROUPS)
    f.start()
    yield f
    f.stop()


def _activate_in_turn(fleet: Fleet, packages: dict[str, Path], *versions: str) -> None:
    for v in versions:
        fleet.stream("push", str(packages[v]), "--group", "web", expect=0)
        fleet.stream("activate", v, "--group", "web", expect=0)


def _first_activation(fleet: Fleet, version: str) -> str:
    """The earliest ``first_activated_at`` the hosts' records keep (on disk, not through the API),
    which is no later than the hosts' first ``activate.done`` in their journals."""
    records = [
        json.loads((fleet.agents[name].meta / "state.json").read_text())["releases"][version]
        for name in WEB
    ]
    first = min(r["first_activated_at"] for r in records)
    journal = min(
        e["ts"]
        for name in WEB
        for e in fleet.agents[name].journal()
        if e["event"] == "activate.done" and e["version"] == version
    )

    def instant(text: str) -> datetime:
        return datetime.fromisoformat(text.replace("Z", "+00:00"))

    assert instant(first) <= instant(journal)  # seconds precision, the journal's milliseconds
    return str(first)


def test_log_prints_version_date_type_owner_status_notes(
    fleet: Fleet, gov_packages: dict[str, Path]
) -> None:
    """Builds 1.0.0 then 1.1.0 active on the three hosts. The release log has one row per version,
    newest first, with the signed manifest's type, owner and notes summary, each host's status
    and digests, the first activation as the date; ``--format md`` is the same as a Markdown
    table (golden), and the history of events is still there."""
    _activate_in_turn(fleet, gov_packages, "1.0.0", "1.1.0")
    data = fleet.document("log", "--group", "web", expect=0)
    assert data["missing"] == {} and data["integrity_failures"] == [] and data["exit_code"] == 0
    digests = {v: _digests(gov_packages[v]) for v in ("1.0.0", "1.1.0")}
    expected = [
        {
            "version": "1.1.0",
            "date": _first_activation(fleet, "1.1.0"),
            "release_type": "minor",
            "owner": "bob",
            "status": "active 3",
            "notes": "Drops the legacy orders table",
            "integrity_failure": False,
            "hosts": {
                h: {
                    "status": "active",
                    "manifest_digest": digests["1.1.0"][0],
                    "payload_digest": digests["1.1.0"][1],
                }
                for h in WEB
            },
        },
        {
            "version": "1.0.0",
            "date": _first_activation(fleet, "1.0.0"),
            "release_type": "patch",
            "owner": "alice",
            "status": "superseded 3",
            "notes": "First release | with a pipe",
            "integrity_failure": False,
            "hosts": {
                h: {
                    "status": "superseded",
                    "manifest_digest": digests["1.0.0"][0],
                    "payload_digest": digests["1.0.0"][1],
                }
                for h in WEB
            },
        },
    ]
    assert data["releases"] == expected
    assert {(e["host"], e["event"], e["version"]) for e in data["entries"]} >= {
        (h, "activate.done", "1.1.0") for h in WEB
    }

    md = fleet.cutover("log", "--group", "web", "--format", "md")
    assert md.returncode == 0, md.stderr

    def day(version: str) -> str:
        return _first_activation(fleet, version)[:16].replace("T", " ")

    assert md.stdout == (
        f"# Release log: {APP}\n"
        "\n"
        "| Version | Date (UTC) | Type | Owner | Status | Notes |\n"
        "|---|---|---|---|---|---|\n"
        f"| 1.1.0 | {day('1.1.0')} | minor | bob | active 3 | Drops the legacy orders table |\n"
        f"| 1.0.0 | {day('1.0.0')} | patch | alice | superseded 3 | First release \\| with a pipe |\n"
    )
    assert json.loads(fleet.cutover("log", "--group", "web", "--format", "json").stdout) == data

    table = fleet.cutover("log", "--group", "web")
    assert table.returncode == 0, table.stderr
    for needle in ("release log: demo", "history: demo", "bob", "Drops the legacy", "active 3"):
        assert needle in table.stdout, table.stdout


def test_fleet_rollback_across_an_unsafe_database_rollback_needs_accept_db_risk(
    fleet: Fleet,
) -> None:
    """1.1.0's rollback plan says the database rollback is unsafe: ``cutover rollback`` is refused
    by every host (``invalid_state``, exit 1) with nothing changed; with ``--accept-db-risk`` every
    host goes back to 1.0.0 and journals the acceptance with the controller key as actor."""
    before = {h: fleet.agents[h].snapshot() for h in WEB}
    events = fleet.stream("rollback", "--group", "web", expect=1)
    for h in WEB:
        res = results(events)[h]
        assert res["status"] == "failed" and res["error"] == "invalid_state", res
        assert "1.1.0" in res["message"] and "--accept-db-risk" in res["message"]
    assert {h: fleet.agents[h].snapshot() for h in WEB} == before

    events = fleet.stream("rollback", "--group", "web", "--accept-db-risk", expect=0)
    assert {(r["status"], r["current"]) for r in events[-1]["hosts"]} == {("ok", "1.0.0")}
    actor = f"api:deploy/{fleet.keys.deploy.keyid[:16]}"
    for h in WEB:
        assert fleet.agents[h].current() == "releases/1.0.0"
        accepted = [
            e for e in fleet.agents[h].journal() if e["event"] == "rollback.db_risk_accepted"
        ]
        assert [(e["version"], e["crossed"], e["actor"]) for e in accepted] == [
            ("1.0.0", ["1.1.0"], actor)
        ]
    rows = {r["version"]: r for r in fleet.document("log", "--group", "web", expect=0)["releases"]}
    assert rows["1.1.0"]["status"] == "rolled back 3" and rows["1.0.0"]["status"] == "active 3"


def test_log_marks_a_version_whose_content_differs_between_hosts(
    fleet: Fleet, gov_packages: dict[str, Path]
) -> None:
    """web-1 and web-2 get 1.2.0 through the controller; web-3 is given another build of 1.2.0
    (signed by the same release key) directly on the host, through its own agent config: each
    host accepts it, since none holds the other build. ``cutover log`` marks 1.2.0 as an
    integrity failure with each host's digests and exits 6; the consistent hosts alone exit 0."""
    fleet.stream("push", str(gov_packages["1.2.0"]), "--hosts", "web-1,web-2", expect=0)
    web3, odd_pkg = fleet.agents["web-3"], str(gov_packages["1.2.0-odd"])
    local = subprocess.run(
        [str(BIN / "cutover-agent"), "--config", str(web3.config), "--json", "stage", odd_pkg],
        capture_output=True,
        text=True,
        check=False,
    )
    assert local.returncode == 0, local.stdout + local.stderr
    official, odd = _digests(gov_packages["1.2.0"]), _digests(gov_packages["1.2.0-odd"])
    assert official[0] != odd[0] and official[1] != odd[1]

    data = fleet.document("log", "--group", "web", expect=6)
    row = next(r for r in data["releases"] if r["version"] == "1.2.0")
    assert row["integrity_failure"] is True and row["status"] == "staged 3"
    assert {h: (r["manifest_digest"], r["payload_digest"]) for h, r in row["hosts"].items()} == {
        "web-1": official,
        "web-2": official,
        "web-3": odd,
    }
    assert [r["version"] for r in data["releases"] if r["integrity_failure"]] == ["1.2.0"]
    [failure] = data["integrity_failures"]
    assert failure["version"] == "1.2.0"
    msg = failure["message"]
    assert msg.startswith("INTEGRITY FAILURE: demo 1.2.0 is not the same release on every host")
    assert f"web-3: manifest {odd[0][:16]} payload {odd[1][:16]}" in msg
    assert f"web-1: manifest {official[0][:16]}" in msg and "new version" in msg

    md = fleet.cutover("log", "--group", "web", "--format", "md")
    assert md.returncode == 6
    assert "| 1.2.0 | " in md.stdout and "| **INTEGRITY FAILURE**, staged 3 |" in md.stdout
    assert f"- {msg}" in md.stdout
    table = fleet.cutover("log", "--group", "web")
    assert table.returncode == 6 and "INTEGRITY FAILURE" in table.stdout
    assert "INTEGRITY FAILURE: demo 1.2.0" in " ".join(table.stderr.split())

    consistent = fleet.document("log", "--hosts", "web-1,web-2", expect=0)
    assert consistent["integrity_failures"] == []
