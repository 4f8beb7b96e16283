"""Thin payloads (issue 12 item 2): a delta upload (``delta.json`` + a payload of only the files
the host lacks) and a thin package (``cutover build --base``) stage to exactly the tree a full
package gives, trusted no further than the signed manifest (docs/security-model.md, "Thin
payloads").

The trees are the realistic corpus of ../shared/bench/make_corpus.py and its next release
(``--mutate-from``); packages are built and signed by our builder; the agent is the real CLI (for
rejections) or the real lifecycle in-process (set-up). Every rejection asserts that nothing
changed: ``current``, ``releases/``, the state file, ``incoming/``, ``trash/``.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cutover.agent.keys import PrivateKey
from cutover.agent.package.container import open_package, write_package
from cutover.agent.package.delta import DeltaPayload, DeltaSpec, render_delta
from cutover.agent.package.manifest import FileEntry, Manifest, parse_manifest
from cutover.agent.package.writer import PayloadWriter
from cutover.controller.build import build_package, sign_package
from cutover.controller.delta import make_delta_container
from tests.agent.conftest import lacking, snapshot
from tests.agent.test_lifecycle import op
from tests.conftest import Host

MAKE_CORPUS = Path(__file__).resolve().parents[3] / "shared" / "bench" / "make_corpus.py"
A, B = "1.0.0", "2.0.0"


@pytest.fixture(scope="module")
def trees(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A 400-file corpus and its next release (5 % edited, files added, renamed, deleted)."""
    if not MAKE_CORPUS.exists():
        pytest.skip(f"{MAKE_CORPUS} is missing: these tests need the shared corpus generator")
    base = tmp_path_factory.mktemp("corpus")
    a, b = base / "a", base / "b"
    run = [sys.executable, str(MAKE_CORPUS)]
    for args in ([str(a), "--files", "400", "--total-mb", "4"], [str(b), "--mutate-from", str(a)]):
        subprocess.run([*run, *args], check=True, stdout=subprocess.DEVNULL)
    for tree in (a, b):
        (tree / "cutover.toml").write_text('app = "demo"\n')
    return a, b


def _package(
    tree: Path, out: Path, version: str, key: PrivateKey, base: Path | None = None
) -> Path:
    build_package(tree, out, version=version, base=base)
    sign_package(out, key)
    return out


@pytest.fixture
def pkgs(trees: tuple[Path, Path], tmp_path: Path, release_key: PrivateKey) -> dict[str, Path]:
    (tmp_path / "packages").mkdir()
    a = _package(trees[0], tmp_path / "packages" / "a.cutover", A, release_key)
    b = _package(trees[1], tmp_path / "packages" / "b.cutover", B, release_key)
    return {A: a, B: b}


def _second_host(host: Host) -> Host:
    """Another app root with the same trust, for the full stage to compare with."""
    tmp = host.tmp / "other"
    h = Host(root=tmp / "srv" / "demo", config=tmp / "etc" / "agent.toml", app="demo", tmp=tmp)
    pub = str(host.tmp / "keys" / "release.pub")
    h.cli_json("init", "--app", "demo", "--root", str(h.root), "--trust-release-key", pub)
    return h


def _manifest(pkg: Path) -> Manifest:
    parts, fh = open_package(pkg)
    fh.close()
    return parse_manifest(parts.manifest_bytes)


def test_a_delta_stage_of_a_mutated_corpus_equals_a_full_stage(
    host: Host, pkgs: dict[str, Path], tmp_path: Path
) -> None:
    op(host, "stage", pkgs[A])
    missing = lacking(host, pkgs[B])
    parts, fh = open_package(pkgs[B])
    fh.close()
    manifest = parse_manifest(parts.manifest_bytes)
    files = [e for e in manifest.files if isinstance(e, FileEntry)]
    assert 0 < len(missing) < len(files) // 4  # most of the next release is on the host
    delta = make_delta_container(pkgs[B], missing, tmp_path / "b.delta.cutover")
    assert delta.size < pkgs[B].stat().st_size // 4
    result = op(host, "stage", delta.path)
    content = result.details["content"]
    assert content["payload_files"] == delta.files
    assert content["payload_files"] + content["hardlink_files"] == len(files)

    other = _second_host(host)
    op(other, "stage", pkgs[A])
    op(other, "stage", pkgs[B])
    assert snapshot(host.root / "releases" / B) == snapshot(other.root / "releases" / B)
    assert host.cli_json("verify", B)["ok"] is True
    assert host.cli_json("verify", A)["ok"] is True
    assert os.listdir(host.root / ".cutover" / "incoming") == []


