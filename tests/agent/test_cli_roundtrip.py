"""The on-host CLI drives the whole release store: init, stage, activate, rollback, prune, pin,
verify, journal — each step checked on disk (``current``), in the state and in the journal."""

from __future__ import annotations

import os
import stat
import subprocess
import time

import pytest

from tests.conftest import BIN, Host, PackageFactory


def events(host: Host) -> list[str]:
    return [e["event"] for e in host.journal()]


def test_full_round_trip(host: Host, make_package: PackageFactory) -> None:
    p1, p2 = make_package("1.0.0"), make_package("1.1.0")

    out = host.cli_json("stage", str(p1))
    assert out["version"] == "1.0.0" and host.current is None
    assert host.state()["releases"]["1.0.0"]["status"] == "staged"
    rel = host.root / "releases" / "1.0.0"
    assert (rel / "index.html").read_text() == "<h1>demo 1.0.0</h1>\n"
    assert stat.S_IMODE((rel / "bin" / "console").stat().st_mode) == 0o555  # read-only, exec kept
    assert stat.S_IMODE((rel / "index.html").stat().st_mode) == 0o444

    host.cli_json("activate", "1.0.0")
    assert host.current == "releases/1.0.0"
    assert (host.root / "current" / "VERSION").read_text() == "1.0.0\n"
    assert host.state()["releases"]["1.0.0"]["status"] == "active"

    host.cli_json("stage", str(p2))
    out = host.cli_json("activate", "1.1.0")
    assert (out["current"], out["previous"]) == ("1.1.0", "1.0.0")
    assert host.current == "releases/1.1.0"
    st = host.state()
    assert (st["releases"]["1.1.0"]["status"], st["releases"]["1.0.0"]["status"]) == (
        "active",
        "previous",
    )

    out = host.cli_json("rollback")
    assert host.current == "releases/1.0.0" and out["current"] == "1.0.0"
    assert host.state()["releases"]["1.1.0"]["status"] == "staged"

    out = host.cli_json("rollback", "--to", "1.1.0")
    assert host.current == "releases/1.1.0"
    assert host.state()["previous"] == "1.0.0"

    ev = events(host)
    for name in (
        "init",
        "stage.start",
        "stage.done",
        "activate.intent",
        "activate.done",
        "rollback.intent",
        "rollback.done",
    ):
        assert name in ev, name
    assert ev.count("activate.done") == 2 and ev.count("rollback.done") == 2
    assert host.cli_json("journal", "--verify")["ok"] is True
    assert host.cli_json("verify")["ok"] is True


def test_prune_keeps_current_previous_and_pinned(host: Host, make_package: PackageFactory) -> None:
    for i in range(5):
        host.cli_json("stage", str(make_package(f"1.{i}.0")))
    host.cli_json("activate", "1.1.0")
    host.cli_json("activate", "1.2.0")  # previous = 1.1.0
    host.cli_json("pin", "1.0.0")
    text = host.config.read_text().replace("keep = 5", "keep = 1")
    host.config.write_text(text)
    out = host.cli_json("prune")
    # keep=1 keeps the newest staged (1.4.0), plus current 1.2.0, previous 1.1.0, pinned 1.0.0.
    assert out["removed"] == ["1.3.0"]
    assert sorted(p.name for p in (host.root / "releases").iterdir()) == [
        "1.0.0",
        "1.1.0",
        "1.2.0",
        "1.4.0",
    ]
    st = host.state()
    assert st["releases"]["1.3.0"]["installed"] is False
    assert host.current == "releases/1.2.0"
    assert list((host.root / ".cutover" / "trash").iterdir()) == []
    host.cli_json("unpin", "1.0.0")
    assert host.cli_json("prune")["removed"] == ["1.0.0"]


def test_rollback_skips_bad_and_reads_state_not_mtimes(
    host: Host, make_package: PackageFactory
) -> None:
    for v in ("1.0.0", "1.1.0", "1.2.0"):
        host.cli_json("stage", str(make_package(v)))
        host.cli_json("activate", v)
    # Make directory mtimes lie: the oldest release looks newest. Rollback must not care.
    now = time.time()
    os.utime(host.root / "releases" / "1.0.0", (now + 1000, now + 1000))
    out = host.cli_json("rollback")
    assert out["current"] == "1.1.0"


def test_delete_refuses_current_and_previous(host: Host, make_package: PackageFactory) -> None:
    for v in ("1.0.0", "1.1.0", "1.2.0"):
        host.cli_json("stage", str(make_package(v)))
    host.cli_json("activate", "1.0.0")
    host.cli_json("activate", "1.1.0")
    before = host.snapshot()
    for v in ("1.1.0", "1.0.0"):
        proc = host.cli("delete", v)
        assert proc.returncode == 1 and "current or previous" in proc.stdout
    assert host.snapshot() == before
    host.cli_json("delete", "1.2.0")
    assert not (host.root / "releases" / "1.2.0").exists()


