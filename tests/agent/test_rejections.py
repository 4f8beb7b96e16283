"""Rejected input and failed staging change nothing: ``current``, ``releases/``, the state file,
``incoming/`` and ``trash/`` stay exactly as they were, and nothing is written outside the root."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from cutover.agent.keys import generate_keypair
from cutover.agent.package.container import open_package
from tests.conftest import Host, PackageFactory


def _outside_listing(host: Host) -> list[str]:
    """Every path under tmp except the app root and inputs the test itself creates."""
    skip = {host.root, host.tmp / "packages", host.tmp / "src", host.tmp / "keys", host.tmp / "mnt"}
    out = []
    for p in sorted(host.tmp.rglob("*")):
        if not any(p == s or s in p.parents for s in skip):
            out.append(str(p.relative_to(host.tmp)))
    return out


def _flip_payload_byte(pkg: Path) -> None:
    parts, fh = open_package(pkg)
    fh.close()
    with pkg.open("r+b") as f:
        f.seek(parts.payload_offset + parts.payload_size // 2)
        b = f.read(1)
        f.seek(-1, 1)
        f.write(bytes([b[0] ^ 0xFF]))


@pytest.fixture
def active_host(host: Host, make_package: PackageFactory) -> Host:
    host.cli_json("stage", str(make_package("1.0.0")))
    host.cli_json("activate", "1.0.0")
    return host


@pytest.mark.parametrize(
    ("chunks", "code"),
    [(True, "chunk_digest"), (False, "payload_digest")],
    ids=["chunked", "whole"],
)
def test_tampered_payload_is_rejected(
    active_host: Host, make_package: PackageFactory, chunks: bool, code: str
) -> None:
    pkg = make_package("1.1.0", chunks=chunks)
    _flip_payload_byte(pkg)
    before, outside = active_host.snapshot(), _outside_listing(active_host)
    proc = active_host.cli("stage", str(pkg))
    assert proc.returncode == 3 and code in proc.stdout
    assert active_host.snapshot() == before and _outside_listing(active_host) == outside
    failed = [e for e in active_host.journal() if e["event"] == "stage.failed"]
    assert failed and failed[-1]["version"] == "1.1.0" and failed[-1]["code"] == code


def test_unsigned_package_is_rejected(active_host: Host, make_package: PackageFactory) -> None:
    pkg = make_package("1.1.0", sign=False)
    before = active_host.snapshot()
    proc = active_host.cli("stage", str(pkg))
    assert proc.returncode == 3 and '"unsigned"' in proc.stdout
    assert active_host.snapshot() == before


def test_untrusted_signer_is_rejected(
    active_host: Host, make_package: PackageFactory, tmp_path: Path
) -> None:
    other = generate_keypair(tmp_path / "keys" / "intruder")
    pkg = make_package("1.1.0", key=other)
    before = active_host.snapshot()
    proc = active_host.cli("stage", str(pkg))
    assert proc.returncode == 3 and '"untrusted"' in proc.stdout
    assert active_host.snapshot() == before


def test_downgrade_is_refused_unless_allowed_locally(
    active_host: Host, make_package: PackageFactory
) -> None:
    active_host.cli_json("stage", str(make_package("2.0.0")))
    old = make_package("1.5.0")
    before = active_host.snapshot()
    proc = active_host.cli("stage", str(old))
    assert proc.returncode == 3 and '"downgrade"' in proc.stdout
    assert active_host.snapshot() == before
    assert active_host.cli_json("stage", str(old), "--allow-downgrade")["version"] == "1.5.0"


def test_same_version_different_content_is_refused(
    active_host: Host, make_package: PackageFactory, tmp_path: Path
) -> None:
    dup = make_package("1.0.0", files={"index.html": "different\n"}, app="demo")
    before = active_host.snapshot()
    proc = active_host.cli("stage", str(dup))
    assert proc.returncode == 3 and '"version_exists"' in proc.stdout
    assert active_host.snapshot() == before


def test_restaging_identical_version_is_idempotent(active_host: Host) -> None:
    pkg = active_host.tmp / "packages" / "demo-1.0.0.cutover"
    before = active_host.snapshot()
    out = active_host.cli_json("stage", str(pkg))
    assert out["already_staged"] is True
    assert active_host.snapshot() == before


def test_failing_stage_hook_leaves_nothing(active_host: Host, make_package: PackageFactory) -> None:
    pkg = make_package(
        "1.1.0",
        toml='[[hooks.stage]]\nname = "build"\nargv = ["sh", "-c", "echo building; echo boom >&2; exit 3"]\n',
    )
    before = active_host.snapshot()
    proc = active_host.cli("stage", str(pkg))
    assert proc.returncode == 1, proc.stdout
    assert "build" in proc.stdout and "boom" in proc.stdout
    after = active_host.snapshot()
    assert {k: v for k, v in after.items() if k != "state"} == {
        k: v for k, v in before.items() if k != "state"
    }
    rec = active_host.state()["releases"]["1.1.0"]
    assert rec["status"] == "failed" and rec["installed"] is False
    assert active_host.current == "releases/1.0.0"


def test_disk_full_during_staging(host: Host, make_package: PackageFactory, tmp_path: Path) -> None:
    """The app root lives on a 3 MiB tmpfs; a 6 MiB release cannot fit."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    if (
        shutil.which("mount") is None
        or subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mnt)],
            capture_output=True,
            check=False,
        ).returncode
        != 0
    ):
        pytest.skip("cannot mount a tmpfs here (needs root); disk-full path not exercised")
    try:
        root = mnt / "app"
        cfg = host.config.read_text().replace(str(host.root), str(root))
        host.config.write_text(cfg)
        host.root = root
        from cutover.agent.config import load_config
        from cutover.agent.host.layout import Layout

        loaded = load_config(host.config)
        Layout(loaded.apps["demo"].root).create()
        host.cli_json("stage", str(make_package("1.0.0")))
        host.cli_json("activate", "1.0.0")
        big = make_package(
            "1.1.0", files={f"blob{i}.bin": f"{i}" * (1024 * 1024) for i in range(6)}
        )
        before = host.snapshot()
        proc = host.cli("stage", str(big))
        assert proc.returncode == 1, proc.stdout + proc.stderr
        assert "disk full" in proc.stdout.lower() or "no space" in proc.stdout.lower()
        after = host.snapshot()
        assert after["current"] == before["current"] == "releases/1.0.0"
        assert (
            after["releases"] == before["releases"]
            and after["incoming"] == []
            and after["trash"] == []
        )
        assert host.cli_json("verify")["ok"] is True
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_no_directory_is_created_through_a_link_planted_in_shared(
    host: Host, make_package: PackageFactory
) -> None:
    """An app user plants shared/storage -> elsewhere (missing): staging refuses, creates nothing
    there, and leaves nothing installed; a link to an existing directory is used as it is."""
    elsewhere = host.tmp / "elsewhere"
    (host.root / "shared" / "storage").symlink_to(elsewhere)
    pkg = make_package(
        "1.0.0",
        toml='[shared]\ndirs = ["storage/app"]\n',
        files={"index.html": "x\n", "storage/.gitkeep": ""},
    )
    before = host.snapshot()
    proc = host.cli("stage", str(pkg))
    assert proc.returncode == 1 and "never creates directories through links" in proc.stdout
    assert not elsewhere.exists()
    after = host.snapshot()
    assert {k: v for k, v in after.items() if k != "state"} == {
        k: v for k, v in before.items() if k != "state"
    }
    assert host.state()["releases"]["1.0.0"]["status"] == "failed"
    elsewhere.mkdir()
    (elsewhere / "app").mkdir()
    assert host.cli_json("stage", str(pkg))["version"] == "1.0.0"