def test_a_thin_package_from_build_base_stages_like_the_full_one(
    host: Host,
    pkgs: dict[str, Path],
    trees: tuple[Path, Path],
    tmp_path: Path,
    release_key: PrivateKey,
) -> None:
    thin = _package(trees[1], tmp_path / "thin.cutover", B, release_key, base=pkgs[A])
    parts, fh = open_package(thin)
    fh.close()
    manifest = parse_manifest(parts.manifest_bytes)
    full = _manifest(pkgs[B])
    assert manifest.payload.base == A and manifest.files == full.files  # the whole tree, signed
    assert parts.payload_size < full.payload.size // 4
    op(host, "stage", pkgs[A])
    op(host, "stage", thin)
    other = _second_host(host)
    op(other, "stage", pkgs[A])
    op(other, "stage", pkgs[B])
    assert snapshot(host.root / "releases" / B) == snapshot(other.root / "releases" / B)
    assert host.cli_json("verify", B)["ok"] is True


def test_a_thin_package_whose_base_files_the_host_lacks_is_refused_naming_them(
    host: Host,
    pkgs: dict[str, Path],
    trees: tuple[Path, Path],
    tmp_path: Path,
    release_key: PrivateKey,
) -> None:
    thin = _package(trees[1], tmp_path / "thin.cutover", B, release_key, base=pkgs[A])
    before = host.snapshot()  # an empty host: it holds none of 1.0.0's files
    proc = host.cli("stage", str(thin))
    assert proc.returncode == 3, proc.stdout
    answer = json.loads(proc.stdout)
    assert answer["error"] == "base_missing"
    message = answer["message"]
    assert "files that this host does not hold (from base 1.0.0" in message
    assert " more; push the full package" in message and "--no-delta" in message
    assert message.count("', '") == 19  # the first 20 paths, then a count
    assert host.snapshot() == before


def _delta_with(pkg: Path, out: Path, members: list[tuple[str, bytes, int]]) -> Path:
    """A delta container of ``pkg`` whose thin payload holds exactly ``members`` (path, data,
    mode), with a ``delta.json`` that describes it truthfully: what a tamperer controls."""
    parts, fh = open_package(pkg)
    with fh, (out.parent / "thin.tar.zst").open("w+b") as thin:
        writer = PayloadWriter(thin, "zstd")
        for path, data, mode in members:
            src = out.parent / "member"
            src.write_bytes(data)
            with src.open("rb") as f:
                writer.add_file(path, f, len(data), executable=bool(mode & 0o100))
        payload = writer.finish()
        spec = DeltaSpec(
            format=1, payload=DeltaPayload(**payload.model_dump(exclude={"base", "chunks"}))
        )
        thin.seek(0)
        with out.open("wb") as dst:
            write_package(
                dst,
                parts.manifest_bytes,
                parts.signatures_bytes,
                thin,
                payload.size,
                "zstd",
                delta_bytes=render_delta(spec),
            )
    return out


def _changed(host: Host, pkg: Path) -> FileEntry:
    """A file of ``pkg`` the host lacks (so a thin payload must carry it)."""
    missing = set(lacking(host, pkg))
    manifest = _manifest(pkg)
    return next(e for e in manifest.files if isinstance(e, FileEntry) and e.sha256 in missing)


def test_a_tampered_thin_payload_is_rejected(
    host: Host, pkgs: dict[str, Path], tmp_path: Path
) -> None:
    """The tamperer rewrites a file the host lacks (same size) and a truthful delta.json: the
    per-file digest of the signed manifest still refuses it."""
    op(host, "stage", pkgs[A])
    entry = _changed(host, pkgs[B])
    evil = bytes(entry.size) if entry.size else b"x"
    pkg = _delta_with(pkgs[B], tmp_path / "evil.cutover", [(entry.path, evil, entry.mode)])
    before = host.snapshot()
    proc = host.cli("stage", str(pkg))
    assert proc.returncode == 3, proc.stdout
    assert json.loads(proc.stdout)["error"] in ("digest_mismatch", "size_mismatch")
    assert host.snapshot() == before


