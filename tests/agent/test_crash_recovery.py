"""Kill -9 at every named step of stage, activate, rollback and prune; the next command must find
``current`` on a complete release, record the recovery, leave incoming/ empty and verify clean."""

from __future__ import annotations

import signal

import pytest

from tests.conftest import Host, PackageFactory

# (operation, step, expected current afterwards, recovery expected in the journal)
CASES = [
    ("stage", "stage.extracted", "1.0.0", True),
    ("stage", "stage.before_rename", "1.0.0", True),
    ("stage", "stage.renamed", "1.0.0", True),
    ("stage", "stage.durable", "1.0.0", True),
    ("stage", "stage.recorded", "1.0.0", False),
    ("activate", "activate.intent", "1.0.0", True),
    ("activate", "activate.flipped", "1.0.0", True),
    ("activate", "activate.before_commit", "1.0.0", True),
    ("activate", "activate.committed", "1.1.0", False),
    ("rollback", "rollback.intent", "1.1.0", True),
    ("rollback", "rollback.flipped", "1.0.0", True),
    ("rollback", "rollback.committed", "1.0.0", False),
    ("prune", "prune.trashed", "1.1.0", True),
]


@pytest.fixture
def two_releases(host: Host, make_package: PackageFactory) -> tuple[Host, PackageFactory]:
    host.cli_json("stage", str(make_package("1.0.0")))
    host.cli_json("activate", "1.0.0")
    return host, make_package


@pytest.mark.parametrize(
    ("op", "step", "expect_current", "recovers"), CASES, ids=[c[1] for c in CASES]
)
def test_sigkill_at_step_recovers(
    two_releases, op: str, step: str, expect_current: str, recovers: bool
) -> None:
    host, make_package = two_releases
    p2 = make_package("1.1.0")
    if op == "stage":
        args = ["stage", str(p2)]
    else:
        host.cli_json("stage", str(p2))
        if op in ("rollback", "prune"):
            host.cli_json("activate", "1.1.0")
        if op == "prune":
            for v in ("1.2.0", "1.3.0"):
                host.cli_json("stage", str(make_package(v)))
            host.config.write_text(host.config.read_text().replace("keep = 5", "keep = 1"))
        args = {"activate": ["activate", "1.1.0"], "rollback": ["rollback"], "prune": ["prune"]}[op]
    journal_before = len(host.journal())

    crashed = host.cli(*args, env={"CUTOVER_TEST_CRASH_AT": step})
    assert crashed.returncode == -signal.SIGKILL, crashed.stdout + crashed.stderr

    # `current` resolves to a complete release at this very instant, before any recovery ran.
    link = host.current
    assert link is not None and (host.root / link / "VERSION").is_file()

    status = host.cli_json("status")["apps"][0]
    assert status["current"] == expect_current
    assert host.current == f"releases/{expect_current}"
    assert (host.root / "current" / "VERSION").read_text() == f"{expect_current}\n"
    assert status["pending"] is None
    assert list((host.root / ".cutover" / "incoming").iterdir()) == []
    assert list((host.root / ".cutover" / "trash").iterdir()) == []
    recovered = [e for e in host.journal()[journal_before:] if e["event"] == "recovery"]
    assert bool(recovered) == recovers, recovered
    # Every installed release is complete and matches its manifest.
    for rel in status["releases"]:
        if rel["installed"]:
            assert host.cli_json("verify", rel["version"])["ok"] is True
    # Only recorded releases exist on disk.
    on_disk = {p.name for p in (host.root / "releases").iterdir()}
    assert on_disk == {r["version"] for r in status["releases"] if r["installed"]}
    assert host.cli_json("journal", "--verify")["ok"] is True


def test_interrupted_stage_can_be_retried(two_releases) -> None:
    host, make_package = two_releases
    p2 = make_package("1.1.0")
    assert (
        host.cli("stage", str(p2), env={"CUTOVER_TEST_CRASH_AT": "stage.renamed"}).returncode == -9
    )
    out = host.cli_json("stage", str(p2))
    assert out["version"] == "1.1.0" and out["recovered"]
    assert host.state()["releases"]["1.1.0"]["status"] == "staged"


def test_torn_journal_line_is_dropped_and_reported(two_releases) -> None:
    host, _ = two_releases
    path = host.root / ".cutover" / "journal.jsonl"
    with path.open("ab") as fh:
        fh.write(b'{"seq": 99, "half a line')
    out = host.cli_json("status")
    assert out["apps"][0]["current"] == "1.0.0"
    assert any(
        "torn" in a for e in host.journal() if e["event"] == "recovery" for a in e["actions"]
    )
    assert host.cli_json("journal", "--verify")["ok"] is True


def test_hand_flip_is_adopted_as_a_rollback(two_releases) -> None:
    """The runbook's last resort (ln + mv -T) is recorded as a rollback by the next command."""
    host, make_package = two_releases
    host.cli_json("stage", str(make_package("1.1.0")))
    host.cli_json("activate", "1.1.0")
    tmp = host.root / "current.manual"
    tmp.symlink_to("releases/1.0.0")
    tmp.replace(host.root / "current")
    status = host.cli_json("status")["apps"][0]
    assert status["current"] == "1.0.0" and status["previous"] is None
    assert any("outside Cutover" in a for a in status["recovered"])
    assert host.state()["history"] == ["1.0.0"]


