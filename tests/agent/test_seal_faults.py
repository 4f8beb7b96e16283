"""Seals under fault and attack (agent/host/seal.py, docs/lifecycle.md §1.2): a seal is only a
cache; whatever sits at a seal's path never fails a stage or wedges the app, a raced or forged
seal never gets unverified content into a new release past what the docs say.

Real releases staged by the real lifecycle in-process; ``verify`` through the real CLI."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.agent.test_lifecycle import op
from tests.agent.test_reuse import FILES_A, FILES_B
from tests.agent.test_seal import A, B, C, _leftovers, _record, _seal, _verify_clean
from tests.conftest import Host, PackageFactory


def _plant(path: Path, kind: str) -> None:
    if kind == "dir":
        path.mkdir()
        (path / "inside").write_text("planted\n")
    else:
        os.mkfifo(path)


def _manifests(host: Host) -> list[str]:
    return sorted(os.listdir(host.root / ".cutover" / "manifests"))


@pytest.mark.parametrize("kind", ["dir", "fifo"])
def test_a_non_file_at_the_seal_path_leaves_the_release_unsealed_and_the_stage_succeeds(
    host: Host, make_package: PackageFactory, kind: str
) -> None:
    op(host, "stage", make_package(A, files=FILES_A))
    planted = _seal(host, B)
    _plant(planted, kind)
    before = _manifests(host)
    op(host, "stage", make_package(B, files=FILES_B))
    assert host.state()["releases"][B]["status"] == "staged"
    if kind == "dir":  # nothing written over it, and no temp file left next to it
        assert planted.is_dir() and (planted / "inside").read_text() == "planted\n"
        assert f"{B}.seal.json" in before and not any(n.endswith(".tmp") for n in _manifests(host))
        assert "reuse_sealed_files" in _record(host, B)  # A's seal still served B
    assert _leftovers(host) == []
    events = [e["event"] for e in host.journal()]
    assert "stage.failed" not in events
    op(host, "activate", B)
    assert host.current == f"releases/{B}"
    _verify_clean(host, A, B)
    # and the next stage (its recovery empties trash/) works too
    op(host, "stage", make_package(C, files=FILES_B))
    assert host.state()["releases"][C]["status"] == "staged"
    assert _leftovers(host) == []


@pytest.mark.parametrize("kind", ["dir", "fifo"])
def test_a_non_file_in_place_of_a_seal_never_wedges_removal_or_recovery(
    host: Host, make_package: PackageFactory, kind: str
) -> None:
    op(host, "stage", make_package(A, files=FILES_A))
    op(host, "stage", make_package(B, files=FILES_B))
    _seal(host, A).unlink()
    _plant(_seal(host, A), kind)  # trash_release moves it into trash/ along with A
    _plant(host.root / ".cutover" / "trash" / "9.9.9.x.seal.json", kind)  # found by recovery
    op(host, "delete", A)
    assert A not in os.listdir(host.root / "releases")
    assert not os.path.lexists(_seal(host, A))
    assert _leftovers(host) == []  # trash/ emptied: the planted entries too
    op(host, "activate", B)
    op(host, "stage", make_package(C, files=FILES_B))
    assert host.current == f"releases/{B}"
    assert host.state()["releases"][C]["status"] == "staged"
    assert _leftovers(host) == []
    _verify_clean(host, B, C)


def test_a_write_in_the_unlink_window_is_never_refreshed_as_proven(
    host: Host, make_package: PackageFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A same-size write with the old mtime put back, just before a shared name is unlinked,
    gets a ctime the unlink's absorbs: the refresh hashes the inode and finds it changed, so the
    row stays stale and the next stage hashes the file (and takes the payload's bytes)."""
    op(host, "stage", make_package(A, files=FILES_A))
    op(host, "stage", make_package(B, files=FILES_B))  # B links A's inodes
    target = host.root / "releases" / A / "lib/app.php"
    evil = FILES_A["lib/app.php"].upper()
    real_unlink = os.unlink
    raced: list[str] = []

    def racing_unlink(name: str, *args: object, dir_fd: int | None = None, **kw: object) -> None:
        if name == "app.php" and not raced and dir_fd is not None:
            raced.append(name)
            st = target.stat()
            target.chmod(0o644)
            target.write_text(evil)  # same size, other content
            target.chmod(0o444)
            os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns))  # the old mtime back
        real_unlink(name, *args, dir_fd=dir_fd, **kw)  # type: ignore[misc]

    monkeypatch.setattr(os, "unlink", racing_unlink)
    op(host, "delete", B)
    monkeypatch.setattr(os, "unlink", real_unlink)
    assert raced == ["app.php"]
    op(host, "stage", make_package(C, files=FILES_B))
    assert (host.root / "releases" / C / "lib/app.php").read_text() == FILES_B["lib/app.php"]
    assert os.lstat(host.root / "releases" / C / "lib/app.php").st_ino != target.stat().st_ino
    record = _record(host, C)
    assert record["reuse_hashed_files"] >= 1  # the raced file was hashed, not believed
    assert host.cli_json("verify", C)["ok"] is True
    assert _leftovers(host) == []
