"""The extractor's contract beyond hostile input: what it writes, when it checks, what it
reports, and that it leaves no fd, thread or partial tree behind."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import tarfile
import threading
from pathlib import Path
from typing import Any

import pytest

from cutover.agent.errors import (
    ArchiveLimitError,
    DigestMismatchError,
    StorageError,
    UnsafeArchiveError,
)
from cutover.agent.extract import _source, checks
from cutover.agent.extract import extractor as archive
from cutover.agent.extract._io import MAX_OPEN_DIRS
from cutover.agent.extract.extractor import ExtractLimits, extract_payload, verify_payload_digest
from cutover.agent.package.container import open_package
from cutover.agent.package.manifest import parse_manifest
from tests.agent.conftest import Kit, Member, dir_, entries_for, reg, snapshot, sym

TREE = [
    dir_("app"),
    reg("app/Kernel.php", "<?php // kernel\n"),
    dir_("bin"),
    reg("bin/console", "#!/bin/sh\necho hi\n", mode=0o755),
    reg("empty.txt", ""),
    dir_("public", 0o750),
    reg("public/index.php", "<?php require '../app/Kernel.php';\n"),
    sym("public/app", "../app"),
    dir_("ro", 0o555),
    reg("ro/config.php", "<?php return [];\n", mode=0o444),
]


def _extract(kit: Kit, pkg: Path, **kw: Any) -> archive.ExtractStats:
    parts, fh = open_package(pkg)
    with fh:
        return extract_payload(fh, parts, parse_manifest(parts.manifest_bytes), kit.dest, **kw)


@pytest.mark.parametrize("compression", ["zstd", "gzip", "none"])
def test_extracts_files_dirs_symlinks_with_manifest_modes(kit: Kit, compression: str) -> None:
    stats = _extract(kit, kit.evil(TREE, compression=compression))

    tree = snapshot(kit.dest)
    assert tree["bin/console"][:2] == ("file", 0o755)
    assert tree["app/Kernel.php"][:2] == ("file", 0o644)
    assert tree["ro/config.php"][:2] == ("file", 0o444)
    assert tree["public"][:2] == ("dir", 0o750)
    assert tree["ro"][:2] == ("dir", 0o555)  # read-only, yet its file was written: modes come last
    assert tree["public/app"] == ("link", 0, "../app")
    assert (kit.dest / "public" / "index.php").read_text().startswith("<?php require")
    assert (kit.dest / "empty.txt").read_bytes() == b""
    assert stat.S_IMODE(kit.dest.stat().st_mode) == 0o755
    assert (stats.files, stats.dirs, stats.symlinks) == (5, 4, 1)
    assert stats.bytes == sum(len(m.data) for m in TREE)
    assert stats.seconds > 0


def test_progress_counts_payload_then_file_bytes(kit: Kit) -> None:
    pkg = kit.evil(TREE)
    parts, fh = open_package(pkg)
    manifest = parse_manifest(parts.manifest_bytes)
    seen: list[int] = []
    with fh:
        extract_payload(fh, parts, manifest, kit.dest, progress=seen.append)
    assert sum(seen) == manifest.payload.size + manifest.total_file_bytes()

    seen.clear()
    shutil.rmtree(kit.dest)
    parts, fh = open_package(pkg)
    with fh:
        verify_payload_digest(fh, parts, manifest)
        extract_payload(fh, parts, manifest, kit.dest, progress=seen.append, already_verified=True)
    assert sum(seen) == manifest.total_file_bytes()


def test_payload_digest_is_checked_before_anything_is_decompressed(
    kit: Kit, monkeypatch: pytest.MonkeyPatch
) -> None:
    pkg = kit.evil(TREE)
    parts, fh = open_package(pkg)
    fh.close()
    data = bytearray(pkg.read_bytes())
    data[parts.payload_offset + 10] ^= 1
    pkg.write_bytes(bytes(data))
    decoders: list[object] = []
    monkeypatch.setattr(archive, "_open_decoder", lambda *a: decoders.append(a))

    with pytest.raises(DigestMismatchError) as info:
        _extract(kit, pkg)
    assert info.value.code == "payload_digest"
    assert decoders == [] and not kit.dest.exists()


def test_already_verified_skips_the_second_digest_pass(
    kit: Kit, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(*_: object, **__: object) -> str:
        raise AssertionError("payload hashed twice")

    pkg = kit.evil(TREE)
    monkeypatch.setattr(checks, "hash_payload", refuse)  # the digest pass: agent/extract/checks.py
    assert _extract(kit, pkg, already_verified=True).files == 5


class _Recording:
    """A decoder input that records every byte the decompressor was fed."""

    def __init__(self, source: Any, fed: list[bytes]) -> None:
        self._source = source
        self._fed = fed

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        data = self._source.read(n)
        self._fed.append(bytes(data))
        return data


@pytest.mark.parametrize("compression", ["zstd", "gzip", "none"])
def test_a_tampered_chunk_is_refused_before_any_byte_of_it_is_decompressed(
    kit: Kit, monkeypatch: pytest.MonkeyPatch, compression: str
) -> None:
    kit.chunk_size = 65536
    blob = os.urandom(400_000)  # incompressible: the payload spans 7 chunks
    pkg = kit.evil([*TREE, reg("zz.bin", blob)], compression=compression)
    parts, fh = open_package(pkg)
    fh.close()
    data = bytearray(pkg.read_bytes())
    tampered = 3  # the fourth chunk
    data[parts.payload_offset + tampered * 65536 + 100] ^= 1
    pkg.write_bytes(bytes(data))
    payload = bytes(data[parts.payload_offset : parts.payload_offset + parts.payload_size])
    fed: list[bytes] = []
    real = archive._open_decoder
    monkeypatch.setattr(
        archive, "_open_decoder", lambda source, codec: real(_Recording(source, fed), codec)
    )
    before = snapshot(kit.tmp)

    with pytest.raises(DigestMismatchError) as info:
        _extract(kit, pkg)

    assert info.value.code == "chunk_digest" and "chunk 4 of 7" in str(info.value)
    got = b"".join(fed)
    assert got == payload[: len(got)]  # only signed bytes, in order
    assert len(got) <= tampered * 65536  # not one byte of the tampered chunk
    assert len(got) >= 65536  # earlier chunks were decoded: checked per chunk, no pre-pass
    assert not kit.dest.exists() and list(kit.incoming.iterdir()) == []
    assert snapshot(kit.tmp) == before


def test_chunked_payload_is_read_once_without_the_digest_pass(
    kit: Kit, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(*_: object, **__: object) -> str:
        raise AssertionError("the whole payload was hashed although it has chunks")

    kit.chunk_size = 65536
    pkg = kit.evil([*TREE, reg("zz.bin", os.urandom(200_000))])
    monkeypatch.setattr(checks, "hash_payload", refuse)
    seen: list[int] = []
    stats = _extract(kit, pkg, progress=seen.append)
    assert stats.files == 6 and (kit.dest / "zz.bin").stat().st_size == 200_000
    assert sum(seen) == stats.bytes  # file bytes only: no compressed bytes hashed first


def test_existing_dest_is_refused_and_left_alone(kit: Kit) -> None:
    kit.dest.mkdir()
    (kit.dest / "keep.txt").write_text("mine")
    with pytest.raises(StorageError) as info:
        _extract(kit, kit.evil(TREE))
    assert info.value.code == "dest_exists" and str(kit.dest) in str(info.value)
    assert (kit.dest / "keep.txt").read_text() == "mine"


def test_missing_parent_is_a_storage_error(kit: Kit) -> None:
    kit.dest = kit.tmp / "nope" / "release"
    with pytest.raises(StorageError) as info:
        _extract(kit, kit.evil(TREE))
    assert info.value.code == "no_parent"
    assert not (kit.tmp / "nope").exists()


@pytest.mark.parametrize("inline", [False, True], ids=["writer-thread", "inline"])
def test_large_files_across_chunks_on_both_write_paths(
    kit: Kit, monkeypatch: pytest.MonkeyPatch, inline: bool
) -> None:
    """Files bigger than a chunk stream through; a flipped last byte is caught whichever thread
    writes the file."""
    monkeypatch.setattr(archive._Writer, "busy", lambda self: inline)
    big = bytes(range(256)) * (12 * 1024)  # 3 MiB: spans several 1 MiB chunks
    members = [reg("a.bin", big), reg("b.bin", big[::-1]), reg("c.txt", "small")]
    _extract(kit, kit.evil(members))
    assert (kit.dest / "a.bin").read_bytes() == big
    assert (kit.dest / "b.bin").read_bytes() == big[::-1]
    shutil.rmtree(kit.dest)

    tampered = [reg("a.bin", big[:-1] + b"\x00"), members[1], members[2]]
    with pytest.raises(DigestMismatchError) as info:
        _extract(kit, kit.evil(tampered, entries_for(members)))
    assert info.value.code == "digest_mismatch" and "'a.bin'" in str(info.value)
    assert not kit.dest.exists()


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o277], ids=["022", "077", "277"])
@pytest.mark.parametrize("inline", [False, True], ids=["writer-thread", "inline"])
def test_files_get_their_manifest_modes_whatever_the_umask(
    kit: Kit, monkeypatch: pytest.MonkeyPatch, umask: int, inline: bool
) -> None:
    """A file is created with its mode only when the umask leaves it whole, else 0600 and then
    fchmod'ed: small and large files, on the writer thread or this one, end up as listed."""
    monkeypatch.setattr(archive._Writer, "busy", lambda self: inline)
    big = os.urandom(3 << 20)
    members = [
        *TREE,
        reg("big.bin", big),
        reg("bin/big-tool", big[::-1], mode=0o755),
        reg("ro/big.dat", big[: 1 << 20], mode=0o444),
    ]
    pkg = kit.evil(members)
    old = os.umask(umask)
    try:
        _extract(kit, pkg)
    finally:
        os.umask(old)
    tree = snapshot(kit.dest)
    for m in members:
        if m.type == tarfile.REGTYPE:
            assert tree[m.name][:2] == ("file", m.mode), m.name
            assert (kit.dest / m.name).read_bytes() == m.data
    assert tree["public"][:2] == ("dir", 0o750)


