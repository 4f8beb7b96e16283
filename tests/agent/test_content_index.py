"""The content index reads installed releases only as far as lookups need (issue 12, delta
speed; agent/host/content.py), and a stage seals the files it linked with the identities read
right after linking them (agent/extract/reuse.py ``placed``, agent/host/seal.py).

Real releases built and signed by our builder, staged by the real lifecycle on real files; the
index under test reads the real seals and kept manifests they leave.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from cutover.agent.host.content import ContentIndex
from cutover.agent.host.layout import Layout
from cutover.agent.host.state import AppState, StateFile
from tests.agent.test_lifecycle import op
from tests.agent.test_reuse import FILES_A
from tests.conftest import Host, PackageFactory

A, B, C, D = "1.0.0", "2.0.0", "3.0.0", "4.0.0"
ONLY_A = "only in A\n" * 30
FILES_B = {**FILES_A, "VERSION": "2\n", "copy-of-app.php": FILES_A["lib/app.php"]}
FILES_C = {**FILES_B, "VERSION": "3\n"}


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _state(host: Host) -> AppState:
    return StateFile(Layout(host.root).state_file, host.app).load()


def _three(host: Host, make_package: PackageFactory) -> None:
    op(host, "stage", make_package(A, files={**FILES_A, "legacy.txt": ONLY_A}))
    op(host, "stage", make_package(B, files=FILES_B))
    op(host, "stage", make_package(C, files=FILES_C))


def _seal(host: Host, version: str) -> Path:
    return host.root / ".cutover" / "manifests" / f"{version}.seal.json"


def test_building_reads_nothing_and_a_lookup_stops_at_the_newest_release_that_has_it(
    host: Host, make_package: PackageFactory
) -> None:
    _three(host, make_package)
    index = ContentIndex.build(Layout(host.root), _state(host))
    assert index.read == [] and not index.empty()
    wanted = [_sha(text) for text in FILES_C.values()]
    assert index.missing([*wanted, _sha("2\n")]) == []  # B's VERSION: C lacks it, B has it
    assert index.read == [C, B]
    nowhere = _sha("in no release\n")
    assert index.missing([nowhere, *wanted]) == [nowhere] and index.read == [C, B, A]
    index = ContentIndex.build(Layout(host.root), _state(host))
    assert index.missing([_sha(FILES_A["lib/app.php"]), _sha("3\n")]) == []
    assert index.read == [C]  # all found in the newest: no other seal was read
    assert _sha(FILES_A["index.html"]) in index and index.read == [C]
    assert _sha(ONLY_A) in index and index.read == [C, B, A]


def test_sources_reads_older_releases_only_while_the_caller_asks_for_more(
    host: Host, make_package: PackageFactory
) -> None:
    _three(host, make_package)
    index = ContentIndex.build(Layout(host.root), _state(host), exclude=C)
    it = iter(index.sources(_sha(FILES_A["lib/app.php"])))
    first = next(it)
    assert first.version == B and first.ident is not None and index.read == [B]
    rest = list(it)
    assert [s.version for s in rest] == [B, A]  # B's copy-of-app.php, then A's lib/app.php
    assert index.read == [B, A]
    assert {s.path for s in [first, *rest]} == {"lib/app.php", "copy-of-app.php"}
    assert list(ContentIndex.build(Layout(host.root), _state(host)).sources("0" * 64)) == []


def test_a_release_deleted_after_the_index_was_built_is_never_offered(
    host: Host, make_package: PackageFactory
) -> None:
    _three(host, make_package)
    index = ContentIndex.build(Layout(host.root), _state(host))  # lists A as installed
    op(host, "delete", A)
    assert not (host.root / "releases" / A).exists() and not _seal(host, A).exists()
    assert index.missing([_sha(ONLY_A)]) == [_sha(ONLY_A)]
    assert index.read == [C, B, A]  # A was reached, and offered nothing
    assert {s.version for s in index.sources(_sha(FILES_A["lib/app.php"]))} == {C, B}


def test_a_seal_changed_after_the_index_was_built_is_checked_when_it_is_read(
    host: Host, make_package: PackageFactory
) -> None:
    """A forged row (another sha256 for a path) written after build() is refused when the seal
    is read: its projection differs from the record; the kept manifest is used instead, whose
    candidates carry no identity (they are hashed when reused)."""
    _three(host, make_package)
    index = ContentIndex.build(Layout(host.root), _state(host))
    seal = _seal(host, A)
    doc = json.loads(seal.read_bytes())
    forged = _sha("forged\n")
    doc["files"] = [[r[0], forged, *r[2:]] if r[0] == "legacy.txt" else r for r in doc["files"]]
    seal.write_text(json.dumps(doc))
    seal.chmod(0o640)
    assert index.missing([forged]) == [forged]  # never believed
    legacy = list(index.sources(_sha(ONLY_A)))
    assert [(s.version, s.path, s.ident) for s in legacy] == [(A, "legacy.txt", None)]


def test_a_stage_seals_the_files_it_linked_with_their_identities_after_linking(
    host: Host, make_package: PackageFactory
) -> None:
    """B links A's inodes (lib/app.php twice: copy-of-app.php too; the second link is taken on
    the identity read after the first, which changed only its ctime); each row of B's seal has
    the identity an lstat of the file gives after the stage (the latest link's ctime for the
    shared inode), and a later stage takes every unchanged file from B's seal unhashed."""
    op(host, "stage", make_package(A, files=FILES_A))
    op(host, "stage", make_package(B, files=FILES_B))
    content = host.state()["releases"][B]["content"]
    assert content["reuse_sealed_files"] == 6  # 4 of FILES_A, their copy and cutover.toml
    assert "reuse_hashed_files" not in content
    seal = json.loads(_seal(host, B).read_bytes())
    rows = {r[0]: r for r in seal["files"]}
    assert set(rows) == {*FILES_B, "cutover.toml"}
    for rel, (_, _, size, _, ino, mtime, ctime) in rows.items():
        st = os.lstat(host.root / "releases" / B / rel)
        assert (seal["dev"], ino, size, mtime, ctime) == (
            st.st_dev,
            st.st_ino,
            st.st_size,
            st.st_mtime_ns,
            st.st_ctime_ns,
        ), rel
    assert rows["lib/app.php"][4] == rows["copy-of-app.php"][4]  # one inode, one identity
    op(host, "stage", make_package(C, files=FILES_C))
    content = host.state()["releases"][C]["content"]
    assert content["reuse_sealed_files"] == 6 and "reuse_hashed_files" not in content
    op(host, "stage", make_package(D, files={**FILES_C, "VERSION": "4\n"}))
    assert host.state()["releases"][D]["content"]["reuse_sealed_files"] == 6
    for version in (A, B, C, D):
        answer = host.cli_json("verify", version)
        assert answer["ok"] is True, answer
