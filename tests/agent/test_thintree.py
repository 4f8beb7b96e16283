"""A thin payload's tree built in directory order (agent/extract/thintree.py): directories in
tree order (``/`` sorts first, so ``a/b`` comes before ``a-b``), each opened once, files placed
from the host and symlinks made per directory, each directory's mode set when the walk leaves
it; on any failure every fd it opened is closed and the stage leaves nothing behind.

Real directories, real files and real delta stages through the CLI (tests/agent/test_thin.py has
the mutated-corpus case)."""

from __future__ import annotations

import hashlib
import json
import os
import stat
from pathlib import Path

import pytest

from cutover.agent.extract.thintree import ThinTree, tree_order
from cutover.agent.package.manifest import DirEntry, FileEntry, SymlinkEntry
from cutover.controller.delta import make_delta_container
from tests.agent.conftest import lacking, snapshot
from tests.agent.test_lifecycle import op
from tests.conftest import Host, PackageFactory

A, B = "1.0.0", "2.0.0"
# Names whose plain sort ("a", "a-b", "a.x", "a/b") is not tree order ("a", "a/b", ..., "a-b").
FILES_A = {
    "top.txt": "top\n" * 20,
    "a/x.txt": "x\n" * 30,
    "a-b/y.txt": "y\n" * 40,
    "a.x/v.txt": "v\n" * 50,
    "a/b/z.txt": "z\n" * 60,
    "a/b/c/w.txt": "w\n" * 70,
    "a/b/c/d/e/deep.txt": "deep\n" * 10,
}
FILES_B = {**FILES_A, "a/b/z.txt": "changed\n"}


def _fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


def _entries() -> list[FileEntry | DirEntry | SymlinkEntry]:
    digest = hashlib.sha256(b"").hexdigest()
    return [
        DirEntry(path="a-b", dir=True, mode=0o755),
        FileEntry(path="a-b/y", size=0, sha256=digest, mode=0o644),
        DirEntry(path="a", dir=True, mode=0o750),
        DirEntry(path="a/b/c", dir=True, mode=0o700),
        DirEntry(path="a/b", dir=True, mode=0o755),
        FileEntry(path="a/b/c/f", size=0, sha256=digest, mode=0o644),
        SymlinkEntry(path="a/b/up", symlink="../x"),
        FileEntry(path="a/x", size=0, sha256=digest, mode=0o644),
        FileEntry(path="f", size=0, sha256=digest, mode=0o644),
        DirEntry(path="a.x", dir=True, mode=0o711),
    ]


def test_tree_order_puts_each_directory_right_before_its_subtree() -> None:
    paths = ["a-b", "a.x", "a/b/c", "a", "a/b", "b", "a/b-c", "a/b/c/d"]
    assert sorted(paths, key=tree_order) == [
        "a",
        "a/b",
        "a/b/c",
        "a/b/c/d",
        "a/b-c",
        "a-b",
        "a.x",
        "b",
    ]
    assert [d.path for d in ThinTree(_entries()).dirs] == ["a", "a/b", "a/b/c", "a-b", "a.x"]


def test_the_walks_create_the_tree_place_files_and_set_modes_last(tmp_path: Path) -> None:
    tree = ThinTree(_entries())
    dest = tmp_path / "dest"
    dest.mkdir(mode=0o700)
    root_fd = os.open(dest, os.O_RDONLY | os.O_DIRECTORY)
    before = _fds()
    entered: list[str] = []
    placed: list[tuple[str, str]] = []
    try:
        tree.make_dirs(root_fd, lambda d: entered.append(d.path))
        assert _fds() == before  # only ancestors were open, and all are closed again
        for d in ("a", "a/b", "a/b/c", "a-b", "a.x"):  # created 0700, modes come last
            assert stat.S_IMODE(os.lstat(dest / d).st_mode) == 0o700

        def place(entry: FileEntry, dir_fd: int, leaf: str) -> bool:
            os.close(os.open(leaf, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644, dir_fd=dir_fd))
            placed.append((entry.path, leaf))
            return True

        def link(entry: SymlinkEntry, dir_fd: int, leaf: str) -> None:
            os.symlink(entry.symlink, leaf, dir_fd=dir_fd)

        tree.finish(root_fd, place, link)
        assert _fds() == before
    finally:
        os.close(root_fd)
    assert entered == ["a", "a/b", "a/b/c", "a-b", "a.x"]
    assert sorted(placed) == [("a-b/y", "y"), ("a/b/c/f", "f"), ("a/x", "x"), ("f", "f")]
    for path, _ in placed:
        assert (dest / path).is_file()
    assert os.readlink(dest / "a/b/up") == "../x"
    modes = {d: stat.S_IMODE(os.lstat(dest / d).st_mode) for d in ("a", "a/b", "a/b/c", "a.x")}
    assert modes == {"a": 0o750, "a/b": 0o755, "a/b/c": 0o700, "a.x": 0o711}


