"""The safe streaming extractor: turns a verified package's payload into a release tree.

The payload is untrusted until each of its bytes has been matched against the signed manifest, so
this module trusts nothing in it and enforces, while streaming (docs/security-model.md):

* **Signed bytes only.** The compressed payload's size and SHA-256 must equal ``manifest.payload``
  before a single byte is decompressed (:func:`verify_payload_digest`). The codec comes from the
  manifest; zstd windows are capped at 128 MiB (the zstd CLI default), so a frame cannot demand
  unbounded memory.
* **A small, strict tar dialect**, parsed here (never ``tarfile.extract``): POSIX ustar headers with
  valid checksums, each optionally preceded by one local pax header whose only effective keys are
  ``path``, ``linkpath`` and ``size``. Members are regular files, directories or symlinks.
  Hardlinks, devices, FIFOs, GNU long names and sparse files, global pax headers, unknown or
  repeated pax keys, non-UTF-8 names, setuid/setgid/sticky modes and data on non-files are refused.
* **The payload is exactly the manifest.** Every member is listed in the manifest with the same
  type, mode, size and SHA-256 (hashed while writing) or symlink target; it appears once (also
  under case-folding and Unicode normalisation, :func:`agent.manifest.fold_key`) and after its
  parent directory; every manifest entry appears. A name the manifest does not list is reported
  with the :func:`agent.manifest.check_relpath` rule it breaks (``..``, absolute, backslash,
  control character, NUL).
* **Caps.** Members: at most ``len(manifest.files)`` and ``limits.max_entries``. Decompressed bytes:
  at most what the manifest's entries need in tar form plus ``limits.per_entry_allowance`` per
  entry. Path length and depth: ``limits``. Pax headers: 64 KiB. Memory: bounded queues of at most
  1 MiB chunks; no file is ever held in memory whole.
* **Writing never follows a symlink.** ``dest`` is created fresh (0700) and everything beneath it
  is created relative to file descriptors of directories this run created, with
  ``O_NOFOLLOW | O_EXCL``. Files are created 0600 and get their manifest mode once written.
  Symlinks are created last, from the manifest; directories get their manifest modes last, and
  the release root becomes 0755 like every shipped directory.
* **All or nothing.** On any failure ``dest`` is removed (through directory fds, never following
  a symlink) before the error is raised: a caller sees a complete, verified tree or nothing.

Ownership, times and ustar names overridden by pax are never applied. Durability is the caller's
job: one :func:`agent.fsutil.syncfs` after extraction instead of an fsync per file.

Three threads share the work: one decompresses (the codecs release the GIL); the caller's parses
headers, checks names, creates files and directories, and writes and hashes small files; one
writes, hashes and closes large files (``os.write`` and ``hashlib`` release the GIL for long
stretches there), so the page-cache copy of the bulk of the bytes overlaps parsing.

Known limit: python-zstandard's stream reader does not report a zstd frame cut short *after* the
tar end-of-archive marker. That cannot change what is extracted (every entry is verified), and
the compressed bytes were signed.
"""

from __future__ import annotations

import contextlib
import errno
import gzip
import hashlib
import os
import posixpath
import queue
import re
import struct
import threading
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Final, cast

import zstandard

from agent.errors import (
    ArchiveLimitError,
    CutoverError,
    DigestMismatchError,
    ManifestError,
    PackageFormatError,
    StorageError,
    UnsafeArchiveError,
)
from agent.manifest import DirEntry, FileEntry, Manifest, SymlinkEntry, check_relpath, fold_key
from agent.package import PackageParts, hash_payload

__all__ = ["ExtractLimits", "ExtractStats", "extract_payload", "verify_payload_digest"]

