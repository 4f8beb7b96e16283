"""Content-addressed staging (issue 12 item 1): a file whose content the host already holds in
an installed release is taken from there instead of the payload, by the method the app's
``reuse`` setting and the release's hooks allow (agent/extract/reuse.py, docs/lifecycle.md).

Real releases built and signed by our builder, staged by the real lifecycle; ``verify`` through
the real CLI. ext4 (the test filesystem) has no reflinks, so ``auto`` falls back to hardlinks or
copies here.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.agent.test_lifecycle import configure, hook, op
from tests.conftest import Host, PackageFactory

A, B = "1.0.0", "2.0.0"
FILES_A = {
    "index.html": "<h1>shop</h1>\n" * 50,
    "lib/app.php": "<?php return 'app';\n" * 40,
    "lib/util.php": "<?php return 'util';\n" * 30,
    "bin/console": "#!/bin/sh\necho console\n",
    "VERSION": "1\n",
}
FILES_B = {**FILES_A, "VERSION": "2\n"}  # one changed file; four the host already holds
SHARED = ["index.html", "lib/app.php", "lib/util.php", "bin/console"]


def _ino(host: Host, version: str, rel: str) -> int:
    return os.lstat(host.root / "releases" / version / rel).st_ino


def _record(host: Host, version: str) -> dict[str, int]:
    content: dict[str, int] = host.state()["releases"][version]["content"]
    return content


def _verify_clean(host: Host, version: str) -> None:
    answer = host.cli_json("verify", version)
    assert answer["ok"] is True, answer


def _stage_both(host: Host, make_package: PackageFactory, toml_b: str = "") -> None:
    op(host, "stage", make_package(A, files=FILES_A))
    op(host, "stage", make_package(B, files=FILES_B, toml=toml_b))


def test_without_hooks_unchanged_files_are_hardlinked(
    host: Host, make_package: PackageFactory
) -> None:
    _stage_both(host, make_package)
    for rel in SHARED:
        assert _ino(host, A, rel) == _ino(host, B, rel), rel
    assert _ino(host, A, "VERSION") != _ino(host, B, "VERSION")
    assert (host.root / "releases" / B / "VERSION").read_text() == "2\n"
    toml = len((host.root / "releases" / A / "cutover.toml").read_bytes())  # shipped too
    sizes = sum(len(FILES_A[rel]) for rel in SHARED) + toml
    assert _record(host, B) == {
        "payload_files": 1,
        "payload_bytes": 2,
        "hardlink_files": 5,
        "hardlink_bytes": sizes,
        # A was sealed (no stage hooks): its files were taken on their identity, none re-hashed
        "reuse_sealed_files": 5,
        "reuse_sealed_bytes": sizes,
    }
    total_a = sum(map(len, FILES_A.values())) + toml
    assert _record(host, A) == {"payload_files": 6, "payload_bytes": total_a}
    _verify_clean(host, A)
    _verify_clean(host, B)
    assert os.listdir(host.root / ".cutover" / "incoming") == []


def test_a_stage_hook_makes_reuse_copy(host: Host, make_package: PackageFactory) -> None:
    _stage_both(host, make_package, hook("stage", "warm", "true"))
    for rel in SHARED:
        assert _ino(host, A, rel) != _ino(host, B, rel), rel
        assert (host.root / "releases" / B / rel).read_text() == FILES_A[rel]
    record = _record(host, B)
    assert record["copy_files"] == 4 and "hardlink_files" not in record
    _verify_clean(host, A)
    _verify_clean(host, B)


def test_a_pre_activate_hook_makes_reuse_copy(host: Host, make_package: PackageFactory) -> None:
    _stage_both(host, make_package, hook("pre_activate", "migrate", "true"))
    assert _record(host, B)["copy_files"] == 4
    assert all(_ino(host, A, rel) != _ino(host, B, rel) for rel in SHARED)


@pytest.mark.parametrize("mode", ["auto", "hardlink"])
def test_an_in_place_writing_stage_hook_never_alters_the_older_release(
    host: Host, make_package: PackageFactory, mode: str
) -> None:
    """The acceptance test: ``printf x >> file`` and a Python ``open('r+')`` write, in a stage
    hook, into files the new release shares with the older one. Under ``auto`` they are copies,
    so the older release's ``verify`` stays clean. (``hardlink`` is the operator asserting hooks
    never do this: the test shows why it is not the default, by checking what it costs.)"""
    configure(host, keys={"reuse": mode})
    script = (
        'printf x >> lib/app.php && python3 -c "'
        "f = open('index.html', 'r+'); f.write('HACKED'); f.close()\""
    )
    op(host, "stage", make_package(A, files=FILES_A))
    op(host, "stage", make_package(B, files=FILES_B, toml=hook("stage", "writer", script)))
    new = host.root / "releases" / B
    assert (new / "lib/app.php").read_text() == FILES_A["lib/app.php"] + "x"
    assert (new / "index.html").read_text().startswith("HACKED")
    old = host.root / "releases" / A
    if mode == "auto":
        assert (old / "lib/app.php").read_text() == FILES_A["lib/app.php"]
        assert (old / "index.html").read_text() == FILES_A["index.html"]
        _verify_clean(host, A)
    else:  # the documented risk of `reuse = "hardlink"`: one inode, so both releases changed
        assert (old / "lib/app.php").read_text() == FILES_A["lib/app.php"] + "x"
        proc = host.cli("verify", A)
        assert proc.returncode == 6 and "lib/app.php" in proc.stdout


def test_a_differing_mode_means_copy(host: Host, make_package: PackageFactory) -> None:
    """Same content, but executable in the new release: a hardlink would share the mode."""
    files_b = {**FILES_B, "bin/tool": FILES_A["lib/util.php"]}  # bin/ files are made executable
    op(host, "stage", make_package(A, files=FILES_A))
    op(host, "stage", make_package(B, files=files_b))
    assert _ino(host, B, "bin/tool") != _ino(host, A, "lib/util.php")
    assert _ino(host, B, "lib/util.php") == _ino(host, A, "lib/util.php")
    assert os.stat(host.root / "releases" / B / "bin/tool").st_mode & 0o777 == 0o555
    assert _record(host, B)["copy_files"] == 1
    _verify_clean(host, B)


@pytest.mark.parametrize("drift", ["size", "content"])
def test_a_drifted_older_release_is_not_reused(
    host: Host, make_package: PackageFactory, drift: str
) -> None:
    op(host, "stage", make_package(A, files=FILES_A))
    victim = host.root / "releases" / A / "lib/app.php"
    victim.chmod(0o644)
    data = FILES_A["lib/app.php"]
    victim.write_text(data + "tampered" if drift == "size" else data.upper())
    victim.chmod(0o444)
    op(host, "stage", make_package(B, files=FILES_B))
    new = host.root / "releases" / B / "lib/app.php"
    assert new.read_text() == data and _ino(host, B, "lib/app.php") != victim.stat().st_ino
    record = _record(host, B)
    assert record["payload_files"] == 2 and record["hardlink_files"] == 4  # with cutover.toml
    _verify_clean(host, B)


@pytest.mark.parametrize("where", ["file", "directory"])
def test_reuse_never_follows_a_symlink_out_of_the_root(
    host: Host, make_package: PackageFactory, tmp_path: Path, where: str
) -> None:
    """An older release whose file (or directory) was swapped for a symlink to a look-alike
    outside the app root: the link is not followed, nothing outside gains a link."""
    op(host, "stage", make_package(A, files=FILES_A))
    outside = tmp_path / "outside"
    (outside / "lib").mkdir(parents=True)
    for rel in ("lib/app.php", "lib/util.php"):
        (outside / rel).write_text(FILES_A[rel])
    lib = host.root / "releases" / A / "lib"
    lib.chmod(0o755)
    if where == "file":
        (lib / "app.php").unlink()
        (lib / "app.php").symlink_to(outside / "lib/app.php")
    else:
        for child in lib.iterdir():
            child.unlink()
        lib.rmdir()
        lib.symlink_to(outside / "lib")
    op(host, "stage", make_package(B, files=FILES_B))
    for rel in ("lib/app.php", "lib/util.php"):
        assert (outside / rel).stat().st_nlink == 1  # never linked from inside the root
        assert not (host.root / "releases" / B / rel).is_symlink()
    assert (host.root / "releases" / B / "lib/app.php").read_text() == FILES_A["lib/app.php"]
    _verify_clean(host, B)


def test_reuse_off_takes_everything_from_the_payload(
    host: Host, make_package: PackageFactory
) -> None:
    configure(host, keys={"reuse": "off"})
    _stage_both(host, make_package)
    assert all(_ino(host, A, rel) != _ino(host, B, rel) for rel in SHARED)
    assert set(_record(host, B)) == {"payload_files", "payload_bytes"}


@pytest.mark.parametrize("q_proven_by", ["sealed", "hashed"])
def test_a_sealed_source_swapped_for_a_link_to_another_reused_file_is_not_linked(
    tmp_path: Path, q_proven_by: str
) -> None:
    """Review finding (r5): after sealing, ``p`` (content B) became a hardlink to ``q`` (content
    A, same size). Once this stage had linked ``q``, ``p``'s identity equalled the identity read
    after that link, and the sealed fast path took it as proven: ``b.txt`` (manifest: B) got A.
    An identity seen after this run's own link vouches only for the inode whose seal it proved."""
    import hashlib

    from cutover.agent.extract.reuse import Candidate, Reuser
    from cutover.agent.package.entries import FileEntry

    def ident(p: Path) -> tuple[int, int, int, int, int]:
        st = os.lstat(p)
        return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)

    releases = tmp_path / "releases"
    old = releases / A
    old.mkdir(parents=True)
    a, b = b"A" * 64, b"B" * 64
    (old / "q").write_bytes(a)
    (old / "p").write_bytes(b)
    for name in ("q", "p"):
        os.chmod(old / name, 0o444)
    sealed = {"q": ident(old / "q"), "p": ident(old / "p")}  # what the old release's seal says
    os.unlink(old / "p")
    os.link(old / "q", old / "p")  # after sealing: p is now q's inode (content A)
    if q_proven_by == "sealed":  # q's seal row refreshed after the swap: q itself is sound
        sealed["q"] = ident(old / "q")
    da, db = hashlib.sha256(a).hexdigest(), hashlib.sha256(b).hexdigest()
    index = {
        da: [Candidate(A, "q", 64, 0o644, sealed["q"])],
        db: [Candidate(A, "p", 64, 0o644, sealed["p"])],
    }
    new = tmp_path / "new"
    new.mkdir()
    dir_fd = os.open(new, os.O_RDONLY | os.O_DIRECTORY)
    reuser = Reuser(releases, lambda d: index.get(d, []), reflink=False, hardlink=True)
    try:
        first = reuser.place(
            FileEntry(path="a.txt", size=64, sha256=da, mode=0o644), dir_fd, "a.txt"
        )
        second = reuser.place(
            FileEntry(path="b.txt", size=64, sha256=db, mode=0o644), dir_fd, "b.txt"
        )
    finally:
        reuser.close()
        os.close(dir_fd)
    assert first == "hardlink" and (new / "a.txt").read_bytes() == a
    assert second is None  # no source proven: the stage takes b.txt from its payload
    assert sorted(os.listdir(new)) == ["a.txt"]  # nothing else created, no temp file left
    assert [f"{A}/p" in r for r in reuser.refused] == [True]
    assert (old / "p").read_bytes() == a and (old / "q").read_bytes() == a  # old tree untouched
    # q proven as asked; p never by its seal (the swapped inode is not the sealed one), only
    # re-hashed, and refused for its content
    sealed_q = q_proven_by == "sealed"
    assert reuser.checks["sealed"][0] == (1 if sealed_q else 0)
    assert reuser.checks["hashed"][0] == (1 if sealed_q else 2)
