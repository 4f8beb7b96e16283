"""The package writer (agent/package/writer.py): what it writes, the agent reads back, entry by
entry, with real keys and real extraction; its tar size is the extractor's exact byte cap."""

from __future__ import annotations

import hashlib
import io
import os
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest
import zstandard

from cutover.agent.errors import ArchiveLimitError, ConfigError, ManifestError
from cutover.agent.extract import ExtractLimits, extract_payload
from cutover.agent.keys import PrivateKey, generate_keypair
from cutover.agent.package.container import open_package
from cutover.agent.package.manifest import (
    DirEntry,
    FileEntry,
    Manifest,
    Payload,
    PayloadChunks,
    SymlinkEntry,
    parse_manifest,
    render_manifest,
)
from cutover.agent.package.signatures import (
    SignatureEntry,
    parse_signatures,
    render_signatures,
)
from cutover.agent.package.writer import (
    CHUNK_BYTES,
    PayloadWriter,
    add_signature,
    tar_size,
    write_package_file,
)
from cutover.agent.trust.policy import HostHistory, TrustPolicy, verify_release
from tests.agent.conftest import NOW, snapshot

Entry = FileEntry | SymlinkEntry | DirEntry
LONG_DIR = "vendor/" + "d" * 99  # 106 bytes: the name travels in a pax record
EXACT_100 = "n" * 100  # fits the ustar name field exactly
# (path, kind, data or link target, executable): every kind, and names that need pax
TREE: list[tuple[str, str, str, bool]] = sorted(
    [
        ("bin", "dir", "", False),
        ("bin/console", "file", "#!/bin/sh\necho hi\n", True),
        ("empty.txt", "file", "", False),
        ("latest", "link", "bin/console", False),
        (EXACT_100, "file", "exactly one hundred bytes of name\n", False),
        ("public", "dir", "", False),
        ("public/" + "p" * 120 + ".php", "file", "<?php // long name\n", False),
        ("public/index.php", "file", "<?php echo 1;\n" * 100, False),
        ("public/up", "link", "../" + "n" * 100, False),
        ("résumé.txt", "file", "non-ASCII name\n", False),
        ("vendor", "dir", "", False),
        (LONG_DIR, "dir", "", False),
        (LONG_DIR + "/autoload.php", "file", "<?php\n", False),
    ]
)


def _chunk_digests(data: bytes, size: int) -> list[str]:
    return [hashlib.sha256(data[i : i + size]).hexdigest() for i in range(0, len(data), size)]


def _payload(
    compression: str, tree: list[tuple[str, str, str, bool]] = TREE
) -> tuple[bytes, list[Entry], Payload]:
    out = io.BytesIO()
    writer = PayloadWriter(out, compression)
    entries: list[Entry] = []
    for path, kind, data, executable in tree:
        if kind == "dir":
            entries.append(writer.add_dir(path))
        elif kind == "link":
            entries.append(writer.add_symlink(path, data))
        else:
            raw = data.encode()
            entries.append(writer.add_file(path, io.BytesIO(raw), len(raw), executable=executable))
    described = writer.finish()
    return out.getvalue(), entries, described


def _manifest(entries: list[Entry], payload: Payload, version: str = "1.0.0") -> Manifest:
    return Manifest(
        format=1,
        app="ame",
        version=version,
        created_at=datetime(2026, 3, 7, 12, tzinfo=UTC),
        payload=payload,
        files=entries,
    )


@pytest.fixture
def key(tmp_path: Path) -> PrivateKey:
    return generate_keypair(tmp_path / "release")


def _sign(key: PrivateKey) -> Callable[[bytes], SignatureEntry]:
    return lambda data: SignatureEntry.of(key.keyid, key.sign(data))