BLOCK: Final = 512
CHUNK: Final = 1 << 20  # decompressed bytes per queue item, and the largest single write
DECOMPRESS_QUEUE: Final = 6  # chunks in flight from the decompressor thread
WRITE_QUEUE: Final = 4  # batches in flight to the writer thread
WRITE_BATCH_FILES: Final = 32  # files per batch; with WRITE_QUEUE bounds open file fds (~200)
MAX_OPEN_DIRS: Final = 64  # directory fds kept open; the others are reopened on demand
# Files from this size go to the writer thread; smaller ones are written inline, where a GIL
# hand-over per file would cost more than the write (measured: bench/extract.py).
WRITER_MIN_BYTES: Final = 64 * 1024
MAX_WINDOW: Final = 1 << 27
MAX_PAX_BYTES: Final = 64 * 1024
_ZERO_BLOCK: Final = bytes(BLOCK)
_MAGIC: Final = b"ustar\x0000"
# name mode uid gid size mtime chksum typeflag linkname magic+version uname gname dev dev prefix
_HEADER: Final = struct.Struct("100s8s8s8s12s12s8sB100s8s32s32s8s8s155s12x")
_OCTAL: Final = re.compile(rb"([0-7]{1,12})[ \x00]*")
_REG, _SYM, _DIR, _PAX = b"025x"
_KINDS: Final = {_REG: "a regular file", _DIR: "a directory", _SYM: "a symlink"}
_REFUSED: Final = {
    ord("1"): "a hardlink",
    ord("3"): "a character device",
    ord("4"): "a block device",
    ord("6"): "a FIFO",
    ord("7"): "a contiguous file",
    ord("g"): "a global pax header",
    ord("L"): "a GNU long-name header",
    ord("K"): "a GNU long-link header",
    ord("S"): "a GNU sparse file",
    0: "an old-style (pre-POSIX) entry",
}
_IGNORED_PAX: Final = frozenset(
    {"mtime", "atime", "ctime", "uid", "gid", "uname", "gname", "comment"}
)
_UTF8_CHARSET: Final = b"ISO-IR 10646 2000 UTF-8"
_DIR_FLAGS: Final = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS: Final = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_REBUILD: Final = (
    "the package is corrupt, was not made by `cutover build`, or was tampered with: do not "
    "deploy it; rebuild and re-sign the release"
)


@dataclass(frozen=True)
class ExtractLimits:
    """Caps applied while extracting, on top of what the manifest itself allows.

    Attributes:
        max_entries: most members a payload may hold.
        per_entry_allowance: extra decompressed bytes tolerated per entry (e.g. 1024 for tar
            writers that add pax time records); 0 fits ``cutover build``.
        max_depth: most path components.
        max_path_bytes: longest path, in UTF-8 bytes.
    """

    max_entries: int = 1_000_000
    per_entry_allowance: int = 0
    max_depth: int = 128
    max_path_bytes: int = 4096


@dataclass(frozen=True)
class ExtractStats:
    """What an extraction wrote: counts, file bytes, and wall time in seconds."""

    files: int
    dirs: int
    symlinks: int
    bytes: int
    seconds: float


def verify_payload_digest(
    fh: BinaryIO,
    parts: PackageParts,
    manifest: Manifest,
    progress: Callable[[int], None] | None = None,
) -> None:
    """Check the compressed payload's codec, size and SHA-256 against the signed manifest.

    Must run before any payload byte is decompressed: it is what makes the decompressor see only
    signed bytes. :func:`extract_payload` calls it unless told it already ran.

    Args:
        fh: the package file, opened for binary reading.
        parts: the container layout from :func:`agent.package.read_package`.
        manifest: the verified manifest (from :func:`agent.trust.verify_release`).
        progress: called with byte counts as the payload is hashed.

    Raises:
        PackageFormatError: the payload member's codec is not the manifest's, or the file ends early.
        DigestMismatchError: size or SHA-256 differs from ``manifest.payload``.
        StorageError: the package file cannot be read.
    """
    _check_codec(parts, manifest)
    expected = manifest.payload
    if parts.payload_size != expected.size:
        raise DigestMismatchError(
            f"payload {parts.payload_name!r} is {parts.payload_size} bytes but the signed "
            f"manifest says {expected.size}; {_REBUILD}",
            code="payload_size",
        )
    try:
        actual = hash_payload(fh, parts, progress)
    except OSError as exc:
        raise StorageError(
            f"cannot read the package payload: {exc.strerror or exc}; check the file and retry"
        ) from exc
    if actual != expected.sha256:
        raise DigestMismatchError(
            f"payload {parts.payload_name!r} has sha256 {actual[:16]}… but the signed manifest "
            f"says {expected.sha256[:16]}…; {_REBUILD}",
            code="payload_digest",
        )