@pytest.mark.parametrize("compression", ["zstd", "gzip", "none"])
@pytest.mark.parametrize("block", [1000, 4096 + 7], ids=["1000", "4103"])
def test_headers_and_small_files_straddling_decompressed_blocks(
    kit: Kit, monkeypatch: pytest.MonkeyPatch, compression: str, block: int
) -> None:
    """Headers and small files are handed out as views of one decompressed block; with blocks
    that are not a multiple of 512 bytes, many straddle two, and each is still whole and checked
    (a flipped byte in the last file too)."""
    monkeypatch.setattr(_source, "BLOCK_BYTES", block)
    members = [reg(f"f{i:03}.txt", bytes([i % 251]) * (300 + 37 * i)) for i in range(120)]
    _extract(kit, kit.evil(members, compression=compression))
    for m in members:
        assert (kit.dest / m.name).read_bytes() == m.data
    shutil.rmtree(kit.dest)

    last = members[-1]
    tampered = [*members[:-1], reg(last.name, last.data[:-1] + b"\xff")]
    with pytest.raises(DigestMismatchError) as info:
        _extract(kit, kit.evil(tampered, entries_for(members), compression=compression))
    assert info.value.code == "digest_mismatch" and repr(last.name) in str(info.value)
    assert not kit.dest.exists()