def test_thin_payload_bytes_changed_in_transit_are_rejected(
    host: Host, pkgs: dict[str, Path], tmp_path: Path
) -> None:
    op(host, "stage", pkgs[A])
    delta = make_delta_container(pkgs[B], lacking(host, pkgs[B]), tmp_path / "d.cutover")
    parts, fh = open_package(delta.path)
    fh.close()
    with delta.path.open("r+b") as f:
        f.seek(parts.payload_offset + parts.payload_size // 2)
        b = f.read(1)
        f.seek(-1, 1)
        f.write(bytes([b[0] ^ 0xFF]))
    before = host.snapshot()
    proc = host.cli("stage", str(delta.path))
    assert proc.returncode == 3 and json.loads(proc.stdout)["error"] == "payload_digest"
    assert "delta.json says" in proc.stdout
    assert host.snapshot() == before


def test_a_thin_payload_claiming_a_file_the_host_lacks_is_rejected_naming_it(
    host: Host, pkgs: dict[str, Path], tmp_path: Path
) -> None:
    """A delta made for another host: it omits a file this host does not hold."""
    op(host, "stage", pkgs[A])
    missing = lacking(host, pkgs[B])
    entry = _changed(host, pkgs[B])
    shipped = [d for d in missing if d != entry.sha256]
    delta = make_delta_container(pkgs[B], shipped, tmp_path / "d.cutover")
    before = host.snapshot()
    proc = host.cli("stage", str(delta.path))
    assert proc.returncode == 3, proc.stdout
    answer = json.loads(proc.stdout)
    assert answer["error"] == "base_missing" and repr(entry.path) in answer["message"]
    assert host.snapshot() == before


@pytest.mark.parametrize(
    ("what", "members", "code"),
    [
        ("an unlisted path", [("evil.php", b"<?php system($_GET[1]);", 0o644)], "unlisted"),
        ("a path escaping the root", [("../evil.php", b"x", 0o644)], "unsafe_path"),
    ],
    ids=["unlisted", "escape"],
)
def test_a_thin_payload_is_trusted_no_further_than_the_manifest(
    host: Host,
    pkgs: dict[str, Path],
    tmp_path: Path,
    what: str,
    members: list[tuple[str, bytes, int]],
    code: str,
) -> None:
    op(host, "stage", pkgs[A])
    pkg = _delta_with(pkgs[B], tmp_path / "evil.cutover", members)
    before = host.snapshot()
    proc = host.cli("stage", str(pkg))
    assert proc.returncode == 3, (what, proc.stdout)
    assert json.loads(proc.stdout)["error"] == code
    assert host.snapshot() == before
    assert not (host.root / "evil.php").exists() and not (host.root.parent / "evil.php").exists()


def test_a_delta_json_with_an_unknown_field_is_refused(
    host: Host, pkgs: dict[str, Path], tmp_path: Path
) -> None:
    op(host, "stage", pkgs[A])
    parts, fh = open_package(pkgs[B])
    with fh:
        fh.seek(parts.payload_offset)
        payload = fh.read(parts.payload_size)
    spec = {
        "format": 1,
        "payload": {
            "sha256": hashlib.sha256(payload).hexdigest(),
            "size": len(payload),
            "compression": "zstd",
        },
        "trusted": True,
    }
    out = tmp_path / "odd.cutover"
    with out.open("wb") as dst, (tmp_path / "p").open("w+b") as src:
        src.write(payload)
        src.seek(0)
        write_package(
            dst,
            parts.manifest_bytes,
            parts.signatures_bytes,
            src,
            len(payload),
            "zstd",
            delta_bytes=json.dumps(spec).encode(),
        )
    before = host.snapshot()
    proc = host.cli("stage", str(out))
    assert proc.returncode == 3 and json.loads(proc.stdout)["error"] == "bad_delta"
    assert host.snapshot() == before
