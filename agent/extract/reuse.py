"""Reuse: take a release file from a release already on the host instead of from the payload.

While a release is staged, a regular file whose SHA-256 the host already holds (the content
index, :mod:`agent.host.content`) is placed from that older release: cloned, hardlinked or copied
(docs/lifecycle.md, "Reusing files already on the host"). Rules enforced here:

* **Never through a link, never outside the app root.** The source is opened relative to an fd of
  ``releases/``, one component at a time, with ``O_NOFOLLOW`` (directories with ``O_DIRECTORY``),
  so a symlink planted in an older release fails the open instead of being followed. The file
  itself is opened ``O_NONBLOCK`` (a FIFO swapped in cannot hang the stage).
* **The source is checked, not believed.** It must be a regular file whose size is the one both
  manifests give; its content is hashed and must equal the new manifest's SHA-256 (a drifted
  older release is never copied into a new one), unless ``fstat`` of the opened fd gives exactly
  the identity its release's seal recorded (device, inode, size, mtime, ctime: unchanged since
  its content was checked, :mod:`agent.host.seal`). A candidate that fails is skipped (the next
  one is tried, then the payload; a thin payload then fails naming the file).
* **The method is chosen for safety** (``reuse`` in the app's agent config):

  - *reflink* (``FICLONE``): tried first in ``auto`` mode; a copy-on-write clone shares no
    writable data with the source, so nothing written later reaches the older release. If the
    filesystem refuses (``EOPNOTSUPP``, ``EXDEV``, ``EINVAL``, ``ENOTTY``), it is not tried again
    in this run.
  - *hardlink*: shares the inode, its data and its mode with the older release. Hooks run as the
    user owning release files (root), so mode bits cannot stop a hook writing in place into it:
    ``auto`` hardlinks only when the release declares no hook that runs inside the new tree
    before it is sealed (``stage``, ``pre_activate``), ``hardlink`` is the operator asserting
    hooks never write in place. Both also need an identical manifest mode and a sealed
    (write-protected) source. A source proven by hashing is linked as the verified open file
    itself (``/proc/self/fd``; without ``/proc`` by name, then checked to be the verified
    inode). A source proven by its sealed identity takes a shorter path with the same proof
    (:meth:`Reuser._link_sealed`): ``lstat`` by name in its directory's fd, link by name, and
    ``lstat`` of the new name, which must be the inode whose identity matched; the identities
    read then are what the new release's seal records for those files (:meth:`Reuser.placed`).
  - *copy*: an in-kernel copy (``copy_file_range``, else ``sendfile``), given the manifest mode.

Counts per method (files and bytes) are kept for the stage record, and per check: sources hashed,
and sources taken on their sealed identity without hashing.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import os
import stat
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Final, NamedTuple

from cutover.agent._util.fsutil import start_writeback
from cutover.agent.errors import DigestMismatchError
from cutover.agent.extract._io import DIR_FLAGS, FILE_FLAGS
from cutover.agent.package.manifest import FileEntry

__all__ = ["CHECKS", "METHODS", "Candidate", "Identity", "Reuser", "missing_error"]

FICLONE: Final = 0x40049409  # _IOW(0x94, 9, int), linux/fs.h
METHODS: Final = ("reflink", "hardlink", "copy")
CHECKS: Final = ("hashed", "sealed")  # how a source was proven: re-hashed, or its sealed identity
_SOURCE_FLAGS: Final = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_NO_REFLINK: Final = frozenset({errno.EOPNOTSUPP, errno.EXDEV, errno.EINVAL, errno.ENOTTY})
_NO_COPY_RANGE: Final = frozenset({errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP})
_MAX_DIR_FDS: Final = 256  # source directories kept open (more: all closed, then reopened)
_READ: Final = 1 << 20  # bytes per read while hashing a source


Identity = tuple[int, int, int, int, int]  # st_dev, st_ino, st_size, st_mtime_ns, st_ctime_ns


class Candidate(NamedTuple):
    """An installed file with the wanted content, per its release's manifest (or seal), and
    the identity it had when sealed (None: not sealed, hash it)."""

    version: str
    path: str
    size: int
    mode: int
    ident: Identity | None = None


class Reuser:
    """Places files from older releases into a tree being extracted; one per extraction.

    Args:
        releases: the app's ``releases/`` directory.
        candidates: SHA-256 → installed files with that content, best first (the content
            index; it may read more releases while it is iterated, so it is iterated lazily).
        reflink: try ``FICLONE`` first.
        hardlink: hardlinks are allowed (see the module docstring for when).
    """

    def __init__(
        self,
        releases: Path,
        candidates: Callable[[str], Iterable[Candidate]],
        *,
        reflink: bool,
        hardlink: bool,
    ) -> None:
        self._candidates = candidates
        self._reflink = reflink
        self._hardlink = hardlink
        self._root_fd = os.open(releases, DIR_FLAGS)
        self._dir_fds: dict[str, int] = {}
        self._last_dir: tuple[str, str, int] = ("/", "", -1)  # (version, parent, fd): last used
        self.counts: dict[str, list[int]] = {m: [0, 0] for m in METHODS}
        self.checks: dict[str, list[int]] = {c: [0, 0] for c in CHECKS}
        self._proc_links = os.path.isdir("/proc/self/fd")
        self.refused: list[str] = []  # candidates that failed their check, for the log
        # Hardlinked paths and their inodes, in order (parallel lists: no tuple per file, which
        # would be 19,000 more objects for the cyclic GC to scan), and each inode's lstat right
        # after its latest link (on one device: a hardlink never crosses one).
        self._linked_paths: list[str] = []
        self._linked_inos: list[int] = []
        self._latest: dict[int, os.stat_result] = {}
        # each linked inode's identity when its content was proven (sealed or hashed), before
        # this run's first link of it changed its ctime
        self._proven: dict[int, tuple[int, int, int, int, int]] = {}

    def knows(self, digest: str) -> bool:
        """The host holds (per its manifests) a file with this content."""
        return next(iter(self._candidates(digest)), None) is not None

    def place(self, entry: FileEntry, dir_fd: int, leaf: str) -> str | None:
        """Create ``leaf`` in ``dir_fd`` with ``entry``'s content from an older release.

        Returns:
            The method used, or None if no candidate passed its checks (nothing was created).

        Raises:
            OSError: creating the new file failed (the caller maps it to a StorageError).
        """
        for cand in self._candidates(entry.sha256):
            if (
                cand.ident is not None
                and self._hardlink
                and not self._reflink
                and cand.mode == entry.mode
                and cand.size == entry.size
                and self._link_sealed(cand, entry, dir_fd, leaf)
            ):
                counts = self.counts["hardlink"]
                counts[0] += 1
                counts[1] += entry.size
                return "hardlink"
            src = self._open_source(cand, entry)
            if src is None:
                continue
            fd, st = src
            try:
                method = self._put(fd, st, cand, entry, dir_fd, leaf)
            finally:
                os.close(fd)
            if method == "hardlink":  # the link changed its ctime: remember the identity now
                self._proven.setdefault(
                    st.st_ino, (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
                )
                self._note_link(entry.path, dir_fd, leaf)
            counts = self.counts[method]
            counts[0] += 1
            counts[1] += entry.size
            return method
        return None

    def _link_sealed(self, cand: Candidate, entry: FileEntry, dir_fd: int, leaf: str) -> bool:
        """The fast path for a sealed source that may be hardlinked: ``lstat`` it by name (in its
        directory's fd, never through a link), link it by name if its identity is exactly the
        sealed one and it is write-protected, then ``lstat`` the new name: it must be that very
        inode (else it is unlinked: the name was swapped in between). Three syscalls instead of
        open, fstat, link through ``/proc/self/fd`` and close; the proof is the same (the
        identity the seal recorded, of the inode that is linked). False: nothing was created,
        and the caller takes the general path (which records why, or hashes, or copies)."""
        parent, _, name = cand.path.rpartition("/")
        try:
            if parent == self._last_dir[1] and cand.version == self._last_dir[0]:
                src_dir = self._last_dir[2]  # tree order: the same directory as the last file's
            else:
                src_dir = self._dir_fd(cand.version, parent)
                self._last_dir = (cand.version, parent, src_dir)
            st = os.lstat(name, dir_fd=src_dir)
        except OSError:
            return False
        ident = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
        if st.st_mode & 0o170222 != stat.S_IFREG:  # a regular file, no write bit
            return False
        if ident != cand.ident:
            # Linked earlier in this run (a second path with the same content): its identity
            # is the one read right after that link, which changed only its ctime. That vouches
            # only for the inode this candidate's seal describes (its identity when proven): a
            # sealed name later swapped for a link to another reused inode is not it.
            mine = self._latest.get(st.st_ino)
            if mine is None or cand.ident != self._proven.get(st.st_ino):
                return False
            if ident != (
                mine.st_dev,
                mine.st_ino,
                mine.st_size,
                mine.st_mtime_ns,
                mine.st_ctime_ns,
            ):
                return False
        try:
            os.link(name, leaf, src_dir_fd=src_dir, dst_dir_fd=dir_fd, follow_symlinks=False)
        except OSError as exc:
            if exc.errno not in (errno.EXDEV, errno.EMLINK, errno.EPERM):
                raise
            return False
        new = os.lstat(leaf, dir_fd=dir_fd)
        if (new.st_dev, new.st_ino) != (st.st_dev, st.st_ino):
            os.unlink(leaf, dir_fd=dir_fd)  # another inode was linked: not the one checked
            return False
        check = self.checks["sealed"]
        check[0] += 1
        check[1] += entry.size
        self._proven.setdefault(st.st_ino, ident)
        self._remember(entry.path, new)
        return True

    def _note_link(self, path: str, dir_fd: int, leaf: str) -> None:
        """After a hardlink on the general path (its source hashed): its identity now."""
        self._remember(path, os.lstat(leaf, dir_fd=dir_fd))

    def _remember(self, path: str, new: os.stat_result) -> None:
        # The link changed the inode's ctime: this is its identity now (a later link of the
        # same inode into this tree replaces it; placed() gives each path the latest).
        self._linked_paths.append(path)
        self._linked_inos.append(new.st_ino)
        self._latest[new.st_ino] = new

    def placed(self) -> dict[str, os.stat_result]:
        """Path → ``lstat`` read right after this run hardlinked it (its source proven by its
        sealed identity or by hashing), the latest one per inode: what sealing the new release
        would read with ``lstat`` if nothing changed the inode since
        (:func:`agent.host.seal.seal_release`)."""
        latest = self._latest
        return dict(
            zip(self._linked_paths, map(latest.__getitem__, self._linked_inos), strict=True)
        )

    def _open_source(self, cand: Candidate, entry: FileEntry) -> tuple[int, os.stat_result] | None:
        where = f"{cand.version}/{cand.path}"
        if cand.size != entry.size:
            self.refused.append(f"{where}: manifest size {cand.size}, wanted {entry.size}")
            return None
        parent, _, leaf = cand.path.rpartition("/")
        try:
            dir_fd = self._dir_fd(cand.version, parent)
            fd = os.open(leaf, _SOURCE_FLAGS, dir_fd=dir_fd)
        except OSError as exc:
            self.refused.append(f"{where}: {exc.strerror}")
            return None
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode) or st.st_size != entry.size:
                self.refused.append(f"{where}: not a regular file of {entry.size} bytes")
                os.close(fd)
                return None
            # Its sealed identity, exactly: unchanged since its content was checked.
            ident = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
            sealed = cand.ident is not None and cand.ident == ident
            check = self.checks["sealed" if sealed else "hashed"]
            check[0] += 1
            check[1] += entry.size
            if not sealed and _sha256(fd, entry.size) != (entry.sha256, entry.size):
                self.refused.append(f"{where}: content differs from its manifest (drift)")
                os.close(fd)
                return None
        except BaseException:
            with contextlib.suppress(OSError):
                os.close(fd)
            raise
        return fd, st

    def _dir_fd(self, version: str, parent: str) -> int:
        """An fd of ``releases/<version>/<parent>``, each component opened without following
        (from the cached fd of its own parent: one ``open`` per directory, not one per level)."""
        key = f"{version}/{parent}" if parent else version
        fd = self._dir_fds.get(key)
        if fd is not None:
            return fd
        if len(self._dir_fds) >= _MAX_DIR_FDS:
            self.close_dirs()
        return self._open_dir(version, parent, key)

    def _open_dir(self, version: str, parent: str, key: str) -> int:
        if parent:
            up, _, name = parent.rpartition("/")
            up_fd = self._dir_fds.get(f"{version}/{up}" if up else version)
            if up_fd is None:
                up_fd = self._open_dir(version, up, f"{version}/{up}" if up else version)
        else:
            up_fd, name = self._root_fd, version
        fd = self._dir_fds[key] = os.open(name, DIR_FLAGS, dir_fd=up_fd)
        return fd

    def _put(
        self,
        src: int,
        st: os.stat_result,
        cand: Candidate,
        entry: FileEntry,
        dir_fd: int,
        leaf: str,
    ) -> str:
        if self._reflink:
            dst = os.open(leaf, FILE_FLAGS, 0o600, dir_fd=dir_fd)
            try:
                fcntl.ioctl(dst, FICLONE, src)
            except OSError as exc:
                os.close(dst)
                os.unlink(leaf, dir_fd=dir_fd)
                if exc.errno not in _NO_REFLINK:
                    raise
                self._reflink = False  # this filesystem has none: do not try 20,000 times
            else:
                self._seal(dst, entry)
                return "reflink"
        sealed = not st.st_mode & 0o222  # the inode's mode is shared: it must stay as sealed
        if (
            self._hardlink
            and cand.mode == entry.mode
            and sealed
            and self._link_fd(src, st, cand, dir_fd, leaf)
        ):
            return "hardlink"
        dst = os.open(leaf, FILE_FLAGS, 0o600, dir_fd=dir_fd)
        try:
            _copy(src, dst, entry.size)
        except BaseException:
            os.close(dst)
            raise
        self._seal(dst, entry)
        return "copy"

    def _link_fd(
        self, src: int, st: os.stat_result, cand: Candidate, dir_fd: int, leaf: str
    ) -> bool:
        """Hardlink the verified inode itself as ``leaf``: through ``/proc/self/fd`` (linkat
        with AT_SYMLINK_FOLLOW links the open file, not a name that could be swapped), else by
        name, then checked to be that inode. False: this filesystem cannot (copy instead)."""
        try:
            if self._proc_links:
                try:
                    os.link(f"/proc/self/fd/{src}", leaf, dst_dir_fd=dir_fd, follow_symlinks=True)
                    return True
                except FileNotFoundError:  # no /proc: link by name below
                    self._proc_links = False
            parent, _, name = cand.path.rpartition("/")
            src_dir = self._dir_fd(cand.version, parent)
            os.link(name, leaf, src_dir_fd=src_dir, dst_dir_fd=dir_fd, follow_symlinks=False)
        except OSError as exc:
            if exc.errno not in (errno.EXDEV, errno.EMLINK, errno.EPERM):
                raise
            return False
        linked = os.stat(leaf, dir_fd=dir_fd, follow_symlinks=False)
        if (linked.st_dev, linked.st_ino) == (st.st_dev, st.st_ino):
            return True
        os.unlink(leaf, dir_fd=dir_fd)  # the name was swapped since it was checked
        return False

    @staticmethod
    def _seal(fd: int, entry: FileEntry) -> None:
        try:
            os.fchmod(fd, entry.mode)
            start_writeback(fd)
        finally:
            os.close(fd)

    def report(self) -> tuple[dict[str, tuple[int, int]], dict[str, int]]:
        """(files, bytes) per method used; and ``reuse_<check>_files``/``_bytes`` per check made
        (``hashed``: the source re-hashed; ``sealed``: taken on its sealed identity, unhashed)."""
        used = {m: (n, b) for m, (n, b) in self.counts.items() if n}
        checks = {}
        for check, (n, b) in self.checks.items():
            if n:
                checks[f"reuse_{check}_files"], checks[f"reuse_{check}_bytes"] = n, b
        return used, checks

    def close_dirs(self) -> None:
        self._last_dir = ("/", "", -1)  # no version holds a "/"
        for fd in self._dir_fds.values():
            with contextlib.suppress(OSError):
                os.close(fd)
        self._dir_fds.clear()

    def close(self) -> None:
        """Release every fd (idempotent)."""
        self.close_dirs()
        if self._root_fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self._root_fd)
            self._root_fd = -1


def _sha256(fd: int, size: int) -> tuple[str, int]:
    """SHA-256 and length of the file behind ``fd``, read with ``pread`` (no file object; one
    read for a file under 1 MiB: asking one byte more than ``size`` shows the end at once)."""
    digest = hashlib.sha256()
    offset = 0
    while True:
        want = min(size - offset + 1, _READ) if offset <= size else 1
        chunk = os.pread(fd, want, offset)
        digest.update(chunk)
        offset += len(chunk)
        if len(chunk) < want or offset > size:
            return digest.hexdigest(), offset


def _copy(src: int, dst: int, size: int) -> None:
    """Copy ``size`` bytes in the kernel: ``copy_file_range``, else ``sendfile``, else read/write."""
    offset = 0
    use_range = True
    while offset < size:
        if use_range:
            try:
                n = os.copy_file_range(src, dst, size - offset, offset, offset)
            except OSError as exc:
                if exc.errno not in _NO_COPY_RANGE:
                    raise
                use_range = False
                continue
        else:
            os.lseek(dst, offset, os.SEEK_SET)
            n = os.sendfile(dst, src, offset, size - offset)
        if n == 0:
            raise OSError(errno.EIO, "the source file ended early while it was copied")
        offset += n


def missing_error(missing: list[str], base: str | None) -> DigestMismatchError:
    """A thin payload lacks files the host does not hold: name them (first 20) and what to do."""
    shown = ", ".join(repr(p) for p in missing[:20])
    more = f" and {len(missing) - 20} more" if len(missing) > 20 else ""
    where = f"base {base}" if base else "releases on this host"
    return DigestMismatchError(
        f"the thin payload lacks {len(missing)} files that this host does not hold (from "
        f"{where}, per their manifests and contents): {shown}{more}; push the full package "
        "instead (`cutover push --no-delta`, or a package built without --base)",
        code="base_missing",
    )