def test_many_directories_beyond_the_fd_cache(kit: Kit) -> None:
    members: list[Member] = []
    for i in range(12):
        members.append(dir_(f"d{i:02}"))
        for j in range(12):
            members.append(dir_(f"d{i:02}/e{j:02}"))
            members.append(reg(f"d{i:02}/e{j:02}/f.txt", f"{i}-{j}"))
        members.append(reg(f"d{i:02}/z.txt", f"{i}"))  # back in the parent after 12 children
    assert len(members) > 2 * MAX_OPEN_DIRS
    _extract(kit, kit.evil(members))
    assert (kit.dest / "d11" / "e11" / "f.txt").read_text() == "11-11"
    assert (kit.dest / "d05" / "z.txt").read_text() == "5"


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.mark.parametrize("fail", [False, True], ids=["success", "failure"])
def test_no_fd_or_thread_is_left_behind(kit: Kit, fail: bool) -> None:
    members = [*TREE, reg("late.txt", "x" * 5000)]
    declared = entries_for(members)
    if fail:
        members = [*TREE, reg("../late.txt", "x" * 5000)]
    pkg = kit.evil(members, declared)
    fds, threads = _open_fds(), threading.active_count()
    if fail:
        with pytest.raises(UnsafeArchiveError):
            _extract(kit, pkg)
    else:
        _extract(kit, pkg)
    assert _open_fds() == fds
    assert threading.active_count() == threads