@pytest.mark.parametrize("compression", ["zstd", "gzip", "none"])
def test_every_entry_kind_reads_back_through_the_agent(
    tmp_path: Path, key: PrivateKey, compression: str
) -> None:
    payload, entries, described = _payload(compression)
    assert described == Payload(
        sha256=hashlib.sha256(payload).hexdigest(),
        size=len(payload),
        compression=compression,
        chunks=PayloadChunks(size=CHUNK_BYTES, sha256=_chunk_digests(payload, CHUNK_BYTES)),
    )
    manifest = _manifest(entries, described)
    pkg = tmp_path / "ame-1.0.0.cutover"
    written = write_package_file(pkg, manifest, [], io.BytesIO(payload))
    assert written == render_manifest(manifest) and parse_manifest(written) == manifest
    assert add_signature(pkg, _sign(key))[0].keyid == key.keyid

    parts, fh = open_package(pkg)
    with fh:
        verified = verify_release(
            parts.manifest_bytes,
            parts.signatures_bytes,
            TrustPolicy("ame", {key.keyid: key.public}),
            expected_version="1.0.0",
            history=HostHistory(),
            now=NOW,
        )
        assert verified.manifest == manifest
        dest = tmp_path / "incoming" / "release"
        dest.parent.mkdir()
        stats = extract_payload(fh, parts, verified.manifest, dest)

    got = snapshot(dest)
    for path, kind, data, executable in TREE:
        if kind == "dir":
            assert got[path] == ("dir", 0o755, "")
        elif kind == "link":
            assert got[path] == ("link", 0, data)
        else:
            mode = 0o755 if executable else 0o644
            assert got[path] == ("file", mode, hashlib.sha256(data.encode()).hexdigest())
    assert len(got) == len(TREE)
    kinds = [kind for _, kind, _, _ in TREE]
    assert (stats.files, stats.dirs, stats.symlinks) == (
        kinds.count("file"),
        kinds.count("dir"),
        kinds.count("link"),
    )
    assert sorted(os.listdir(tmp_path)) == [
        "ame-1.0.0.cutover",
        "incoming",
        "release",
        "release.pub",
    ]


def test_tar_size_is_exactly_what_the_writer_emits() -> None:
    """The extractor's byte cap is derived from this, so it must not guess."""
    tar, entries, _ = _payload("none")
    assert len(tar) == tar_size(entries)
    # the allowance counts per entry, before the record padding
    assert tar_size(entries, per_entry_allowance=10240) >= len(tar) + 10240 * (len(entries) - 1)