def test_missing_current_link_is_restored(two_releases) -> None:
    host, _ = two_releases
    (host.root / "current").unlink()
    status = host.cli_json("status")["apps"][0]
    assert host.current == "releases/1.0.0" and status["current"] == "1.0.0"
    assert any("was missing" in a for a in status["recovered"])


def test_rollback_refuses_when_the_target_runtime_spec_was_tampered(two_releases) -> None:
    host, make_package = two_releases
    host.cli_json("stage", str(make_package("1.1.0")))
    host.cli_json("activate", "1.1.0")
    spec = host.root / ".cutover" / "manifests" / "1.0.0.runtime.json"
    spec.write_text(
        spec.read_text().replace(
            '"post_rollback":[]', '"post_rollback":[{"name":"x","argv":["id"]}]'
        )
    )
    before = host.snapshot()
    proc = host.cli("rollback")
    assert proc.returncode == 6 and "does not match the digest" in proc.stdout
    assert host.snapshot() == before


def test_symlink_planted_in_releases_is_removed_without_following_it(two_releases) -> None:
    """Recovery runs as root from the CLI: a link in releases/ must never redirect a chmod."""
    host, _ = two_releases
    victim = host.tmp / "victim"
    victim.mkdir(mode=0o755)
    victim.chmod(0o755)
    (victim / "keep").write_text("x")
    (host.root / "releases" / "9.9.9").symlink_to(victim)
    status = host.cli_json("status")["apps"][0]
    assert not (host.root / "releases" / "9.9.9").is_symlink()
    assert (victim.stat().st_mode & 0o777) == 0o755 and (victim / "keep").read_text() == "x"
    assert any("9.9.9" in a for a in status["recovered"])


def test_crash_during_automatic_revert_is_finished_and_reported(two_releases) -> None:
    """Kill -9 right after the revert's flip back: the next start reports a failed activation,
    keeps the release bad and runs the old release's post_rollback hooks."""
    host, make_package = two_releases
    marker = host.tmp / "post_rollback.log"
    bad = make_package(
        "1.1.0",
        toml=(
            "[health.live]\ninterval_s = 0.1\nretries = 0\nhealthy_deadline_s = 2\n"
            '[[health.live.checks]]\ntype = "command"\nargv = ["false"]\n'
        ),
    )
    host.config.write_text(
        host.config.read_text()
        + f'\n[apps.demo.hooks]\npost_rollback = [{{name = "mark", argv = ["sh", "-c", "echo $CUTOVER_VERSION >> {marker}"]}}]\n'
    )
    host.cli_json("stage", str(bad))
    crashed = host.cli("activate", "1.1.0", env={"CUTOVER_TEST_CRASH_AT": "activate.reverted_flip"})
    assert crashed.returncode == -9, crashed.stdout + crashed.stderr
    assert host.current == "releases/1.0.0"
    status = host.cli_json("status")["apps"][0]
    assert status["current"] == "1.0.0" and status["pending"] is None
    assert any("marked bad" in a for a in status["recovered"])
    assert host.state()["releases"]["1.1.0"]["status"] == "bad"
    assert marker.read_text().split() == ["1.0.0"]


def test_failing_post_rollback_hook_during_recovery_is_reported_not_raised(two_releases) -> None:
    """Recovery reverts an activation killed after its flip; the old release's post_rollback
    hook fails: the command that recovered still succeeds, the revert stands, and the hook
    failure is one more reported action in the journaled ``recovery`` entry."""
    host, make_package = two_releases
    host.config.write_text(
        host.config.read_text()
        + '\n[apps.demo.hooks]\npost_rollback = [{name = "reload", argv = ["sh", "-c", "exit 4"]}]\n'
    )
    host.cli_json("stage", str(make_package("1.1.0")))
    crashed = host.cli("activate", "1.1.0", env={"CUTOVER_TEST_CRASH_AT": "activate.flipped"})
    assert crashed.returncode == -9, crashed.stdout + crashed.stderr

    status = host.cli_json("status")["apps"][0]

    assert status["current"] == "1.0.0" and host.current == "releases/1.0.0"
    assert status["pending"] is None
    assert any("post_rollback hooks after the revert failed" in a for a in status["recovered"])
    recovery = [e for e in host.journal() if e["event"] == "recovery"]
    assert recovery and recovery[-1]["actions"] == status["recovered"]
    assert host.state()["releases"]["1.1.0"]["status"] == "staged"
    assert host.cli_json("journal", "--verify")["ok"] is True


@pytest.mark.parametrize("kind", ["unrecorded-dir", "absolute-link"])
def test_current_only_a_human_can_fix_is_refused_and_nothing_changes(two_releases, kind) -> None:
    """``current`` on an unrecorded directory, or an absolute link: every locking command exits 6
    naming the link, and recovery touches nothing (not even a leftover in incoming/) until a
    human has fixed the link."""
    host, _ = two_releases
    if kind == "unrecorded-dir":
        (host.root / "releases" / "9.9.9").mkdir()
        target = "releases/9.9.9"
    else:
        target = str(host.root / "releases" / "1.0.0")
    tmp = host.root / "current.manual"
    tmp.symlink_to(target)
    tmp.replace(host.root / "current")
    (host.root / ".cutover" / "incoming" / "1.2.0.partial").mkdir()
    before, journal_before = host.snapshot(), host.journal()

    proc = host.cli("status")

    assert proc.returncode == 6, proc.stdout + proc.stderr
    assert str(host.root / "current") in proc.stdout
    assert host.snapshot() == before and host.journal() == journal_before
    assert host.current == target