def extract_payload(
    fh: BinaryIO,
    parts: PackageParts,
    manifest: Manifest,
    dest: Path,
    *,
    progress: Callable[[int], None] | None = None,
    limits: ExtractLimits = ExtractLimits(),
    already_verified: bool = False,
) -> ExtractStats:
    """Extract the payload into the new directory ``dest``, verifying it against ``manifest``.

    The rules are in the module docstring. The payload digest is checked first
    (:func:`verify_payload_digest`) unless ``already_verified`` says the caller just did so on
    this same, privately held file. Nothing is fsynced: call :func:`agent.fsutil.syncfs` once.

    Args:
        fh: the package file, opened for binary reading.
        parts: the container layout from :func:`agent.package.read_package`.
        manifest: the verified manifest (from :func:`agent.trust.verify_release`).
        dest: a path that does not exist yet, in an existing private directory.
        progress: called with byte counts: compressed bytes while the digest is checked, then
            file bytes as they are extracted (so the total is ``payload.size`` +
            ``total_file_bytes()``, or just the latter when ``already_verified``).
        limits: caps on top of the manifest's.
        already_verified: skip the payload digest check (the caller just ran it).

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
    _check_codec(parts, manifest)
    cap = _byte_cap(manifest, limits)
    if not already_verified:
        verify_payload_digest(fh, parts, manifest, progress)
    producer = _Producer(_open_decoder(fh, parts, manifest.payload.compression))
    parent_fd, root_fd = _make_dest(dest)
    job = _Extraction(manifest, limits, root_fd, dest, progress)
    try:
        producer.start()
        job.run(_Stream(producer.next, cap, job.where))
        job.finish()
    except BaseException as exc:
        producer.stop()
        job.close()
        _discard(parent_fd, dest, exc)
        os.close(parent_fd)
        if isinstance(exc, OSError):
            raise _storage_error(exc, dest, job.member) from exc
        raise
    producer.stop()
    job.close()
    os.close(parent_fd)
    return ExtractStats(job.files, job.dirs, job.symlinks, job.bytes, time.monotonic() - started)


def _check_codec(parts: PackageParts, manifest: Manifest) -> None:
    if parts.payload_compression != manifest.payload.compression:
        raise PackageFormatError(
            f"package member {parts.payload_name!r} does not match the signed manifest's payload "
            f"compression {manifest.payload.compression!r}; {_REBUILD}",
            code="payload_codec",
        )


def _byte_cap(manifest: Manifest, limits: ExtractLimits) -> int:
    """Most decompressed bytes a payload for ``manifest`` may hold; checks the limits on it."""
    if len(manifest.files) > limits.max_entries:
        raise ArchiveLimitError(
            f"manifest lists {len(manifest.files)} entries; this host allows at most "
            f"{limits.max_entries}: split the release or raise the limit",
            code="too_many_entries",
        )
    total = 2 * BLOCK + 10240  # end-of-archive marker, then padding to a 10 KiB tar record
    for e in manifest.files:
        name = len(e.path.encode())
        if name > limits.max_path_bytes or e.path.count("/") >= limits.max_depth:
            raise ArchiveLimitError(
                f"manifest entry {e.path[:80]!r} exceeds this host's limits of "
                f"{limits.max_path_bytes} bytes and {limits.max_depth} levels per path",
                code="path_limit",
            )
        link = len(e.symlink.encode()) if isinstance(e, SymlinkEntry) else 0
        data = e.size if isinstance(e, FileEntry) else 0
        # ustar header + data padded to a block + a pax header carrying path, linkpath and size.
        total += 2 * BLOCK + _padded(data) + _padded(name + link + 64) + limits.per_entry_allowance
    return total


def _padded(n: int) -> int:
    return -(-n // BLOCK) * BLOCK


def _make_dest(dest: Path) -> tuple[int, int]:
    """Create ``dest`` (0700); return (parent fd, dest fd)."""
    try:
        parent_fd = os.open(dest.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        raise StorageError(
            f"cannot open {dest.parent} to extract into: {exc.strerror}; create it (or fix its "
            "permissions) first",
            code="no_parent",
        ) from exc
    try:
        os.mkdir(dest.name, 0o700, dir_fd=parent_fd)
    except OSError as exc:
        os.close(parent_fd)
        if exc.errno == errno.EEXIST:
            raise StorageError(
                f"{dest} exists already; extraction needs a fresh directory (remove it or "
                "choose another)",
                code="dest_exists",
            ) from exc
        raise _storage_error(exc, dest, "") from exc
    try:
        return parent_fd, os.open(dest.name, _DIR_FLAGS, dir_fd=parent_fd)
    except OSError as exc:
        _discard(parent_fd, dest, exc)
        os.close(parent_fd)
        raise _storage_error(exc, dest, "") from exc


def _storage_error(exc: OSError, dest: Path, member: str) -> StorageError:
    where = f"{dest}/{member}" if member else str(dest)
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return StorageError(
            f"disk full on {dest} while writing {where}: free space (e.g. `cutover-agent prune`) "
            "and retry; nothing was kept",
            code="disk_full",
        )
    return StorageError(
        f"cannot write {where}: {exc.strerror or exc}; check the filesystem and the permissions "
        f"of {dest.parent}, then retry",
        code="io_error",
    )


def _discard(parent_fd: int, dest: Path, exc: BaseException) -> None:
    """Remove the partial tree; failing to is noted on ``exc``, never raised instead of it."""
    try:
        _remove_tree(parent_fd, dest.name)
    except OSError as cleanup:
        exc.add_note(
            f"could not remove the partial extraction {dest}: {cleanup.strerror}; remove it by hand"
        )


def _remove_tree(parent_fd: int, name: str) -> None:
    """``rm -rf parent/name`` through directory fds: never follows a symlink."""
    fd = os.open(name, _DIR_FLAGS, dir_fd=parent_fd)
    try:
        os.fchmod(fd, 0o700)  # a directory may already carry a read-only manifest mode
        with os.scandir(fd) as it:
            children = [(e.name, e.is_dir(follow_symlinks=False)) for e in it]
        for child, is_dir in children:
            if is_dir:
                _remove_tree(fd, child)
            else:
                os.unlink(child, dir_fd=fd)
    finally:
        os.close(fd)
    os.rmdir(name, dir_fd=parent_fd)


# -- decompression ------------------------------------------------------------------------------


class _PayloadSource:
    """The payload member's bytes, read from the package file; a short read means truncation."""

    def __init__(self, fh: BinaryIO, parts: PackageParts) -> None:
        self._fh = fh
        self._left = parts.payload_size
        fh.seek(parts.payload_offset)

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        n = self._left if size < 0 else min(size, self._left)
        data = self._fh.read(n)
        if len(data) < n:
            raise PackageFormatError(
                "the package file ended inside the payload (was it changed or truncated during "
                "extraction?); upload it again",
                code="truncated",
            )
        self._left -= n
        return data