def test_a_record_beyond_the_writers_size_is_refused(tmp_path: Path, key: PrivateKey) -> None:
    """The cap is exact: the writer's own stream plus one more tar record of zeros is a bomb."""
    tar, entries, _ = _payload("none")
    grown = zstandard.ZstdCompressor().compress(tar + bytes(10240))
    payload = Payload(sha256=hashlib.sha256(grown).hexdigest(), size=len(grown), compression="zstd")
    pkg = tmp_path / "p.cutover"
    write_package_file(pkg, _manifest(entries, payload), [], io.BytesIO(grown))
    parts, fh = open_package(pkg)
    dest = tmp_path / "incoming" / "release"
    dest.parent.mkdir()
    with fh, pytest.raises(ArchiveLimitError) as info:
        extract_payload(fh, parts, parse_manifest(parts.manifest_bytes), dest)
    assert info.value.code == "too_many_bytes"
    assert os.listdir(dest.parent) == []

    parts, fh = open_package(pkg)  # the allowance for other tar writers admits it
    with fh:
        limits = ExtractLimits(per_entry_allowance=10240 // len(entries) + 1)
        extract_payload(fh, parts, parse_manifest(parts.manifest_bytes), dest, limits=limits)
    assert (dest / "bin" / "console").exists()


@pytest.mark.parametrize(
    "paths",
    [["b", "a"], ["a", "a"], ["a/b", "a"]],
    ids=["descending", "repeated", "child-first"],
)
def test_entries_out_of_order_are_refused(paths: list[str]) -> None:
    out = io.BytesIO()
    writer = PayloadWriter(out, "none")
    writer.add_dir(paths[0])
    written = out.getvalue()
    with pytest.raises(ManifestError) as info:
        writer.add_dir(paths[1])
    assert "strictly increasing path order" in str(info.value)
    assert out.getvalue() == written  # nothing of the refused entry was written


@pytest.mark.parametrize("actual", [b"shorter", b"longer than announced!"], ids=["short", "long"])
def test_a_file_that_changes_size_is_refused(actual: bytes) -> None:
    writer = PayloadWriter(io.BytesIO(), "zstd")
    with pytest.raises(ManifestError) as info:
        writer.add_file("f.txt", io.BytesIO(actual), 12, executable=False)
    assert "changed size" in str(info.value)


def test_unknown_compression_is_a_config_error() -> None:
    with pytest.raises(ConfigError):
        PayloadWriter(io.BytesIO(), "xz")


def test_writes_are_deterministic() -> None:
    assert _payload("zstd")[0] == _payload("zstd")[0]
    assert _payload("gzip")[0] == _payload("gzip")[0]


def test_add_signature_changes_only_the_signatures(tmp_path: Path, key: PrivateKey) -> None:
    payload, entries, described = _payload("zstd")
    pkg = tmp_path / "p.cutover"
    write_package_file(pkg, _manifest(entries, described), [], io.BytesIO(payload))
    before, fh = open_package(pkg)
    fh.close()
    other = generate_keypair(tmp_path / "other")
    add_signature(pkg, _sign(key))
    add_signature(pkg, _sign(other))
    entries_after = add_signature(pkg, _sign(key))  # re-sign: replaced

    parts, fh = open_package(pkg)
    with fh:
        fh.seek(parts.payload_offset)
        assert fh.read(parts.payload_size) == payload
    assert parts.manifest_bytes == before.manifest_bytes
    sigs = parse_signatures(parts.signatures_bytes)
    assert [s.keyid for s in sigs] == sorted([key.keyid, other.keyid])
    assert sigs == entries_after
    assert parts.signatures_bytes == render_signatures(sigs)
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]


def test_signatures_render_sorted_and_refuse_a_key_twice(key: PrivateKey) -> None:
    a = SignatureEntry.of("a" * 64, b"\x01" * 64)
    b = SignatureEntry.of("b" * 64, b"\x02" * 64)
    assert render_signatures([]) == b"[]\n"
    data = render_signatures([b, a])
    assert parse_signatures(data) == [a, b]
    assert a.signature() == b"\x01" * 64
    with pytest.raises(ManifestError):
        render_signatures([a, a])


@pytest.mark.parametrize(
    "extra",
    [
        pytest.param(0, id="one-short-chunk"),
        pytest.param(CHUNK_BYTES, id="several-chunks"),
        pytest.param(3 * CHUNK_BYTES - 3 * 512 - 10240, id="near-a-boundary"),
    ],
)
def test_chunk_digests_cover_the_compressed_payload_exactly(extra: int) -> None:
    """payload.chunks: one SHA-256 per CHUNK_BYTES of the compressed bytes, the last shorter."""
    blob = os.urandom(extra)  # incompressible, so the payload spans several chunks
    tree = [*TREE, ("zz.bin", "file", "", False)]
    out = io.BytesIO()
    writer = PayloadWriter(out, "none")
    for path, kind, data, executable in tree:
        if kind == "dir":
            writer.add_dir(path)
        elif kind == "link":
            writer.add_symlink(path, data)
        else:
            raw = blob if path == "zz.bin" else data.encode()
            writer.add_file(path, io.BytesIO(raw), len(raw), executable=executable)
    described = writer.finish()
    payload = out.getvalue()
    assert described.chunks is not None and described.chunks.size == CHUNK_BYTES
    assert described.chunks.sha256 == _chunk_digests(payload, CHUNK_BYTES)
    assert len(described.chunks.sha256) == -(-len(payload) // CHUNK_BYTES)