def test_per_entry_allowance_admits_chattier_tar_writers(kit: Kit) -> None:
    """A writer that adds harmless pax records to every entry needs the allowance."""
    members = [
        Member(m.name, m.data, m.type, m.mode, m.link, {"comment": "c" * 3000}) for m in TREE
    ]
    pkg = kit.evil(members)
    with pytest.raises(ArchiveLimitError) as info:
        _extract(kit, pkg)
    assert info.value.code == "too_many_bytes" and not kit.dest.exists()
    _extract(kit, pkg, limits=ExtractLimits(per_entry_allowance=4096))
    assert (kit.dest / "bin" / "console").exists()


def test_host_path_limit_applies_before_anything_is_written(kit: Kit) -> None:
    with pytest.raises(ArchiveLimitError) as info:
        _extract(kit, kit.evil(TREE), limits=ExtractLimits(max_path_bytes=10))
    assert info.value.code == "path_limit" and "app/Kernel.php" in str(info.value)
    assert not kit.dest.exists()


@pytest.mark.parametrize(
    "sizes",
    [[1 << 20] * 3, [4096] * 400],
    ids=["large-files-streamed", "small-files-created-whole"],
)
def test_disk_full_is_reported_and_nothing_is_kept(kit: Kit, sizes: list[int]) -> None:
    """Whichever thread hits ENOSPC (small files are created by the writer thread, large ones
    streamed to it), the error names the release and the partial tree is gone."""
    mnt = kit.tmp / "small"
    mnt.mkdir()
    mounted = (
        shutil.which("mount") is not None
        and subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)],
            capture_output=True,
            check=False,
        ).returncode
        == 0
    )
    if not mounted:
        pytest.skip("cannot mount a 1 MiB tmpfs here (needs root); disk-full path not exercised")
    try:
        kit.dest = mnt / "release"
        pkg = kit.evil([reg(f"f{i:03}.bin", os.urandom(n)) for i, n in enumerate(sizes)])
        with pytest.raises(StorageError) as info:
            _extract(kit, pkg)
        assert info.value.code == "disk_full"
        assert f"disk full on {kit.dest}" in str(info.value)
        assert os.listdir(mnt) == []
    finally:
        subprocess.run(["umount", str(mnt)], check=False)


def test_public_names() -> None:
    assert archive.__all__ == [
        "ExtractLimits",
        "ExtractStats",
        "extract_payload",
        "verify_payload_digest",
    ]