def _open_decoder(fh: BinaryIO, parts: PackageParts, compression: str) -> Callable[[int], bytes]:
    source = _PayloadSource(fh, parts)
    if compression == "zstd":
        dctx = zstandard.ZstdDecompressor(max_window_size=MAX_WINDOW)
        reader = dctx.stream_reader(
            cast(BinaryIO, source), read_size=CHUNK, read_across_frames=True
        )
        return reader.read
    if compression == "gzip":
        return gzip.GzipFile(fileobj=cast(BinaryIO, source), mode="rb").read
    return source.read


class _Producer:
    """Decompresses on its own thread into a bounded queue of chunks (or the error it met)."""

    def __init__(self, read: Callable[[int], bytes]) -> None:
        self._read = read
        self._queue: queue.Queue[bytes | BaseException] = queue.Queue(DECOMPRESS_QUEUE)
        self._halt = threading.Event()
        self._done = False
        self._thread = threading.Thread(target=self._run, name="cutover-decompress", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        try:
            while not self._halt.is_set():
                data = self._read(CHUNK)
                self._put(data)
                if not data:
                    return
        except (zstandard.ZstdError, EOFError, zlib.error, gzip.BadGzipFile) as exc:
            self._put(_corrupt(exc))
        except OSError as exc:
            self._put(
                StorageError(
                    f"cannot read the package payload: {exc.strerror or exc}; check the file "
                    "and retry"
                )
            )
        except BaseException as exc:  # anything else still reaches the caller: never a hang
            self._put(exc)

    def _put(self, item: bytes | BaseException) -> None:
        while not self._halt.is_set():
            with contextlib.suppress(queue.Full):
                self._queue.put(item, timeout=0.1)
                return

    def next(self) -> bytes:
        """The next chunk; ``b""`` at the end of the stream."""
        if self._done:
            return b""
        item = self._queue.get()
        if isinstance(item, BaseException):
            self._done = True
            raise item
        self._done = not item
        return item

    def stop(self) -> None:
        self._halt.set()
        while self._thread.is_alive():  # make room so a blocked put returns at once
            with contextlib.suppress(queue.Empty):
                self._queue.get(timeout=0.01)


def _corrupt(exc: BaseException) -> PackageFormatError:
    return PackageFormatError(
        f"payload does not decompress ({type(exc).__name__}: {exc}); {_REBUILD}", code="corrupt"
    )


class _Stream:
    """The decompressed tar stream as blocks and byte runs; enforces the decompressed-byte cap."""

    def __init__(self, next_chunk: Callable[[], bytes], cap: int, where: Callable[[], str]) -> None:
        self._next = next_chunk
        self._view = memoryview(b"")
        self._pos = 0
        self._cap = cap
        self._total = 0
        self._over = False
        self._where = where

    def _refill(self, at_end: bool = False) -> bool:
        # The cap counts the bytes the parser consumes, so a member's own problem (a wrong size,
        # an unlisted name) is reported as such even when the stream is also over the cap.
        data = b"" if self._over else self._next()
        if self._over or (data and self._total >= self._cap):
            raise ArchiveLimitError(
                f"payload decompresses to more than the {self._cap} bytes its manifest accounts "
                f"for (at {self._where()}): a decompression bomb or a corrupt package; {_REBUILD}",
                code="too_many_bytes",
            )
        if not data:
            if at_end:
                return False
            raise PackageFormatError(
                f"payload is truncated: the tar stream ends inside {self._where()}; {_REBUILD}",
                code="truncated",
            )
        self._view = memoryview(data)
        if len(data) > self._cap - self._total:  # keep what fits; asking for more is an error
            self._view = self._view[: self._cap - self._total]
            self._over = True
        self._total += len(self._view)
        self._pos = 0
        return True

    def take(self, n: int) -> memoryview:
        """Between 1 and ``n`` next bytes, without copying."""
        if self._pos >= len(self._view):
            self._refill()
        view = self._view[self._pos : self._pos + n]
        self._pos += len(view)
        return view

    def read(self, n: int) -> bytes:
        """Exactly ``n`` bytes."""
        first = self.take(n)
        if len(first) == n:
            return first.tobytes()
        pieces = [first.tobytes()]
        n -= len(first)
        while n:
            piece = self.take(n)
            pieces.append(piece.tobytes())
            n -= len(piece)
        return b"".join(pieces)

    def skip(self, n: int) -> None:
        while n:
            n -= len(self.take(n))

    def expect_zeros_to_end(self) -> None:
        """After the end-of-archive marker only zero padding may follow, up to the cap."""
        while True:
            if self._view[self._pos :].tobytes().strip(b"\x00"):
                raise PackageFormatError(
                    f"payload has data after its end-of-archive marker; {_REBUILD}",
                    code="trailing_data",
                )
            if not self._refill(at_end=True):
                return


def _octal(field: bytes, what: str, where: Callable[[], str]) -> int:
    """A numeric header field: octal digits then NUL/space padding (``int()`` alone is laxer)."""
    match = _OCTAL.fullmatch(field)
    if match is not None:
        return int(match[1], 8)
    if what == "size" and field[0] == 0x80:  # base-256, for members over 8 GiB
        return int.from_bytes(field[1:], "big")
    raise PackageFormatError(
        f"payload {where()}: the {what} field {field!r} is not an octal number; {_REBUILD}",
        code="corrupt",
    )


def _parse_pax(data: bytes, where: str) -> dict[str, bytes]:
    """Parse pax records (``"<len> <key>=<value>\\n"``) strictly: no duplicates, no slack."""
    records: dict[str, bytes] = {}
    pos = 0
    while pos < len(data):
        space = data.find(b" ", pos, pos + 20)
        length = int(data[pos:space]) if space > pos and data[pos:space].isdigit() else 0
        end = pos + length
        key, eq, value = data[space + 1 : end - 1].partition(b"=")
        if length <= 0 or end > len(data) or data[end - 1] != 0x0A or not eq or not key.isascii():
            raise PackageFormatError(
                f"payload {where}: malformed pax record at byte {pos}; {_REBUILD}", code="bad_pax"
            )
        name = key.decode("ascii")
        if name in records:
            raise UnsafeArchiveError(
                f"payload {where}: pax key {name!r} appears twice (tar readers disagree on which "
                f"wins); {_REBUILD}",
                code="bad_pax",
            )
        records[name] = value
        pos = end
    return records


def _check_digest(actual: str, entry: FileEntry) -> None:
    if actual != entry.sha256:
        raise DigestMismatchError(
            f"payload file {entry.path!r} has sha256 {actual[:16]}… but the signed manifest says "
            f"{entry.sha256[:16]}…; {_REBUILD}",
            code="digest_mismatch",
        )


def _escapes(link: str, target: str) -> bool:
    if not target or target.startswith("/"):
        return True
    resolved = posixpath.normpath(posixpath.join(posixpath.dirname(link), target))
    return resolved == ".." or resolved.startswith("../")


# -- writing --------------------------------------------------------------------------------------

# (fd, bytes to append, entry), or (fd, None, entry): check the digest, chmod, close.
_Op = tuple[int, memoryview | None, FileEntry]


class _Writer:
    """Appends to, hashes, checks, chmods and closes open files on its own thread, in order.

    The caller's thread keeps every decision (names, types, sizes, creation); this thread only
    copies data into fds the caller created and checks their digests. The first failure stops
    all writing (fds are still closed) and is raised to the caller at its next :meth:`flush` or
    :meth:`finish`.
    """

    def __init__(self, dest: Path) -> None:
        self._dest = dest
        self._queue: queue.Queue[list[_Op] | None] = queue.Queue(WRITE_QUEUE)
        self._batch: list[_Op] = []
        self._batch_bytes = 0
        self._batch_files = 0
        self._stopped = False
        self.error: CutoverError | None = None
        self._thread = threading.Thread(target=self._run, name="cutover-write", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def write(self, fd: int, data: memoryview, entry: FileEntry) -> None:
        self._batch.append((fd, data, entry))
        self._batch_bytes += len(data)
        if self._batch_bytes >= CHUNK:
            self.flush()

    def close(self, fd: int, entry: FileEntry) -> None:
        self._batch.append((fd, None, entry))
        self._batch_files += 1
        if self._batch_files >= WRITE_BATCH_FILES:
            self.flush()

    def busy(self) -> bool:
        """True when the thread is behind: its queue is full and the caller would wait."""
        return self._queue.full()

    def flush(self) -> None:
        if self.error is not None:
            raise self.error
        if self._batch:
            self._queue.put(self._batch)
            self._batch, self._batch_bytes, self._batch_files = [], 0, 0

    def finish(self) -> None:
        """Wait until everything is written and closed; raise the first failure."""
        self.flush()
        self._queue.put(None)
        self._thread.join()
        self.flush()

    def abort(self) -> None:
        """Stop writing, but close every fd already handed over, and wait for the thread."""
        self._stopped = True
        if self._thread.is_alive():
            self._queue.put(self._batch)
            self._batch = []
            self._queue.put(None)
            self._thread.join()

    def _run(self) -> None:
        digest = hashlib.sha256()
        while (batch := self._queue.get()) is not None:
            for fd, data, entry in batch:
                if data is not None:
                    if not self._stopped:
                        try:
                            digest.update(data)
                            while data:
                                data = data[os.write(fd, data) :]
                        except BaseException as exc:  # reported to the caller's thread
                            self._fail(exc, entry)
                    continue
                try:
                    if not self._stopped:
                        _check_digest(digest.hexdigest(), entry)
                        os.fchmod(fd, entry.mode)
                except BaseException as exc:
                    self._fail(exc, entry)
                finally:
                    digest = hashlib.sha256()
                    try:
                        os.close(fd)  # exactly once: a retry could close a reused number
                    except OSError as exc:
                        self._fail(exc, entry)

    def _fail(self, exc: BaseException, entry: FileEntry) -> None:
        self._stopped = True
        if self.error is None:
            if isinstance(exc, CutoverError):
                self.error = exc
            else:
                if isinstance(exc, OSError):
                    self.error = _storage_error(exc, self._dest, entry.path)
                else:
                    self.error = StorageError(f"writing {entry.path} failed: {exc!r}")
                self.error.__cause__ = exc


class _Extraction:
    """One extraction run: parses members, checks them, and creates them under ``root_fd``."""

    def __init__(
        self,
        manifest: Manifest,
        limits: ExtractLimits,
        root_fd: int,
        dest: Path,
        progress: Callable[[int], None] | None,
    ) -> None:
        self._entries = manifest.entries_by_path()
        self._limits = limits
        self._max_members = len(manifest.files)
        self._progress = progress
        self._unreported = 0
        self._seen: set[str] = set()
        self._created: set[str] = {""}
        self._fds: dict[str, int] = {"": root_fd}
        self._writer = _Writer(dest)
        self._open_fd = -1  # a file being filled: ours to close until the writer gets its close
        self.index = 0
        self.member = ""
        self.files = self.dirs = self.symlinks = self.bytes = 0

    def where(self) -> str:
        """Where the parser is, for messages (built only when one is needed)."""
        return f"member {self.index} ({self.member!r})" if self.member else f"member {self.index}"

    def _error(self, cls: type[CutoverError], what: str, code: str) -> CutoverError:
        return cls(f"payload {self.where()}: {what}; {_REBUILD}", code=code)

    def run(self, stream: _Stream) -> None:
        """Parse and extract members up to the end-of-archive marker."""
        pax: dict[str, bytes] | None = None
        where = self.where
        self._writer.start()
        while True:
            if pax is None:  # a pax header belongs to the member after it
                self.index += 1
                self.member = ""
            block = stream.read(BLOCK)
            name, mode, _, _, size_f, _, chksum, kind, link, magic, _, _, _, _, prefix = (
                _HEADER.unpack(block)
            )
            if magic != _MAGIC:
                if block == _ZERO_BLOCK:
                    if pax is not None:
                        raise self._error(
                            PackageFormatError, "a pax header ends the tar", "bad_pax"
                        )
                    if stream.read(BLOCK) != _ZERO_BLOCK:
                        raise self._error(PackageFormatError, "a lone zero block", "corrupt")
                    stream.expect_zeros_to_end()
                    return
                what = "a GNU-format tar header" if magic == b"ustar  \x00" else "garbage"
                raise self._error(
                    PackageFormatError, f"{what} where a POSIX ustar/pax header belongs", "corrupt"
                )
            if _octal(chksum, "checksum", where) != sum(block) - sum(chksum) + 256:
                raise self._error(PackageFormatError, "bad header checksum", "corrupt")
            size = _octal(size_f, "size", where)
            if kind == _PAX:
                if pax is not None:
                    raise self._error(UnsafeArchiveError, "two pax headers in a row", "bad_pax")
                if size > MAX_PAX_BYTES:
                    raise self._error(
                        ArchiveLimitError,
                        f"pax header of {size} bytes exceeds {MAX_PAX_BYTES}",
                        "pax_too_large",
                    )
                pax = _parse_pax(stream.read(size), where())
                stream.skip(-size % BLOCK)
                continue
            name = name.partition(b"\x00")[0]
            if prefix[0]:
                name = prefix.partition(b"\x00")[0] + b"/" + name
            link = link.partition(b"\x00")[0]
            if pax is not None:
                name, link, size = self._apply_pax(pax, name, link, size)
                pax = None
            if self.index > self._max_members:
                raise self._error(
                    ArchiveLimitError,
                    f"{name[:80]!r} is beyond the {self._max_members} members the manifest lists "
                    "(an entry-count bomb, a duplicate or an unlisted file)",
                    "too_many_entries",
                )
            self._member(stream, kind, name, link, _octal(mode, "mode", where), size)

    def _apply_pax(
        self, pax: dict[str, bytes], name: bytes, link: bytes, size: int
    ) -> tuple[bytes, bytes, int]:
        for key, value in pax.items():
            if key == "path":
                name = value
            elif key == "linkpath":
                link = value
            elif key == "size":
                if not value.isdigit():
                    raise self._error(PackageFormatError, f"pax size {value[:40]!r}", "bad_pax")
                size = int(value)
            elif key not in _IGNORED_PAX and not (key == "hdrcharset" and value == _UTF8_CHARSET):
                what = "sparse-file data" if key.startswith("GNU.sparse") else "an unsupported key"
                raise self._error(
                    UnsafeArchiveError,
                    f"pax header carries {what} ({key[:40]!r}); only path, linkpath and size are "
                    "honoured",
                    "bad_pax",
                )
        return name, link, size

    def _member(
        self, stream: _Stream, kind: int, raw: bytes, link: bytes, mode: int, size: int
    ) -> None:
        if kind not in _KINDS:
            what = _REFUSED.get(kind, f"of unknown type {bytes([kind])!r}")
            raise self._error(
                UnsafeArchiveError,
                f"{raw[:80]!r} is {what}; only regular files, directories and symlinks are allowed",
                "bad_type",
            )
        if kind == _DIR and raw.endswith(b"/"):
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
        if size and kind != _REG:
            raise self._error(
                UnsafeArchiveError,
                f"is {_KINDS[kind]} but carries {size} bytes of data (tar readers disagree on those)",
                "bad_type",
            )
        cls = type(entry)
        if cls is FileEntry and kind == _REG:
            self._file(stream, cast(FileEntry, entry), mode, size)
        elif cls is DirEntry and kind == _DIR:
            self._dir(cast(DirEntry, entry), mode)
        elif cls is SymlinkEntry and kind == _SYM:
            self._symlink(cast(SymlinkEntry, entry), link)
        else:
            listed = {FileEntry: "a file", DirEntry: "a directory", SymlinkEntry: "a symlink"}
            raise self._error(
                UnsafeArchiveError,
                f"is {_KINDS[kind]} but the manifest lists {listed[cls]}",
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

    def _file(self, stream: _Stream, entry: FileEntry, mode: int, size: int) -> None:
        if mode != entry.mode:
            self._check_mode(mode, entry.mode)
        if size != entry.size:
            raise self._error(
                DigestMismatchError,
                f"{size} bytes but the manifest says {entry.size}",
                "size_mismatch",
            )
        parent, _, leaf = entry.path.rpartition("/")
        dir_fd = self._fds.get(parent)
        if dir_fd is None:
            dir_fd = self._dir_fd(parent)
        fd = self._open_fd = os.open(leaf, _FILE_FLAGS, 0o600, dir_fd=dir_fd)
        writer = self._writer
        left = size
        if size < WRITER_MIN_BYTES or writer.busy():  # small, or the writer is behind
            digest = hashlib.sha256()
            while left:
                view = stream.take(left)
                left -= len(view)
                digest.update(view)
                written = os.write(fd, view)
                while written < len(view):  # short writes are rare: only then slice
                    view = view[written:]
                    written = os.write(fd, view)
            _check_digest(digest.hexdigest(), entry)
            os.fchmod(fd, entry.mode)
            self._open_fd = -1
            os.close(fd)
        else:
            while left:
                view = stream.take(left)
                left -= len(view)
                writer.write(fd, view, entry)
            writer.close(fd, entry)
        self._open_fd = -1
        if size % BLOCK:
            stream.skip(BLOCK - size % BLOCK)
        self.files += 1
        self.bytes += size
        if self._progress is not None:
            self._unreported += size
            if self._unreported >= CHUNK:
                self._progress(self._unreported)
                self._unreported = 0

    def _dir(self, entry: DirEntry, mode: int) -> None:
        self._check_mode(mode, entry.mode)
        parent, _, leaf = entry.path.rpartition("/")
        os.mkdir(leaf, 0o700, dir_fd=self._dir_fd(parent))
        self._created.add(entry.path)
        self.dirs += 1

    def _symlink(self, entry: SymlinkEntry, raw_target: bytes) -> None:
        # Only checked here; created in finish(), so nothing is ever written beneath a symlink.
        target = raw_target.decode("utf-8", "replace")
        if target == entry.symlink:
            return
        if _escapes(entry.path, target):
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

    def _dir_fd(self, path: str) -> int:
        """An fd of directory ``path`` created by this run, opened without following links."""
        fd = self._fds.get(path)
        if fd is not None:
            return fd
        if path not in self._created:
            raise self._error(
                UnsafeArchiveError,
                f"comes before its parent directory {path!r}; packages list parents first",
                "parent_missing",
            )
        parent, _, leaf = path.rpartition("/")
        parent_fd = self._dir_fd(parent)
        if len(self._fds) >= MAX_OPEN_DIRS:  # keep only the ancestors of ``path``
            for cached in [p for p in self._fds if p and not path.startswith(p + "/")]:
                os.close(self._fds.pop(cached))
        fd = self._fds[path] = os.open(leaf, _DIR_FLAGS, dir_fd=parent_fd)
        return fd

    def finish(self) -> None:
        """Wait for the writer, check completeness, create symlinks, set directory modes."""
        self.index, self.member = 0, ""
        self._writer.finish()  # its errors concern earlier members: report them first
        if len(self._seen) != len(self._entries):
            missing = [p for p in self._entries if p not in self._seen]
            raise DigestMismatchError(
                f"payload lacks {len(missing)} entries the manifest lists, e.g. {missing[0]!r}; "
                f"{_REBUILD}",
                code="missing",
            )
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
        os.fchmod(self._fds[""], 0o755)
        if self._progress is not None and self._unreported:
            self._progress(self._unreported)

    def close(self) -> None:
        """Release every fd, after stopping the writer (which may still be using some)."""
        self._writer.abort()
        fds = [*self._fds.values(), self._open_fd]
        self._fds.clear()
        self._open_fd = -1
        for fd in fds:
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