def test_second_operation_fails_fast_naming_the_holder(
    host: Host, make_package: PackageFactory, tmp_path
) -> None:
    host.cli_json("stage", str(make_package("1.0.0")))
    p2 = make_package("1.1.0")
    marker = tmp_path / "paused"
    env = {
        **os.environ,
        "CUTOVER_TEST_PAUSE_AT": "activate.intent",
        "CUTOVER_TEST_PAUSE_FILE": str(marker),
    }
    proc = subprocess.Popen(
        [str(BIN / "cutover-agent"), "--config", str(host.config), "activate", "1.0.0"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 120  # a deadline for a loaded machine
        while not marker.exists():
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        res = host.cli("stage", str(p2))
        # "fast" without a stopwatch: the holder sleeps at its checkpoint until killed, so an
        # answer while it still runs is one that did not wait for the lock.
        assert proc.poll() is None
        assert res.returncode == 4, res.stdout + res.stderr
        assert (
            "busy" in res.stdout
            and f"pid {proc.pid}" in res.stdout
            and "activate 1.0.0" in res.stdout
        )
    finally:
        proc.kill()
        proc.wait()
    # The killed holder left an intent: the next command recovers and the lock is free again.
    out = host.cli_json("stage", str(p2))
    assert out["version"] == "1.1.0"
    assert host.current is None
    assert any(e["event"] == "recovery" for e in host.journal())


@pytest.mark.parametrize("command", [["rollback"], ["activate", "9.9.9"], ["verify"]])
def test_command_errors_change_nothing(
    host: Host, make_package: PackageFactory, command: list[str]
) -> None:
    host.cli_json("stage", str(make_package("1.0.0")))
    before = host.snapshot()
    proc = host.cli(*command)
    assert proc.returncode in (1, 5), proc.stdout
    assert "error" in proc.stdout
    assert host.snapshot() == before


def test_drift_is_detected_and_named(host: Host, make_package: PackageFactory) -> None:
    host.cli_json("stage", str(make_package("1.0.0")))
    host.cli_json("activate", "1.0.0")
    target = host.root / "releases" / "1.0.0" / "lib" / "app.php"
    target.chmod(0o644)
    data = bytearray(target.read_bytes())
    data[0] ^= 0x01
    target.write_bytes(bytes(data))
    target.chmod(0o444)
    proc = host.cli("verify")
    assert proc.returncode == 6
    assert "lib/app.php" in proc.stdout and "content differs" in proc.stdout
    (host.root / "releases" / "1.0.0" / "lib").chmod(0o755)
    (host.root / "releases" / "1.0.0" / "lib" / "evil.php").write_text("<?php system($_GET[1]);")
    proc = host.cli("verify", "1.0.0")
    assert proc.returncode == 6 and "lib/evil.php: unexpected entry" in proc.stdout


def test_journal_tampering_is_detected(host: Host, make_package: PackageFactory) -> None:
    host.cli_json("stage", str(make_package("1.0.0")))
    host.cli_json("activate", "1.0.0")
    path = host.root / ".cutover" / "journal.jsonl"
    lines = path.read_text().splitlines()
    lines[1] = lines[1].replace('"stage.start"', '"stage.startx"')
    path.write_text("\n".join(lines) + "\n")
    proc = host.cli("journal", "--verify")
    assert proc.returncode == 6 and "does not chain" in proc.stdout


def test_journal_truncation_is_detected(host: Host, make_package: PackageFactory) -> None:
    host.cli_json("stage", str(make_package("1.0.0")))
    path = host.root / ".cutover" / "journal.jsonl"
    lines = path.read_text().splitlines()
    path.write_text("\n".join(lines[:-1]) + "\n")
    proc = host.cli("journal", "--verify")
    assert proc.returncode == 6 and "cut from its end" in proc.stdout
    # The next operation does not launder the cut: it records it in the chain itself.
    status = host.cli_json("status")["apps"][0]
    assert any("journal integrity" in a for a in status["recovered"])
    assert any(
        "journal integrity" in a
        for e in host.journal()
        if e["event"] == "recovery"
        for a in e["actions"]
    )


def test_keys_and_status_json(host: Host, make_package: PackageFactory) -> None:
    keys = host.cli_json("keys")["keys"]
    assert len(keys) == 1 and keys[0]["role"] == "release" and len(keys[0]["keyid"]) == 64
    host.cli_json("stage", str(make_package("1.0.0")))
    status = host.cli_json("status")["apps"][0]
    assert status["current"] is None and status["releases"][0]["version"] == "1.0.0"
    human = subprocess.run(
        [str(BIN / "cutover-agent"), "--config", str(host.config), "status"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    assert "staged    1.0.0" in human and "current   -" in human
