"""Seals (issue 12, delta speed): a release staged without stage hooks records its files'
identities when it is sealed, and a later stage takes a file whose identity is unchanged without
hashing it; anything else is hashed as before (agent/host/seal.py, docs/lifecycle.md §1.2).

Real releases built and signed by our builder, staged by the real lifecycle; ``verify`` through
the real CLI. The counts of hashed and unhashed (sealed) sources in the release record prove
which path each file took.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest

from cutover.agent.errors import HealthCheckError
from cutover.agent.host.content import ContentIndex
from cutover.agent.host.layout import Layout
from cutover.agent.host.seal import _probe, _tick_after, seal_projection
from cutover.agent.host.state import StateFile
from tests.agent.test_lifecycle import health, hook, op
from tests.agent.test_reuse import FILES_A, FILES_B, SHARED
from tests.conftest import Host, PackageFactory

A, B, C = "1.0.0", "2.0.0", "3.0.0"
REUSED = len(SHARED) + 1  # with cutover.toml


def _seal(host: Host, version: str) -> Path:
    return host.root / ".cutover" / "manifests" / f"{version}.seal.json"


def _record(host: Host, version: str) -> dict[str, int]:
    content: dict[str, int] = host.state()["releases"][version]["content"]
    return content


def _verify_clean(host: Host, *versions: str) -> None:
    for version in versions:
        answer = host.cli_json("verify", version)
        assert answer["ok"] is True, answer


def _leftovers(host: Host) -> list[str]:
    meta = host.root / ".cutover"
    return sorted(os.listdir(meta / "incoming")) + sorted(os.listdir(meta / "trash"))


def test_a_sealed_file_is_linked_without_hashing(host: Host, make_package: PackageFactory) -> None:
    op(host, "stage", make_package(A, files=FILES_A))
    seal = json.loads(_seal(host, A).read_bytes())
    assert seal["format"] == "cutover.seal/1" and seal["version"] == A
    assert seal["manifest_sha256"] == host.state()["releases"][A]["manifest_digest"]
    assert {row[0] for row in seal["files"]} == {*FILES_A, "cutover.toml"}
    assert all(row[4] > 0 for row in seal["files"])  # every file sealed with its identity
    op(host, "stage", make_package(B, files=FILES_B))
    record = _record(host, B)
    assert record["hardlink_files"] == REUSED
    assert record["reuse_sealed_files"] == REUSED and "reuse_hashed_files" not in record
    assert record["reuse_sealed_bytes"] == record["hardlink_bytes"]
    for rel in SHARED:  # the very inode, not a copy
        a, b = (os.lstat(host.root / "releases" / v / rel) for v in (A, B))
        assert (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)
    _verify_clean(host, A, B)
    assert _leftovers(host) == []


@pytest.mark.parametrize("same_content", [False, True])
def test_a_file_changed_after_sealing_is_hashed_and_never_linked_unverified(
    host: Host, make_package: PackageFactory, same_content: bool
) -> None:
    """chmod u+w, rewrite with the same size, chmod back, even with the old mtime put back:
    its ctime differs from the seal, so it is hashed; different content is never linked (the
    new release takes the payload's bytes), the same content is linked after hashing."""
    op(host, "stage", make_package(A, files=FILES_A))
    victim = host.root / "releases" / A / "lib/app.php"
    before = victim.stat()
    data = FILES_A["lib/app.php"]
    victim.chmod(0o644)
    victim.write_text(data if same_content else data.upper())
    victim.chmod(0o444)
    os.utime(victim, ns=(before.st_atime_ns, before.st_mtime_ns))  # mtime is no proof
    after = victim.stat()
    assert (after.st_ino, after.st_size, after.st_mtime_ns) == (
        before.st_ino,
        before.st_size,
        before.st_mtime_ns,
    )
    assert after.st_ctime_ns != before.st_ctime_ns
    op(host, "stage", make_package(B, files=FILES_B))
    record = _record(host, B)
    new = host.root / "releases" / B / "lib/app.php"
    assert new.read_text() == data
    assert record["reuse_hashed_files"] == 1 and record["reuse_hashed_bytes"] == len(data)
    if same_content:
        assert new.stat().st_ino == victim.stat().st_ino  # hashed, right: linked
        assert record["hardlink_files"] == REUSED and record["payload_files"] == 1
        assert record["reuse_sealed_files"] == REUSED - 1
    else:
        assert new.stat().st_ino != victim.stat().st_ino  # drifted: from the payload
        assert record["hardlink_files"] == REUSED - 1 and record["payload_files"] == 2
        assert record["reuse_sealed_files"] == REUSED - 1
    _verify_clean(host, B)


def _corrupt(seal: Path) -> None:
    seal.write_bytes(seal.read_bytes()[:-40] + b"garbage")


def _foreign(seal: Path) -> None:
    os.chown(seal, 65534, 65534)


def _world_writable(seal: Path) -> None:
    seal.chmod(0o666)


def _other_manifest(seal: Path) -> None:
    data = json.loads(seal.read_bytes())
    data["manifest_sha256"] = "0" * 64
    seal.write_text(json.dumps(data))


def _forged_identity(seal: Path) -> None:
    data = json.loads(seal.read_bytes())
    for row in data["files"]:
        row[6] += 1  # a ctime the files do not have
    seal.write_text(json.dumps(data))


def _extra_key(seal: Path) -> None:
    data = json.loads(seal.read_bytes())
    data["trusted"] = True
    seal.write_text(json.dumps(data))


@pytest.mark.parametrize(
    "spoil",
    [_corrupt, _foreign, _world_writable, _other_manifest, _forged_identity, _extra_key],
    ids=["corrupt", "foreign-owned", "world-writable", "stale-manifest", "forged", "extra-key"],
)
def test_a_seal_that_cannot_be_believed_means_hash(
    host: Host, make_package: PackageFactory, spoil: object
) -> None:
    op(host, "stage", make_package(A, files=FILES_A))
    assert callable(spoil)
    spoil(_seal(host, A))
    op(host, "stage", make_package(B, files=FILES_B))
    record = _record(host, B)
    assert record["reuse_hashed_files"] == REUSED and "reuse_sealed_files" not in record
    assert record["hardlink_files"] == REUSED  # still reused, after hashing
    _verify_clean(host, A, B)
    assert _leftovers(host) == []


def test_a_release_directory_restored_from_a_copy_is_not_believed(
    host: Host, make_package: PackageFactory
) -> None:
    """A restore from backup (or a copy of the root): new inodes, a new directory; its seal is
    stale, and nothing is taken unhashed."""
    op(host, "stage", make_package(A, files=FILES_A))
    release = host.root / "releases" / A
    copy = host.root / "releases" / f"{A}.restored"
    shutil.copytree(release, copy, symlinks=True, copy_function=shutil.copy2)
    for d in (release, *[p for p in release.rglob("*") if p.is_dir()]):
        d.chmod(0o755)
    shutil.rmtree(release)
    copy.rename(release)
    op(host, "stage", make_package(B, files=FILES_B))
    record = _record(host, B)
    assert record["reuse_hashed_files"] == REUSED and "reuse_sealed_files" not in record
    _verify_clean(host, B)


def test_a_release_with_stage_hooks_is_not_sealed(host: Host, make_package: PackageFactory) -> None:
    """What a stage hook wrote was never checked: no seal, its files are hashed when reused."""
    op(host, "stage", make_package(A, files=FILES_A, toml=hook("stage", "warm", "true")))
    assert not _seal(host, A).exists()
    op(host, "stage", make_package(B, files=FILES_B))
    record = _record(host, B)
    shared = len(SHARED)  # not cutover.toml: A's declares the hook
    assert record["reuse_hashed_files"] == shared and "reuse_sealed_files" not in record
    assert _seal(host, B).exists()  # B itself has no hooks
    _verify_clean(host, A, B)


@pytest.mark.parametrize("how", ["delete", "prune"])
def test_a_removed_release_is_never_offered(
    host: Host, make_package: PackageFactory, how: str
) -> None:
    only_a = {**FILES_A, "legacy.txt": "only in A\n" * 20}
    op(host, "stage", make_package(A, files=only_a))
    op(host, "stage", make_package(B, files=FILES_B))
    if how == "delete":
        op(host, "delete", A)
    else:
        host.config.write_text(host.config.read_text().replace("keep = 5", "keep = 1"))
        op(host, "activate", B)
        op(host, "prune")
    assert not (host.root / "releases" / A).exists() and not _seal(host, A).exists()
    layout = Layout(host.root)
    index = ContentIndex.build(layout, StateFile(layout.state_file, host.app).load()).read_all()
    versions = {s.version for d in index._by_digest for s in index.sources(d)}
    assert versions == {B}
    op(host, "stage", make_package(C, files={**FILES_B, "legacy.txt": only_a["legacy.txt"]}))
    record = _record(host, C)
    assert record["payload_files"] == 1  # legacy.txt: only the removed release had it
    assert (host.root / "releases" / C / "legacy.txt").read_text() == only_a["legacy.txt"]
    _verify_clean(host, B, C)


def test_the_probe_waits_until_the_clock_has_moved_past_every_change(tmp_path: Path) -> None:
    layout = Layout(tmp_path / "root")
    layout.create()
    changed = tmp_path / "root" / "releases" / "f"
    changed.write_text("x")
    fd, probe = _probe(layout)
    try:
        cut = _tick_after(fd)
    finally:
        os.close(fd)
        probe.unlink()
    assert cut is not None and changed.stat().st_ctime_ns < cut
    changed.write_text("y")  # any later change is at or after the cut
    assert changed.stat().st_ctime_ns >= cut


@pytest.mark.parametrize("how", ["delete", "failed-stage", "prune-oldest"])
def test_removing_a_release_that_shares_inodes_keeps_the_other_seals_fresh(
    host: Host, make_package: PackageFactory, how: str
) -> None:
    """Linking or unlinking a shared inode's name sets its ctime: the removal refreshes the seals
    of the releases that keep it, so the next stage still takes those files unhashed. Pruning the
    oldest release after an activation is the steady state of ``keep``."""
    op(host, "stage", make_package(A, files=FILES_A))
    if how == "prune-oldest":
        op(host, "stage", make_package(B, files=FILES_B))
        host.config.write_text(host.config.read_text().replace("keep = 5", "keep = 1"))
        op(host, "activate", B)
        op(host, "prune")
        assert not (host.root / "releases" / A).exists() and _leftovers(host) == []
        op(host, "stage", make_package(C, files=FILES_A))
        record = _record(host, C)
        assert record["reuse_sealed_files"] == REUSED and "reuse_hashed_files" not in record
        _verify_clean(host, B, C)
        return
    if how == "delete":
        op(host, "stage", make_package(B, files=FILES_B))
        op(host, "delete", B)  # B's tree shared A's inodes
    else:
        failing = health("staged", {"type": "command", "name": "no", "argv": ["false"]})
        with pytest.raises(HealthCheckError):
            op(host, "stage", make_package(B, files=FILES_B, toml=failing))
    assert not (host.root / "releases" / B).exists() and _leftovers(host) == []
    for rel in SHARED:
        assert (host.root / "releases" / A / rel).stat().st_nlink == 1
    op(host, "stage", make_package(C, files=FILES_B))
    record = _record(host, C)
    assert record["reuse_sealed_files"] == REUSED and "reuse_hashed_files" not in record
    _verify_clean(host, A, C)


def test_a_file_written_after_its_seal_was_refreshed_is_still_hashed(
    host: Host, make_package: PackageFactory
) -> None:
    op(host, "stage", make_package(A, files=FILES_A))
    op(host, "stage", make_package(B, files=FILES_B))
    op(host, "delete", B)
    victim = host.root / "releases" / A / "lib/app.php"
    victim.chmod(0o644)
    victim.write_text(FILES_A["lib/app.php"].upper())
    victim.chmod(0o444)
    op(host, "stage", make_package(C, files=FILES_B))
    record = _record(host, C)
    assert record["reuse_hashed_files"] == 1 and record["payload_files"] == 2
    assert (host.root / "releases" / C / "lib/app.php").read_text() == FILES_A["lib/app.php"]
    _verify_clean(host, C)


@pytest.mark.parametrize(
    "path",
    [
        "a/b.php",
        "é/ü",
        "日本/語",
        'a"b',
        "a\u2028b",
        "a\x85b",
        "emoji😀",
        "a\x7fb",
        "t\tx",
        "\ud800",
    ],
)
def test_the_projection_hashes_the_bytes_json_dumps_writes(path: str) -> None:
    """seal_projection serialises with pydantic-core (or json.dumps, for what it refuses):
    the digest is the one of json.dumps' bytes either way, so records written before agree."""
    rows = [(path, "0" * 64, 12, 0o644, 3, 4, 5), ("x", "f" * 64, 0, 0o755, 0, 0, 0)]
    text = json.dumps([r[:4] for r in rows], separators=(",", ":"), ensure_ascii=False)
    want = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()
    assert seal_projection(rows) == want
