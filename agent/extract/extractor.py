"""The safe streaming extractor: turns a verified package's payload into a release tree.

The payload is untrusted until each of its bytes has been matched against the signed manifest, so
the extractor trusts nothing in it and enforces, while streaming (docs/security-model.md):

* **Signed bytes only.** No byte is decompressed before it matched a signed digest, per chunk or
  whole (:func:`agent.extract.checks.payload_checks`); zstd windows are capped at 128 MiB.
* **A small, strict tar dialect** (:mod:`agent.extract._stream`, through the one tar codec
  :mod:`agent.package.ustar`, never the standard library's extractor): regular files,
  directories and symlinks only; every other type, unknown pax keys and non-UTF-8 names refused.
* **The payload is exactly the manifest.** Every member is listed with the same type, mode, size
  and SHA-256 (hashed while writing) or link target, once (also under case-folding and Unicode
  normalisation), after its parent; every entry appears. An unlisted name is reported with the
  :func:`agent.package.manifest.check_relpath` rule it breaks.
* **Caps.** Members: at most ``len(manifest.files)`` and ``limits.max_entries``. Decompressed
  bytes: exactly what the package writer emits for the manifest (:func:`~agent.extract.checks.byte_cap`).
  Path length and depth: ``limits``. Pax headers: 64 KiB. Memory: a few 4 MiB blocks.
* **Writing never follows a symlink.** ``dest`` is created fresh (0700); everything beneath it
  relative to fds of directories this run created, ``O_NOFOLLOW | O_EXCL``; a file created with
  its mode only when the umask leaves it whole (else 0600, its mode once checked: the root is 0700
  until the end, so no one else sees it earlier); symlinks and directory modes last, from the
  manifest; the root becomes 0755.
* **Thin payloads** (a delta upload's ``delta.json``, or a manifest ``payload.base``) hold only
  regular files of the manifest: directories and symlinks come from the manifest, the other
  files from releases on the host (:mod:`agent.extract.reuse`, re-hashed or proven by their
  seal), in directory order (:mod:`agent.extract.thintree`); one neither has fails
  the extraction naming it (``base_missing``). With a reuser, a full payload's file the host
  holds is placed from there too, its (signed) payload bytes skipped.
* **All or nothing.** On any failure ``dest`` is removed (through directory fds, never following
  a symlink) before the error is raised: a caller sees a complete, verified tree or nothing.

Ownership, times and ustar names overridden by pax are never applied. Durability is the caller's
job: one :func:`agent._util.fsutil.syncfs` after extraction instead of an fsync per file.

Here: the public API and the orchestration (:class:`_Extraction`); the codec check, signed input
and decompressor thread in :mod:`agent.extract._source`; the tar parser and byte stream in
:mod:`agent.extract._stream`; the destination, directory fds, writer thread, removal and storage
errors in :mod:`agent.extract._io`. Three threads share the work (docs/design.md, "Extraction
CPU"): one decompresses; the caller's parses, checks, hashes small files and creates directories;
the writer creates the small files whole and streams, hashes and closes the large ones (the
kernel's file creation off the parsing thread; ``os.write`` and ``hashlib`` release the GIL).
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable
from hashlib import sha256
from pathlib import Path
from typing import BinaryIO, Final, cast

from cutover.agent.errors import (
    ArchiveLimitError,
    CutoverError,
    DigestMismatchError,
    ManifestError,
    UnsafeArchiveError,
)
from cutover.agent.extract._io import (
    DirFds,
    check_digest,
    create_file,
    creation_umask,
    discard,
    finish_file,
    make_dest,
    storage_error,
    write_all,
)
from cutover.agent.extract._io import Writer as _Writer  # tests patch it here: archive._Writer
from cutover.agent.extract._source import Producer, check_codec, payload_source
from cutover.agent.extract._source import (
    open_decoder as _open_decoder,  # tests patch archive._open_decoder
)
from cutover.agent.extract._stream import KINDS, REBUILD, REFUSED, Stream, TarParser
from cutover.agent.extract.checks import (
    DEFAULT_LIMITS,
    ExtractLimits,
    byte_cap,
    link_escapes,
    payload_checks,
    verify_payload_digest,
)
from cutover.agent.extract.reuse import Reuser, missing_error
from cutover.agent.extract.stats import ExtractStats
from cutover.agent.extract.thintree import ThinTree
from cutover.agent.package.container import PackageParts
from cutover.agent.package.delta import DeltaPayload
from cutover.agent.package.manifest import (
    DirEntry,
    FileEntry,
    Manifest,
    SymlinkEntry,
    check_relpath,
    fold_key,
)
from cutover.agent.package.ustar import BLOCK, DIR, REG, SYM

__all__ = ["ExtractLimits", "ExtractStats", "extract_payload", "verify_payload_digest"]

# Files from this size go to the writer thread; smaller ones are written inline, where a GIL
# hand-over per file would cost more than the write (measured: bench/extract.py).
WRITER_MIN_BYTES: Final = 64 * 1024
PROGRESS_BYTES: Final = 1 << 20  # file bytes between two progress calls


def extract_payload(
    fh: BinaryIO,
    parts: PackageParts,
    manifest: Manifest,
    dest: Path,
    *,
    progress: Callable[[int], None] | None = None,
    limits: ExtractLimits = DEFAULT_LIMITS,
    already_verified: bool = False,
    delta: DeltaPayload | None = None,
    reuse: Reuser | None = None,
) -> ExtractStats:
    """Extract the payload into the new directory ``dest``, verifying it against ``manifest``.

    The rules are in the module docstring; the payload's chunks are checked as they are read,
    or (no chunks) its whole digest first unless ``already_verified`` says the caller just did so
    on this same, privately held file. Nothing is fsynced: call :func:`agent.fsutil.syncfs` once.

    Args:
        fh: the package file, opened for binary reading.
        parts: the container layout from :func:`agent.package.read_package`.
        manifest: the verified manifest (from :func:`agent.trust.verify_release`).
        dest: a path that does not exist yet, in an existing private directory.
        progress: called with byte counts: compressed bytes while the digest is checked, then
            file bytes as they are extracted (so the total is ``payload.size`` +
            ``total_file_bytes()``, or the latter alone with chunks or ``already_verified``).
        limits: caps on top of the manifest's.
        already_verified: skip a whole-payload digest check (chunks are always checked).
        delta: a delta upload's ``delta.json`` payload description: the payload is thin.
        reuse: where to take files the host already holds (required by a thin payload, or
            every file it lacks is missing).

    Returns:
        Counts of what was written and the elapsed time.

    Raises:
        UnsafeArchiveError: a member is of a refused type, unsafe, unlisted or duplicated.
        ArchiveLimitError: a cap was exceeded.
        DigestMismatchError: the payload, or a file's size or digest or a symlink's target,
            differs from the manifest, or an entry is missing.
        PackageFormatError: the payload is truncated or corrupt.
        StorageError: ``dest`` exists or cannot be written (disk full, permissions).
    """
    started = time.monotonic()
    compression = manifest.payload.compression if delta is None else delta.compression
    check_codec(parts, manifest, compression)
    thin = delta is not None or manifest.payload.base is not None
    cap = byte_cap(manifest, limits, thin)
    chunks = payload_checks(fh, parts, manifest, progress, delta, already_verified)
    producer = Producer(_open_decoder(payload_source(fh, parts, chunks), compression))
    parent_fd, root_fd = make_dest(dest)
    job = _Extraction(manifest, limits, root_fd, dest, progress, thin, reuse)
    try:
        producer.start()
        job.run(Stream(producer.next, cap, job.where))
        job.finish()
    except BaseException as exc:
        producer.stop()
        job.close()
        discard(parent_fd, dest, exc)
        os.close(parent_fd)
        if isinstance(exc, OSError):
            raise storage_error(exc, dest, job.member) from exc
        raise
    producer.stop()
    job.close()
    os.close(parent_fd)
    reused, checks = ({}, {}) if reuse is None else reuse.report()
    seconds = time.monotonic() - started
    return ExtractStats(job.files, job.dirs, job.symlinks, job.bytes, seconds, reused, checks)


class _Extraction(TarParser):
    """One extraction run: parses members, checks them, and creates them under ``root_fd``."""

    def __init__(
        self,
        manifest: Manifest,
        limits: ExtractLimits,
        root_fd: int,
        dest: Path,
        progress: Callable[[int], None] | None,
        thin: bool = False,
        reuse: Reuser | None = None,
    ) -> None:
        super().__init__(len(manifest.files))
        self._base = manifest.payload.base
        self._entries = manifest.entries_by_path()
        self._thin = thin
        self._reuse = reuse
        self._tree = ThinTree(self._entries.values()) if thin else None
        self._limits = limits
        self._progress = progress
        self._unreported = 0
        self._seen: set[str] = set()
        self._umask = creation_umask()
        self._writer = _Writer(dest, self._umask)
        self._dirs = DirFds(root_fd, self._writer.close_dir)
        self._open_fd = -1  # a file being filled: ours to close until the writer gets its close
        self.files = self.dirs = self.symlinks = self.bytes = 0

    def run(self, stream: Stream) -> None:
        """Parse and extract members up to the end-of-archive marker."""
        if self._tree is not None:  # directories come from the manifest (agent/extract/thintree.py)
            self._tree.make_dirs(self._dirs.root, self._thin_dir)
            self._seen.update(e.path for links in self._tree.links.values() for e in links)
            self.member = ""
        self._writer.start()
        super().run(stream)

    def _thin_dir(self, entry: DirEntry) -> None:
        self.member = entry.path
        created = self._dirs.created
        if entry.path.rpartition("/")[0] not in created:
            self._dir_fd(entry.path.rpartition("/")[0])  # raises parent_missing
        created.add(entry.path)
        self._seen.add(entry.path)
        self.dirs += 1

    def _member(
        self, stream: Stream, kind: int, raw: bytes, link: bytes, mode: int, size: int
    ) -> None:
        if kind not in KINDS:
            what = REFUSED.get(kind, f"of unknown type {bytes([kind])!r}")
            raise self._error(
                UnsafeArchiveError,
                f"{raw[:80]!r} is {what}; only regular files, directories and symlinks are allowed",
                "bad_type",
            )
        if self._thin and kind != REG:
            raise self._error(
                UnsafeArchiveError,
                f"{raw[:80]!r} is {KINDS.get(kind, 'not a regular file')} in a thin payload, "
                "which holds regular files only",
                "bad_type",
            )
        if kind == DIR and raw.endswith(b"/"):
            raw = raw[:-1]
        limits = self._limits
        if len(raw) > limits.max_path_bytes or raw.count(b"/") >= limits.max_depth:
            raise self._error(
                ArchiveLimitError,
                f"{raw[:80]!r}... is longer than {limits.max_path_bytes} bytes or deeper than "
                f"{limits.max_depth} levels",
                "path_limit",
            )
        try:
            path = raw.decode()
        except UnicodeDecodeError:
            raise self._error(
                UnsafeArchiveError, f"{raw[:80]!r} is not UTF-8", "unsafe_path"
            ) from None
        self.member = path
        entry = self._entries.get(path)
        if entry is None:
            raise self._unlisted(path)
        if path in self._seen:
            raise self._error(
                UnsafeArchiveError,
                "appears twice (a later copy could replace a checked one)",
                "duplicate",
            )
        self._seen.add(path)
        if mode & ~0o777:
            raise self._error(
                UnsafeArchiveError, f"mode {mode:#o} has setuid, setgid or sticky bits", "bad_mode"
            )
        if size and kind != REG:
            raise self._error(
                UnsafeArchiveError,
                f"is {KINDS[kind]} but carries {size} bytes of data (tar readers disagree on those)",
                "bad_type",
            )
        cls = type(entry)
        if cls is FileEntry and kind == REG:
            self._file(stream, cast(FileEntry, entry), mode, size)
        elif cls is DirEntry and kind == DIR:
            self._dir(cast(DirEntry, entry), mode)
        elif cls is SymlinkEntry and kind == SYM:
            self._symlink(cast(SymlinkEntry, entry), link)
        else:
            listed = {FileEntry: "a file", DirEntry: "a directory", SymlinkEntry: "a symlink"}
            raise self._error(
                UnsafeArchiveError,
                f"is {KINDS[kind]} but the manifest lists {listed[cls]}",
                "type_mismatch",
            )

    def _unlisted(self, path: str) -> CutoverError:
        try:
            check_relpath(path, "name")
        except ManifestError as exc:
            return self._error(UnsafeArchiveError, f"unsafe: {exc}", "unsafe_path")
        twin = {fold_key(p): p for p in self._entries}.get(fold_key(path))
        if twin is not None:
            return self._error(
                UnsafeArchiveError,
                f"collides with {twin!r} under case-folding or Unicode normalisation (one would "
                "overwrite the other on some filesystems)",
                "fold_duplicate",
            )
        return self._error(UnsafeArchiveError, "not listed in the signed manifest", "unlisted")

    def _check_mode(self, mode: int, listed: int) -> None:
        if mode != listed:
            raise self._error(
                UnsafeArchiveError,
                f"mode {mode:#o} differs from the manifest's {listed:#o}",
                "mode_mismatch",
            )

    def _file(self, stream: Stream, entry: FileEntry, mode: int, size: int) -> None:
        if mode != entry.mode:
            self._check_mode(mode, entry.mode)
        if size != entry.size:
            raise self._error(
                DigestMismatchError,
                f"{size} bytes but the manifest says {entry.size}",
                "size_mismatch",
            )
        parent, _, leaf = entry.path.rpartition("/")
        dir_fd = self._dirs.get(parent)
        if dir_fd is None:
            dir_fd = self._dir_fd(parent)
        reuse = self._reuse
        if (
            reuse is not None
            and not self._thin
            and reuse.knows(entry.sha256)
            and reuse.place(entry, dir_fd, leaf) is not None
        ):
            stream.skip(size + (-size % BLOCK))  # signed bytes, not needed: the host has them
            self._count(size)
            return
        writer = self._writer
        if writer.busy():  # the writer is behind: this thread writes the file itself
            self._write_here(stream, dir_fd, leaf, entry)
        elif size < WRITER_MIN_BYTES:  # checked here, created whole by the writer
            view = stream.span(size)
            actual = sha256(view).hexdigest()
            if actual != entry.sha256:
                check_digest(actual, entry)  # raises digest_mismatch
            writer.create(dir_fd, leaf, view, entry)
        else:  # created here, streamed to the writer, which hashes, checks and closes it
            fd = self._open_fd = create_file(dir_fd, leaf, entry.mode, self._umask)
            left = size
            while left:
                view = stream.take(left)
                left -= len(view)
                writer.write(fd, view, entry)
            self._open_fd = -1  # the writer's from here, even if close() raises its error
            writer.close(fd, entry)
        if size % BLOCK:
            stream.skip(BLOCK - size % BLOCK)
        self._count(size)

    def _write_here(self, stream: Stream, dir_fd: int, leaf: str, entry: FileEntry) -> None:
        fd = self._open_fd = create_file(dir_fd, leaf, entry.mode, self._umask)
        digest = sha256()
        left = entry.size
        while left:
            view = stream.take(left)
            left -= len(view)
            digest.update(view)
            write_all(fd, view)
        check_digest(digest.hexdigest(), entry)
        finish_file(fd, entry.mode, self._umask)
        self._open_fd = -1
        os.close(fd)

    def _count(self, size: int) -> None:
        self.files += 1
        self.bytes += size
        if self._progress is not None:
            self._unreported += size
            if self._unreported >= PROGRESS_BYTES:
                self._progress(self._unreported)
                self._unreported = 0

    def _dir(self, entry: DirEntry, mode: int) -> None:
        self._check_mode(mode, entry.mode)
        parent = entry.path.rpartition("/")[0]
        if parent not in self._dirs.created:
            self._dir_fd(parent)  # raises parent_missing
        self._dirs.mkdir(entry.path)
        self.dirs += 1

    def _symlink(self, entry: SymlinkEntry, raw_target: bytes) -> None:
        # Only checked here; created in finish(), so nothing is ever written beneath a symlink.
        target = raw_target.decode("utf-8", "replace")
        if target == entry.symlink:
            return
        if link_escapes(entry.path, target):
            raise self._error(
                UnsafeArchiveError,
                f"symlink to {target[:80]!r} points outside the release (the manifest says "
                f"{entry.symlink!r})",
                "symlink_escape",
            )
        raise self._error(
            DigestMismatchError,
            f"symlink to {target[:80]!r} but the manifest says {entry.symlink!r}",
            "symlink_mismatch",
        )

    def _finish_thin(self, tree: ThinTree) -> None:
        """Place every file the thin payload did not carry from the host, create the symlinks
        and set the directory modes, in one walk (agent/extract/thintree.py); or name what the
        host lacks."""
        missing: list[str] = []
        reuse, seen, count = self._reuse, self._seen, self._count

        def place(entry: FileEntry, dir_fd: int, leaf: str) -> bool:
            if entry.path in seen:  # the payload carried it
                return True
            self.member = entry.path
            if reuse is None or reuse.place(entry, dir_fd, leaf) is None:
                missing.append(entry.path)
                return False
            count(entry.size)
            return True

        def link(entry: SymlinkEntry, dir_fd: int, leaf: str) -> None:
            self.member = entry.path
            os.symlink(entry.symlink, leaf, dir_fd=dir_fd)
            self.symlinks += 1

        tree.finish(self._dirs.root, place, link)
        self.member = ""
        if missing:
            raise missing_error(missing, self._base)

    def _dir_fd(self, path: str) -> int:
        """An fd of directory ``path`` created by this run, opened without following links."""
        fd = self._dirs.get(path)
        if fd is not None:
            return fd
        if path not in self._dirs.created:
            raise self._error(
                UnsafeArchiveError,
                f"comes before its parent directory {path!r}; packages list parents first",
                "parent_missing",
            )
        return self._dirs.open(path)

    def finish(self) -> None:
        """Wait for the writer, check completeness, create symlinks, set directory modes."""
        self.index, self.member = 0, ""
        self._writer.finish()  # its errors concern earlier members: report them first
        if self._tree is not None:
            self._finish_thin(self._tree)
        elif len(self._seen) != len(self._entries):
            missing = [p for p in self._entries if p not in self._seen]
            raise DigestMismatchError(
                f"payload lacks {len(missing)} entries the manifest lists, e.g. {missing[0]!r}; "
                f"{REBUILD}",
                code="missing",
            )
        else:
            for entry in self._entries.values():
                if isinstance(entry, SymlinkEntry):
                    self.member = entry.path
                    parent, _, leaf = entry.path.rpartition("/")
                    os.symlink(entry.symlink, leaf, dir_fd=self._dir_fd(parent))
                    self.symlinks += 1
            for entry in self._entries.values():
                if isinstance(entry, DirEntry):
                    self.member = entry.path
                    os.fchmod(self._dir_fd(entry.path), entry.mode)
        self.member = ""
        os.fchmod(self._dirs.root, 0o755)
        if self._progress is not None and self._unreported:
            self._progress(self._unreported)

    def close(self) -> None:
        """Release every fd, after stopping the writer (which may still be using some)."""
        self._writer.abort()
        self._dirs.close_all()
        if self._open_fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self._open_fd)
            self._open_fd = -1