def test_a_failure_in_the_walk_closes_every_fd_it_opened(tmp_path: Path) -> None:
    tree = ThinTree(_entries())
    dest = tmp_path / "dest"
    dest.mkdir(mode=0o700)
    root_fd = os.open(dest, os.O_RDONLY | os.O_DIRECTORY)
    try:
        tree.make_dirs(root_fd, lambda d: None)
        before = _fds()

        def place(entry: FileEntry, dir_fd: int, leaf: str) -> bool:
            if entry.path == "a/b/c/f":  # deep in the tree: a, a/b and a/b/c are open
                raise OSError(5, "Input/output error")
            return True

        with pytest.raises(OSError, match="Input/output"):
            tree.finish(root_fd, place, lambda e, fd, leaf: None)
        assert _fds() == before
        with pytest.raises(FileExistsError):  # make_dirs on an existing tree: fds closed too
            tree.make_dirs(root_fd, lambda d: None)
        assert _fds() == before
    finally:
        os.close(root_fd)


def test_a_delta_stage_of_a_tree_whose_names_sort_apart_equals_the_full_stage(
    host: Host, make_package: PackageFactory, tmp_path: Path
) -> None:
    op(host, "stage", make_package(A, files=FILES_A))
    full_b = make_package(B, files=FILES_B)
    missing = lacking(host, full_b)
    assert len(missing) == 1  # only the changed file travels
    delta = make_delta_container(full_b, missing, tmp_path / "b.delta.cutover")
    result = op(host, "stage", delta.path)
    assert result.details["content"]["payload_files"] == 1
    assert result.details["content"]["hardlink_files"] == len(FILES_B)  # + cutover.toml - 1
    tree = host.root / "releases" / B
    for rel, text in FILES_B.items():
        assert (tree / rel).read_text() == text
    assert (
        os.lstat(tree / "a/b/c/w.txt").st_ino
        == os.lstat(host.root / "releases" / A / "a/b/c/w.txt").st_ino
    )
    assert host.cli_json("verify", B)["ok"] is True
    assert host.cli_json("verify", A)["ok"] is True
    other = host.tmp / "other"  # the full package staged on a fresh root gives the same tree
    pub = str(host.tmp / "keys" / "release.pub")
    h = Host(root=other / "srv" / "demo", config=other / "agent.toml", app="demo", tmp=other)
    h.cli_json("init", "--app", "demo", "--root", str(h.root), "--trust-release-key", pub)
    op(h, "stage", full_b)
    assert snapshot(tree) == snapshot(h.root / "releases" / B)
    assert os.listdir(host.root / ".cutover" / "incoming") == []


def test_a_delta_stage_whose_host_copy_drifted_mid_tree_leaves_nothing_behind(
    host: Host, make_package: PackageFactory, tmp_path: Path
) -> None:
    """The controller was told the host holds ``a/b/c/w.txt``; before the stage, that file of
    release A drifted (written in place). Placing refuses it (its sealed identity changed, its
    content differs), the host holds no other copy: the stage fails naming it, deep in the walk,
    and leaves the root exactly as it was (no release, no temp tree, release A untouched)."""
    op(host, "stage", make_package(A, files=FILES_A))
    full_b = make_package(B, files=FILES_B)
    delta = make_delta_container(full_b, lacking(host, full_b), tmp_path / "b.delta.cutover")
    drifted = host.root / "releases" / A / "a/b/c/w.txt"
    os.chmod(drifted, 0o644)
    drifted.write_text("W\n" * 70)  # same size, other content
    os.chmod(drifted, 0o444)
    before = host.snapshot()
    tree_a = snapshot(host.root / "releases" / A)
    proc = host.cli("stage", str(delta.path))
    assert proc.returncode == 3, proc.stdout
    answer = json.loads(proc.stdout)
    assert answer["error"] == "base_missing"
    assert "'a/b/c/w.txt'" in answer["message"]
    assert host.snapshot() == before
    assert os.listdir(host.root / ".cutover" / "incoming") == []
    assert not (host.root / "releases" / B).exists()
    assert snapshot(host.root / "releases" / A) == tree_a
