"""Build → sign → inspect → verify → extract reproduces the app tree, and builds are reproducible.

The tree is the realistic PHP-app corpus from ../shared/bench/make_corpus.py (vendor/, hashed
assets, executable scripts, relative symlinks, a shared ``storage/`` the package must not ship).
"""

from __future__ import annotations

import hashlib
import os
import stat
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest

from cutover.agent.extract.extractor import extract_payload
from cutover.agent.keys import PrivateKey, generate_keypair
from cutover.agent.package.container import PackageParts, open_package
from cutover.agent.trust.policy import HostHistory, TrustPolicy, VerifiedRelease, verify_release
from cutover.controller.build import build_package, inspect_package, sign_package
from tests.agent.conftest import NOW, Tree, snapshot

# shared/ sits beside the repository (on developer machines and in CI).
MAKE_CORPUS = Path(__file__).resolve().parents[3] / "shared" / "bench" / "make_corpus.py"
CREATED = datetime(2026, 3, 7, 12, 0, tzinfo=UTC)
TOML = 'app = "ame"\n\n[shared]\ndirs = ["storage"]\n'


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not MAKE_CORPUS.exists():
        pytest.skip(f"{MAKE_CORPUS} is missing: the round trip needs the shared corpus generator")
    out = tmp_path_factory.mktemp("corpus") / "ame"
    args = ["--files", "400", "--total-mb", "5", "--seed", "1"]
    subprocess.run(
        [sys.executable, str(MAKE_CORPUS), str(out), *args],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    (out / "cutover.toml").write_text(TOML)
    return out


def _verified(parts: PackageParts, key: PrivateKey, version: str) -> VerifiedRelease:
    """The agent's verification of a package signed by ``key`` alone."""
    return verify_release(
        parts.manifest_bytes,
        parts.signatures_bytes,
        TrustPolicy("ame", {key.keyid: key.public}),
        expected_version=version,
        history=HostHistory(),
        now=NOW,
    )


@pytest.fixture
def key(tmp_path: Path) -> PrivateKey:
    return generate_keypair(tmp_path / "release")


def expected_tree(src: Path, skip: set[str]) -> Tree:
    """What a release of ``src`` must contain: modes normalised as the builder ships them."""
    out: Tree = {}
    for rel, (kind, mode, digest) in snapshot(src).items():
        if rel.split("/")[0] in skip:
            continue
        if kind == "file":
            mode = 0o755 if mode & stat.S_IXUSR else 0o644
        elif kind == "dir":
            mode = 0o755
        out[rel] = (kind, mode, digest)
    return out


def test_round_trip_reproduces_the_tree(corpus: Path, tmp_path: Path, key: PrivateKey) -> None:
    pkg = tmp_path / "ame-1.0.0.cutover"
    build_package(corpus, pkg, version="1.0.0", created_at=CREATED)
    sign_package(pkg, key)

    found = inspect_package(pkg, {key.keyid: key.public})  # `cutover inspect --trust`
    manifest = found.manifest
    assert found.payload_matches and found.signers == [key.keyid] and manifest.app == "ame"
    assert found.verdicts == {key.keyid: "valid"}

    parts, fh = open_package(pkg)
    with fh:
        verified = _verified(parts, key, "1.0.0")
        dest = tmp_path / "incoming" / "1.0.0"
        dest.parent.mkdir()
        stats = extract_payload(fh, parts, verified.manifest, dest)

    got = snapshot(dest)
    want = expected_tree(corpus, skip={"storage"})
    assert got == want
    assert got["public/storage"] == ("link", 0, "../storage/app/public")  # resolved once linked
    assert any(mode == 0o755 for kind, mode, _ in got.values() if kind == "file")
    assert stat.S_IMODE(dest.stat().st_mode) == 0o755
    kinds = [kind for kind, _, _ in got.values()]
    assert (stats.files, stats.dirs, stats.symlinks) == (
        kinds.count("file"),
        kinds.count("dir"),
        kinds.count("link"),
    )
    assert stats.bytes == manifest.total_file_bytes() > 2_000_000


def test_two_builds_are_byte_identical(
    corpus: Path, tmp_path: Path, key: PrivateKey, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SOURCE_DATE_EPOCH", str(int(CREATED.timestamp())))
    a, b = tmp_path / "a.cutover", tmp_path / "b.cutover"
    build_package(corpus, a, version="1.0.0")
    os.utime(corpus / "cutover.toml", (1, 1))  # mtimes never reach the package
    build_package(corpus, b, version="1.0.0")
    assert hashlib.sha256(a.read_bytes()).digest() == hashlib.sha256(b.read_bytes()).digest()
    sign_package(a, key)
    sign_package(b, key)  # Ed25519 is deterministic: signed packages match too
    assert a.read_bytes() == b.read_bytes()

    c = tmp_path / "c.cutover"
    build_package(corpus, c, version="1.0.0", created_at=datetime(2026, 3, 8, tzinfo=UTC))
    assert c.read_bytes() != b.read_bytes()  # the check above can fail


@pytest.mark.parametrize("compression", ["gzip", "none"])
def test_other_codecs_round_trip(tmp_path: Path, key: PrivateKey, compression: str) -> None:
    src = tmp_path / "src"
    long_dir = "vendor/" + "d" * 90 + "/" + "e" * 90
    (src / long_dir).mkdir(parents=True)
    (src / long_dir / ("f" * 120 + ".php")).write_text("<?php // long name, via pax\n")
    (src / "résumé-ünïcode.txt").write_text("non-ASCII names travel in pax headers\n")
    (src / "run.sh").write_text("#!/bin/sh\n")
    (src / "run.sh").chmod(0o755)
    (src / "latest").symlink_to("run.sh")
    (src / "cutover.toml").write_text('app = "ame"\n')
    pkg = tmp_path / "p.cutover"
    build_package(src, pkg, version="2.0.0", created_at=CREATED, compression=compression)
    sign_package(pkg, key)
    parts, fh = open_package(pkg)
    with fh:
        verified = _verified(parts, key, "2.0.0")
        assert parts.payload_compression == compression
        extract_payload(fh, parts, verified.manifest, tmp_path / "out")
    assert snapshot(tmp_path / "out") == expected_tree(src, skip=set())


# sha256 of this tree's package as built by the earlier builder (stdlib tar in pax format, the
# layout agent/package/ustar.py reproduces). Uncompressed, so no codec version is involved.
GOLDEN_UNCOMPRESSED = "88ab530c5e507003894e2932ebfecefbd39bc4cdbb76c82c8687f19c99e5414d"
# The same with payload.chunks (the default since the builder records chunk digests).
GOLDEN_CHUNKED = "26f4ab240fa3ac2d68ec9aab05dd46241123b90176bb53b58c60e576dacdd0fe"


def test_package_bytes_are_stable_across_builder_versions(tmp_path: Path) -> None:
    """A rebuild of the same tree and metadata gives the same bytes as the previous builder did,
    long names, non-ASCII names and long link targets (pax records) included: a host that
    staged the old build accepts the rebuild as the same version (no immutability conflict)."""
    src = tmp_path / "src"
    long_dir = src / "vendor" / ("d" * 90) / ("e" * 90)
    long_dir.mkdir(parents=True)
    (long_dir / ("f" * 120 + ".php")).write_text("<?php // long\n")
    (src / "résumé-ünïcode.txt").write_text("hi\n")
    (src / "run.sh").write_text("#!/bin/sh\n")
    (src / "run.sh").chmod(0o755)
    (src / "latest").symlink_to("run.sh")
    (src / "a" / "b").mkdir(parents=True)
    (src / "a" / "b" / "longlink").symlink_to("../" + "x" * 120)
    (src / ("x" * 120)).touch()
    (src / ("p" * 99)).mkdir()  # with its trailing slash, exactly 100 bytes: no pax record
    (src / "cutover.toml").write_text('app = "ame"\n')
    pkg = tmp_path / "p.cutover"
    build_package(src, pkg, version="1.0.0", created_at=CREATED, compression="none", chunks=False)
    assert hashlib.sha256(pkg.read_bytes()).hexdigest() == GOLDEN_UNCOMPRESSED
    chunked = tmp_path / "chunked.cutover"
    build_package(src, chunked, version="1.0.0", created_at=CREATED, compression="none")
    assert hashlib.sha256(chunked.read_bytes()).hexdigest() == GOLDEN_CHUNKED
