"""Seals: what each file of a release was when it was sealed, so a later stage may reuse it
without re-hashing it (docs/lifecycle.md §1.2).

When a release staged **without stage hooks** is made read-only, :func:`seal_release` records in
``.cutover/manifests/<version>.seal.json`` (this module owns the format) every regular file of
its manifest with its SHA-256, size and mode, and, for each file whose identity is provably the
one it had when its content was checked, that identity: ``(st_dev, st_ino, st_size,
st_mtime_ns, st_ctime_ns)``. A later stage (:mod:`agent.extract.reuse`) takes a source file
without hashing it only if ``fstat`` of the very fd it opened gives that exact identity. Every
write, truncate, chmod, chown, link or unlink of the inode sets its ctime to the current time, and
ctime cannot be set back without setting the clock back, so an unchanged identity means unchanged
content (git's index rests on the same argument).

**The racy case** (git's "racy clean"): timestamps have a granularity (a clock tick), so a write
in the same tick as the last recorded change would keep the ctime. Before the identities are read,
a probe file is touched until the filesystem's clock has moved past every change this stage made
(at most one tick); an identity is recorded only if its ctime is older than that probe, so any
later write gets a later ctime. Anything unexpected (a file missing, not regular, on another
device, a mode not the sealed one, a ctime not older than the probe) just leaves the file
unsealed: it is hashed when reused, as before.

**A seal is a cache, never an authority.** :func:`load_seal` returns None (the reuser then hashes)
when the file is missing, unreadable, not a regular file owned by this user (or root: the CLI run
as root) with no group/other write bit (foreign-owned), invalid per the strict model (corrupt),
or stale: another version, a manifest digest other than the one recorded at staging, or a
release directory that is not the one sealed (restored from backup, copied, another
filesystem); or untrusted: its rows' ``(path, sha256, size, mode)`` do not hash to the
``seal_sha256`` the release's state record kept when the seal was written
(:func:`seal_projection`), or a row's path breaks the manifest's path rules. A seal that cannot
be written leaves the release unsealed (``seal_not_written``). It never makes a stage fail.
Whoever writes as the agent's user can still rewrite a file together with its row's identity:
§1.2 says what a seal is trusted for.

The filesystem is synced before identities are read: a write through a shared mmap into an
already-dirty page does not update ctime, one into a clean page does (§1.2, "Shared mmaps").
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import stat
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Final, Literal, NamedTuple

import pydantic_core
from pydantic import BaseModel, ConfigDict, ValidationError

from cutover.agent._util.fsutil import random_suffix, syncfs
from cutover.agent._util.lazylog import get_logger
from cutover.agent.errors import ManifestError
from cutover.agent.extract._io import DIR_FLAGS
from cutover.agent.host.layout import Layout
from cutover.agent.host.state import ReleaseRecord
from cutover.agent.package.entries import check_relpaths
from cutover.agent.package.manifest import DirEntry, FileEntry, Manifest

__all__ = [
    "SEAL_FORMAT",
    "SealFile",
    "SealReport",
    "load_seal",
    "seal_projection",
    "seal_release",
    "unlink_sealed",
]

log = get_logger(__name__)

SEAL_FORMAT: Final = "cutover.seal/1"
# The filesystem clock has not moved in this long (a filesystem with timestamps in whole seconds):
# no seal, rather than a stage that waits; its files are hashed when reused, as without seals.
_PROBE_WAIT_S: Final = 0.05


class SealFile(BaseModel):
    """``<version>.seal.json``. ``files``: per regular file of the manifest, ``[path, sha256,
    size, mode (the manifest's), ino, mtime_ns, ctime_ns]``; ``ino`` 0 means "not sealed" (the
    file is hashed when reused). Every identity is on device ``dev``."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    format: Literal["cutover.seal/1"]
    version: str
    manifest_sha256: str
    release_dir: tuple[int, int]  # (st_dev, st_ino) of releases/<version> when sealed
    dev: int
    files: list[tuple[str, str, int, int, int, int, int]]  # _Row


class SealReport(NamedTuple):
    """What :func:`seal_release` did: files recorded with an identity, and without one; the
    :func:`seal_projection` of the seal written (None: none was written)."""

    sealed: int
    unsealed: int
    projection: str | None


_Row = tuple[str, str, int, int, int, int, int]


def seal_projection(rows: list[_Row]) -> str:
    """SHA-256 of the rows' (path, sha256, size, mode): what the seal claims about the signed
    release, without the identities (which a refresh changes). Recorded in the release's state
    record when the seal is written; :func:`load_seal` believes no seal whose rows differ.

    The bytes hashed are ``json.dumps(rows4, separators=(",", ":"), ensure_ascii=False)`` in
    UTF-8; pydantic-core's serializer writes exactly those bytes ~3x faster (for every string
    but one with a lone surrogate, which it refuses: then ``json.dumps`` writes them;
    ``test_seal`` checks both agree)."""
    heads = [r[:4] for r in rows]
    try:
        data = pydantic_core.to_json(heads)
    except pydantic_core.PydanticSerializationError:
        text = json.dumps(heads, separators=(",", ":"), ensure_ascii=False)
        data = text.encode("utf-8", "surrogatepass")
    return hashlib.sha256(data).hexdigest()


def _readonly_mode(mode: int, is_dir: bool) -> int:
    return 0o555 if is_dir or mode & 0o111 else 0o444  # = installer.release_mode


def seal_release(
    layout: Layout,
    release_dir: Path,
    manifest: Manifest,
    manifest_digest: str,
    placed: Mapping[str, os.stat_result] | None = None,
) -> SealReport | None:
    """Make a release staged without stage hooks read-only and record its seal.

    The tree is exactly the manifest's plus the shared links (nothing else ran in it), so modes
    are set from the manifest (as :func:`agent.host.installer.make_readonly` would set them)
    without walking it. Returns None, having written no seal, if the tree is not what the
    manifest says: the caller then runs ``make_readonly`` (and ``verify`` reports the rest).

    ``placed``: path → ``lstat`` of files the extraction hardlinked, read right after the link
    (:meth:`agent.extract.reuse.Reuser.placed`); those are not ``lstat``-ed again. Equally safe: an identity is still recorded only
    if its ctime is older than the probe's tick after the syncfs, so any later change of the
    inode is seen; a change between that ``lstat`` and the tick makes the row stale (a cache
    miss: the file is hashed when reused), where reading it later would have recorded it as
    sealed content (neither reading proves content: the tree is trusted as the extraction wrote
    it, §1.2).
    """
    files = [e for e in manifest.files if type(e) is FileEntry]
    root = str(release_dir)
    try:
        dir_mode = _readonly_mode(0, True)
        for path in [*(e.path for e in manifest.files if type(e) is DirEntry), ""]:
            fd = os.open(f"{root}/{path}", DIR_FLAGS)  # never through a link
            try:
                os.fchmod(fd, dir_mode)
            finally:
                os.close(fd)
        # Flushed first: a write through a shared mmap whose page is already dirty does not
        # update ctime; once written back, the next write faults and does (§1.2).
        syncfs(layout.releases)
        probe_fd, probe = _probe(layout)
    except OSError:
        return None
    try:
        idents: list[tuple[int, int, int] | None] = []
        redo: list[int] = []
        dev = os.lstat(root).st_dev
        cut = _tick_after(probe_fd)  # every change so far is older than ``cut``
        lstat, regular = os.lstat, stat.S_IFREG
        cut_ns = -1 if cut is None else cut  # no ctime is older than -1: nothing sealed
        known = placed or {}
        for i, e in enumerate(files):  # 20,000 files: kept lean
            want = 0o555 if e.mode & 0o111 else 0o444  # = installer.release_mode
            st = known.get(e.path)
            if st is None:
                st = lstat(f"{root}/{e.path}")
            if st.st_mode & 0o170000 != regular or st.st_size != e.size or st.st_dev != dev:
                raise FileNotFoundError(e.path)  # not the extracted tree: walk it, no seal
            if st.st_mode & 0o7777 != want:
                os.chmod(f"{root}/{e.path}", want)
                redo.append(i)
                idents.append(None)
            elif st.st_ctime_ns < cut_ns:
                idents.append((st.st_ino, st.st_mtime_ns, st.st_ctime_ns))
            else:
                idents.append(None)
        if redo:  # chmodded just now: read again once the clock has moved past the chmods
            cut = _tick_after(probe_fd)
            for i in redo:
                st = os.lstat(f"{root}/{files[i].path}")
                if stat.S_ISREG(st.st_mode) and st.st_dev == dev:
                    idents[i] = _ident(st, cut)
    except OSError:
        return None
    finally:
        os.close(probe_fd)
        with contextlib.suppress(OSError):
            os.unlink(probe)
    rows = []
    sealed = 0
    for e, ident in zip(files, idents, strict=True):
        if ident is None:
            rows.append((e.path, e.sha256, e.size, e.mode, 0, 0, 0))
        else:
            sealed += 1
            rows.append((e.path, e.sha256, e.size, e.mode, *ident))
    target = layout.seal(manifest.version)
    try:
        dir_st = os.lstat(root)
        seal = SealFile.model_construct(  # built here, from the verified manifest: not re-validated
            format=SEAL_FORMAT,
            version=manifest.version,
            manifest_sha256=manifest_digest,
            release_dir=(dir_st.st_dev, dir_st.st_ino),
            dev=dev,
            files=rows,
        )
        _write(target, seal.model_dump_json().encode())
    except OSError as exc:  # e.g. a directory or FIFO planted at the path: only a cache
        log.warning(
            "seal_not_written",
            version=manifest.version,
            path=str(target),
            error=f"{type(exc).__name__}: {exc.strerror or exc}",
            next="the release stays unsealed: its files are hashed when a later stage reuses them",
        )
        return SealReport(0, len(files), None)
    return SealReport(sealed, len(files) - sealed, seal_projection(rows))


def _ident(st: os.stat_result, cut: int | None) -> tuple[int, int, int] | None:
    """(ino, mtime_ns, ctime_ns), if the inode's last change is older than ``cut``."""
    if cut is None or st.st_ctime_ns >= cut or st.st_ino <= 0:
        return None
    return (st.st_ino, st.st_mtime_ns, st.st_ctime_ns)


def _probe(layout: Layout) -> tuple[int, Path]:
    """A fresh file in ``incoming/`` (same filesystem; recovery empties it after a crash)."""
    path = layout.incoming / f".seal-probe.{random_suffix()}"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    return fd, path


def _tick_after(fd: int) -> int | None:
    """Touch the probe until its ctime is later than its first touch now: then every change made
    before this call has an older ctime, and every later one a ctime >= the returned value.
    None if the clock does not move within ``_PROBE_WAIT_S`` (then nothing is sealed)."""
    os.utime(fd)
    first = os.fstat(fd).st_ctime_ns
    deadline = time.monotonic() + _PROBE_WAIT_S
    while True:
        os.utime(fd)
        now = os.fstat(fd).st_ctime_ns
        if now > first:
            return now
        if time.monotonic() > deadline:
            return None
        time.sleep(0.0005)


def _write(path: Path, data: bytes) -> None:
    """Temp file and rename, no fsync: the stage's syncfs, right after, makes it durable (a
    seal lost or torn by a crash is only ignored)."""
    tmp = path.with_name(f".{path.name}.{random_suffix()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o640)
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def load_seal(layout: Layout, rec: ReleaseRecord) -> SealFile | None:
    """The seal of installed release ``rec``, or None if there is none that can be believed."""
    seal = _read(layout.seal(rec.version))
    if seal is None or isinstance(seal, str):
        return None if seal is None else _ignored(rec, seal)
    try:
        dir_st = os.lstat(layout.release(rec.version))
    except OSError:
        return _ignored(rec, "no release directory")
    if (
        seal.version != rec.version
        or seal.manifest_sha256 != rec.manifest_digest
        or seal.release_dir != (dir_st.st_dev, dir_st.st_ino)
    ):
        return _ignored(rec, "stale (another release, manifest or directory)")
    if rec.seal_sha256 is None or seal_projection(seal.files) != rec.seal_sha256:
        return _ignored(rec, "its rows are not the ones recorded when it was written")
    try:
        check_relpaths([row[0] for row in seal.files])
    except ManifestError as exc:
        return _ignored(rec, f"a row's path is not a safe relative path: {exc}")
    return seal


def _read(path: Path) -> SealFile | str | None:
    """The seal file at ``path``, strictly parsed; None if there is none; else why not."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except OSError as exc:
        return f"unreadable: {exc.strerror}"
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_uid not in (os.geteuid(), 0) or st.st_mode & 0o022:
            return "not a regular file of this user (or root), or writable by others"
        with os.fdopen(os.dup(fd), "rb") as fh:
            data = fh.read()
    except OSError as exc:
        return f"unreadable: {exc.strerror}"
    finally:
        os.close(fd)
    try:
        return SealFile.model_validate_json(data)
    except ValidationError:
        return "corrupt"


def _ignored(rec: ReleaseRecord, reason: str) -> SealFile | None:
    """Log why a seal is not believed; None (its release's files are hashed when reused)."""
    log.info("seal_ignored", version=rec.version, reason=reason)
    return None


# ---------------------------------------------------------------------- keeping seals fresh
# Linking or unlinking a name of an inode sets its ctime too: after a stage linked an older
# release's inode, only the new release's seal has its current identity; removing a release
# (prune, delete, a failed stage's tree) that shares inodes would leave every seal stale for them.
# An identity belongs to the inode, not to a name: a seal row with an inode's current identity
# proves its content (the row's SHA-256) for every row naming that inode with the same SHA-256.
# So the names of such inodes in the tree being removed are unlinked one by one; the unlink's new
# ctime would also absorb a write made just before it, so the proof moves to the new ctime only
# with evidence: after the unlink, the inode's content is hashed between two equal fstats and must
# match the row's SHA-256 (this hashes the inodes shared with the removed tree, at removal time).
# The rows naming the inode then take the new ctime, once the clock has moved past it and the file
# under each row's path still shows it.

_Inode = tuple[int, int]  # st_dev, st_ino
_Proof = tuple[int, int, int, str]  # st_size, st_mtime_ns, st_ctime_ns, sha256


def unlink_sealed(layout: Layout, tree: Path, tree_seal: Path | None = None) -> Callable[[], int]:
    """Unlink, in ``tree`` (about to be removed), the names of inodes whose current identity a
    seal proves (one in ``manifests/``, or ``tree_seal``: the removed release's own). Returns the
    step to call once ``tree`` is gone: it refreshes the seals in ``manifests/`` naming those
    inodes and returns how many rows it refreshed."""
    seals: dict[str, SealFile] = {}
    for path in layout.manifests.glob("*.seal.json"):
        seal = _read(path)  # no state check: only rows proven current are refreshed
        if isinstance(seal, SealFile) and layout.seal(seal.version) == path:
            seals[seal.version] = seal
    proofs: dict[_Inode, list[_Proof]] = {}
    own = _read(tree_seal) if tree_seal is not None else None
    for seal in [*seals.values(), *([own] if isinstance(own, SealFile) else [])]:
        for _, sha, size, _, ino, mtime, ctime in seal.files:
            if ino > 0:
                proofs.setdefault((seal.dev, ino), []).append((size, mtime, ctime, sha))
    moved: dict[_Inode, _Proof] = {}
    if proofs and seals:
        with contextlib.suppress(OSError):  # then these seals just go stale: hashed next time
            _unlink_proven(tree, proofs, moved)
    return lambda: _refresh(layout, seals, moved)


def _unlink_proven(
    tree: Path, proofs: dict[_Inode, list[_Proof]], moved: dict[_Inode, _Proof]
) -> None:
    for _, _, names, dir_fd in os.fwalk(tree, follow_symlinks=False):
        os.fchmod(dir_fd, 0o700)  # a sealed tree's directories are read-only
        for name in names:
            st = os.lstat(name, dir_fd=dir_fd)
            if not stat.S_ISREG(st.st_mode) or st.st_nlink < 2:
                continue
            inode = (st.st_dev, st.st_ino)
            now = (st.st_size, st.st_mtime_ns, st.st_ctime_ns)
            sha = next((p[3] for p in proofs.get(inode, ()) if p[:3] == now), None)
            if sha is None:
                continue
            flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
            fd = os.open(name, flags, dir_fd=dir_fd)
            try:
                before = os.fstat(fd)
                if (before.st_ino, before.st_ctime_ns) != (st.st_ino, st.st_ctime_ns):
                    continue
                os.unlink(name, dir_fd=dir_fd)
                # The unlink's new ctime would also absorb a write just before it: transfer
                # the proof only with evidence, the inode's content hashed between two equal
                # fstats (this hashes only inodes shared with the removed tree, at removal).
                after = os.fstat(fd)
                if (after.st_size, after.st_mtime_ns) != now[:2]:
                    continue
                with open(fd, "rb", closefd=False) as fh:
                    content = hashlib.file_digest(fh, "sha256").hexdigest()
                again = os.fstat(fd)
            finally:
                os.close(fd)
            if content == sha and _ident_of(again) == _ident_of(after):
                moved[inode] = proofs[inode][0] = (*now[:2], after.st_ctime_ns, sha)


def _ident_of(st: os.stat_result) -> tuple[int, int, int, int, int]:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def _refresh(layout: Layout, seals: dict[str, SealFile], moved: dict[_Inode, _Proof]) -> int:
    if not moved:
        return 0
    try:
        probe_fd, probe = _probe(layout)
    except OSError:
        return 0
    try:
        cut = _tick_after(probe_fd)
    finally:
        os.close(probe_fd)
        with contextlib.suppress(OSError):
            os.unlink(probe)
    if cut is None:
        return 0
    refreshed = 0
    for version, seal in seals.items():
        rows = list(seal.files)
        changed = False
        for i, (path, sha, size, mode, ino, _, _) in enumerate(rows):
            proof = moved.get((seal.dev, ino)) if ino > 0 else None
            if proof is None or proof[2] >= cut or proof[3] != sha:
                continue
            try:
                st = os.lstat(layout.release(version) / path)
            except OSError:
                continue
            if (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns) == (
                seal.dev,
                ino,
                size,
                *proof[1:3],
            ):
                rows[i] = (path, sha, size, mode, ino, proof[1], proof[2])
                changed = True
                refreshed += 1
        if changed:
            data = seal.model_copy(update={"files": rows}).model_dump_json().encode()
            with contextlib.suppress(OSError):
                _write(layout.seal(version), data)
    return refreshed
