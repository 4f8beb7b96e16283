"""Seals under fault and attack (agent/host/seal.py, docs/lifecycle.md §1.2): a seal is only a
cache; whatever sits at a seal's path never fails a stage or wedges the app, a raced or forged
seal never gets unverified content into a new release past what the docs say.

Real releases staged by the real lifecycle in-process; ``verify`` through the real CLI."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import pytest

from cutover.agent.host.layout import Layout
from cutover.agent.host.seal import seal_projection
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


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _forge_row(
    host: Host, version: str, rel: str, row_path: str, row_sha: str, target: Path
) -> Any:
    """Rewrite ``version``'s seal row for ``rel``: the given path and SHA-256, with the current
    identity of ``target`` (what an attacker writing as the agent's uid can do)."""
    st = os.lstat(target)
    seal = _seal(host, version)
    data = json.loads(seal.read_bytes())
    for row in data["files"]:
        if row[0] == rel:
            row[0], row[1], row[4:7] = (
                row_path,
                row_sha,
                [st.st_ino, st.st_mtime_ns, st.st_ctime_ns],
            )
    seal.write_text(json.dumps(data))
    seal.chmod(0o640)
    return data


def _write_state_seal(host: Host, version: str, digest: str) -> None:
    path = Layout(host.root).state_file
    state = json.loads(path.read_bytes())
    state["releases"][version]["seal_sha256"] = digest
    path.write_text(json.dumps(state))


def test_the_state_records_the_seal_projection_and_refreshes_keep_it(
    host: Host, make_package: PackageFactory
) -> None:
    op(host, "stage", make_package(A, files=FILES_A))
    op(host, "stage", make_package(B, files=FILES_B))
    for v in (A, B):
        rows = [tuple(r) for r in json.loads(_seal(host, v).read_bytes())["files"]]
        assert host.state()["releases"][v]["seal_sha256"] == seal_projection(rows)  # type: ignore[arg-type]
    before = json.loads(_seal(host, A).read_bytes())["files"]
    op(host, "delete", B)  # A's rows for the shared inodes take the new ctime
    after = json.loads(_seal(host, A).read_bytes())["files"]
    assert after != before and [r[:4] for r in after] == [r[:4] for r in before]
    op(host, "stage", make_package(C, files=FILES_B))
    record = _record(host, C)
    assert record["reuse_sealed_files"] == len(FILES_A)  # the four shared and cutover.toml
    assert "reuse_hashed_files" not in record
    _verify_clean(host, A, C)


def test_a_seal_row_claiming_other_content_is_never_believed(
    host: Host, make_package: PackageFactory
) -> None:
    """A row rewritten to claim the content a new release needs (B's VERSION) for a file that
    holds something else, with that file's current identity: its rows are not the ones the state
    recorded, so the whole seal is ignored and every source is hashed."""
    op(host, "stage", make_package(A, files=FILES_A))
    victim = host.root / "releases" / A / "index.html"
    evil = "X" * len(FILES_B["VERSION"])
    victim.chmod(0o644)
    victim.write_text(evil)
    victim.chmod(0o444)
    _forge_row(host, A, "index.html", "index.html", _sha(FILES_B["VERSION"]), victim)
    op(host, "stage", make_package(B, files=FILES_B))
    assert (host.root / "releases" / B / "VERSION").read_text() == FILES_B["VERSION"]
    assert (host.root / "releases" / B / "index.html").read_text() == FILES_B["index.html"]
    record = _record(host, B)
    assert "reuse_sealed_files" not in record and record["reuse_hashed_files"] >= 1
    _verify_clean(host, B)
    assert _leftovers(host) == []


def test_a_seal_row_with_an_unsafe_path_is_never_believed(
    host: Host, make_package: PackageFactory
) -> None:
    """Even with the state's projection forged to match, a row whose path leaves the release
    (``..``) is refused by the manifest's path rules: the seal is ignored."""
    op(host, "stage", make_package(A, files=FILES_A))
    outside = host.root / "outside.txt"
    outside.write_text("X" * len(FILES_B["VERSION"]))
    data = _forge_row(host, A, "index.html", "../../outside.txt", _sha(FILES_B["VERSION"]), outside)
    _write_state_seal(host, A, seal_projection([tuple(r) for r in data["files"]]))  # type: ignore[misc]
    op(host, "stage", make_package(B, files=FILES_B))
    assert (host.root / "releases" / B / "VERSION").read_text() == FILES_B["VERSION"]
    record = _record(host, B)
    assert "reuse_sealed_files" not in record and record["reuse_hashed_files"] >= 1
    _verify_clean(host, B)
    assert outside.read_text() == "X" * len(FILES_B["VERSION"])


def test_a_seal_the_state_does_not_record_is_never_believed(
    host: Host, make_package: PackageFactory
) -> None:
    """A seal written before the state recorded projections (or with its record edited away)
    is ignored: the next stage hashes every source, as without seals."""
    op(host, "stage", make_package(A, files=FILES_A))
    path = Layout(host.root).state_file
    state = json.loads(path.read_bytes())
    del state["releases"][A]["seal_sha256"]
    path.write_text(json.dumps(state))
    op(host, "stage", make_package(B, files=FILES_B))
    record = _record(host, B)
    assert "reuse_sealed_files" not in record
    assert record["reuse_hashed_files"] == len(FILES_A)
    _verify_clean(host, A, B)


def test_what_a_seal_is_not_trusted_against_a_rewritten_file_and_identity(
    host: Host, make_package: PackageFactory
) -> None:
    """The residual (docs/lifecycle.md §1.2): whoever writes as the agent's uid can rewrite an
    installed file and its seal row's identity (keeping path and SHA-256); a later stage then
    links that inode unhashed. Not detectable at staging; ``verify`` of the new release reports
    it (as it reports the rewritten file in the old one)."""
    op(host, "stage", make_package(A, files=FILES_A))
    victim = host.root / "releases" / A / "lib/app.php"
    evil = FILES_A["lib/app.php"].upper()
    victim.chmod(0o644)
    victim.write_text(evil)
    victim.chmod(0o444)
    _forge_row(host, A, "lib/app.php", "lib/app.php", _sha(FILES_A["lib/app.php"]), victim)
    op(host, "stage", make_package(B, files=FILES_B))
    for v in (A, B):
        answer = host.cli("verify", v)
        assert answer.returncode == 6, answer
        assert json.loads(answer.stdout)["error"] == "drift"
        assert f"{v}: lib/app.php: content differs from the manifest" in answer.stdout
