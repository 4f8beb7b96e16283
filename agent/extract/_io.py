"""The extractor's disk side (:mod:`agent.extract`): creating, writing and removing the tree.

Rules enforced here:

* **Writing never follows a symlink.** ``dest`` is created fresh, 0700 (an existing one is refused,
  never reused). Everything beneath it is opened relative to directory fds with :data:`DIR_FLAGS`
  (``O_NOFOLLOW``) or, for new files, :data:`FILE_FLAGS` (``O_CREAT | O_EXCL | O_NOFOLLOW``).
* **A file is checked before it is kept.** A small file reaches the writer thread already checked
  (:meth:`Writer.create`); the writer hashes every byte of a large one it writes and checks its
  SHA-256 against its manifest entry before giving it its manifest mode (when the umask kept it
  from being created with it, :func:`create_file`). The first failure stops all further writing;
  every fd handed over is still closed, exactly once (a directory fd dropped from the cache only
  after the operations queued before it); the error reaches the caller at its next
  :meth:`Writer.flush` or :meth:`Writer.finish`. At most ``WRITE_QUEUE`` batches (each flushed at
  1 MiB or ``WRITE_BATCH_FILES`` files) are in flight.
* **Removal never follows a symlink either.** :func:`discard` removes a partial tree through
  directory fds; failing to is noted on the original error, never raised instead of it.
* **Writeback is progressive.** Each checked large file is handed to writeback as it is closed
  (:func:`agent._util.fsutil.start_writeback`, ``sync_file_range(2)``, no wait), so the one
  ``syncfs`` after extraction does not flush 250 MB at once, and fsyncs elsewhere (the nonce log,
  the state file) do not queue behind it.
* **Errors say what to do.** An ``OSError`` becomes a :class:`~agent.errors.StorageError` naming
  the member: ``disk_full`` for ENOSPC and EDQUOT, ``io_error`` otherwise.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import queue
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Final

from cutover.agent._util.fsutil import start_writeback
from cutover.agent.errors import CutoverError, DigestMismatchError, StorageError
from cutover.agent.extract._source import REBUILD
from cutover.agent.package.manifest import FileEntry

__all__ = [
    "DIR_FLAGS",
    "FILE_FLAGS",
    "MAX_OPEN_DIRS",
    "DirFds",
    "Writer",
    "check_digest",
    "create_file",
    "creation_umask",
    "discard",
    "finish_file",
    "make_dest",
    "storage_error",
    "write_all",
]

MAX_OPEN_DIRS: Final = 64  # directory fds kept open; the others are reopened on demand
WRITE_QUEUE: Final = 4  # batches in flight to the writer thread
WRITE_BATCH_BYTES: Final = 1 << 20  # a batch is handed over once it holds this many bytes
WRITE_BATCH_FILES: Final = 32  # files per batch; with WRITE_QUEUE bounds open file fds (~200)
DIR_FLAGS: Final = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
FILE_FLAGS: Final = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


def creation_umask() -> int:
    """This process's umask, read without changing it (``/proc/self/status``; ``0o777`` when it
    cannot be read). A file whose manifest mode it leaves whole is created with that mode, with
    no ``fchmod``: the agent sets its umask once, at start-up, never while it extracts."""
    try:
        with open("/proc/self/status", "rb") as status:
            for line in status:
                if line.startswith(b"Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    return 0o777


def create_file(dir_fd: int, leaf: str, mode: int, umask: int) -> int:
    """A new file ``leaf`` in ``dir_fd`` (:data:`FILE_FLAGS`), open for writing: created with
    ``mode`` when the umask leaves it whole (:func:`finish_file` then has no ``fchmod`` to do),
    else 0600."""
    return os.open(leaf, FILE_FLAGS, 0o600 if mode & umask else mode, dir_fd=dir_fd)


def write_all(fd: int, data: memoryview) -> None:
    written = os.write(fd, data)
    while written < len(data):  # short writes are rare: only then slice
        data = data[written:]
        written = os.write(fd, data)


def finish_file(fd: int, mode: int, umask: int) -> None:
    """Give a checked file its manifest ``mode`` if :func:`create_file` could not."""
    if mode & umask:
        os.fchmod(fd, mode)


class DirFds:
    """The directories this run created under ``root_fd``, with fds of at most
    :data:`MAX_OPEN_DIRS` of them, opened with :data:`DIR_FLAGS` (never through a link).

    When the cache is full, only the ancestors of the directory being opened stay; each fd
    dropped goes to ``release``: the writer closes it after the operations already handed to it,
    which may still use it.
    """

    def __init__(self, root_fd: int, release: Callable[[int], None]) -> None:
        self._fds: dict[str, int] = {"": root_fd}
        self.created: set[str] = {""}
        self._release = release

    @property
    def root(self) -> int:
        return self._fds[""]

    def get(self, path: str) -> int | None:
        """The cached fd of ``path``, if it is open."""
        return self._fds.get(path)

    def open(self, path: str) -> int:
        """An fd of ``path``, which must be in :attr:`created`, opening it (and its parents)."""
        fd = self._fds.get(path)
        if fd is not None:
            return fd
        parent, _, leaf = path.rpartition("/")
        parent_fd = self.open(parent)
        if len(self._fds) >= MAX_OPEN_DIRS:  # keep only the ancestors of ``path``
            for cached in [p for p in self._fds if p and not path.startswith(p + "/")]:
                self._release(self._fds.pop(cached))
        fd = self._fds[path] = os.open(leaf, DIR_FLAGS, dir_fd=parent_fd)
        return fd

    def mkdir(self, path: str) -> None:
        """Create ``path`` (0700 until :meth:`agent.extract.extractor` sets the modes last)."""
        parent, _, leaf = path.rpartition("/")
        os.mkdir(leaf, 0o700, dir_fd=self.open(parent))
        self.created.add(path)

    def close_all(self) -> None:
        """Close every cached fd (the root's too); errors are ignored."""
        fds = list(self._fds.values())
        self._fds.clear()
        for fd in fds:
            with contextlib.suppress(OSError):
                os.close(fd)


def make_dest(dest: Path) -> tuple[int, int]:
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
        raise storage_error(exc, dest, "") from exc
    try:
        return parent_fd, os.open(dest.name, DIR_FLAGS, dir_fd=parent_fd)
    except OSError as exc:
        discard(parent_fd, dest, exc)
        os.close(parent_fd)
        raise storage_error(exc, dest, "") from exc


def storage_error(exc: OSError, dest: Path, member: str) -> StorageError:
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


def discard(parent_fd: int, dest: Path, exc: BaseException) -> None:
    """Remove the partial tree; failing to is noted on ``exc``, never raised instead of it."""
    try:
        _remove_tree(parent_fd, dest.name)
    except OSError as cleanup:
        exc.add_note(
            f"could not remove the partial extraction {dest}: {cleanup.strerror}; remove it by hand"
        )


def _remove_tree(parent_fd: int, name: str) -> None:
    """``rm -rf parent/name`` through directory fds: never follows a symlink."""
    fd = os.open(name, DIR_FLAGS, dir_fd=parent_fd)
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


def check_digest(actual: str, entry: FileEntry) -> None:
    if actual != entry.sha256:
        raise DigestMismatchError(
            f"payload file {entry.path!r} has sha256 {actual[:16]}… but the signed manifest says "
            f"{entry.sha256[:16]}…; {REBUILD}",
            code="digest_mismatch",
        )


# One operation: (what, fd, data, entry, leaf), what being one of
_APPEND, _CLOSE, _CREATE, _CLOSE_DIR = range(4)  # data to fd (hashed); check, chmod, close fd;
# create leaf in dir fd holding data (checked by the caller); close a directory fd.
_Op = tuple[int, int, memoryview, FileEntry | None, str]
_NOTHING: Final = memoryview(b"")


class Writer:
    """Appends to, hashes, checks, chmods and closes open files on its own thread, in order.

    The caller's thread keeps every decision (names, types, sizes, creation); this thread only
    copies data into fds the caller created and checks their digests. The first failure stops
    all writing (fds are still closed) and is raised to the caller at its next :meth:`flush` or
    :meth:`finish`.
    """

    def __init__(self, dest: Path, umask: int = 0o777) -> None:
        self._dest = dest
        self._umask = umask  # a file was created with its mode unless the umask cut into it
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
        self._batch.append((_APPEND, fd, data, entry, ""))
        self._batch_bytes += len(data)
        if self._batch_bytes >= WRITE_BATCH_BYTES:
            self.flush()

    def close(self, fd: int, entry: FileEntry) -> None:
        self._batch.append((_CLOSE, fd, _NOTHING, entry, ""))
        self._batch_files += 1
        if self._batch_files >= WRITE_BATCH_FILES:
            self.flush()

    def create(self, dir_fd: int, leaf: str, data: memoryview, entry: FileEntry) -> None:
        """Create ``leaf`` in ``dir_fd`` holding ``data``, already checked against ``entry``."""
        self._batch.append((_CREATE, dir_fd, data, entry, leaf))
        self._batch_files += 1
        self._batch_bytes += len(data)
        if self._batch_files >= WRITE_BATCH_FILES or self._batch_bytes >= WRITE_BATCH_BYTES:
            self.flush()

    def close_dir(self, dir_fd: int) -> None:
        """Close ``dir_fd`` once every operation handed over before has used it (at once when
        the thread is not running: none is queued then)."""
        if self._thread.is_alive():
            self._batch.append((_CLOSE_DIR, dir_fd, _NOTHING, None, ""))
        else:
            os.close(dir_fd)

    def busy(self) -> bool:
        """True when the thread is behind: its queue is full and the caller would wait."""
        return len(self._queue.queue) >= WRITE_QUEUE  # asked per file: no lock (Queue.full)

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
            for what, fd, data, entry, leaf in batch:
                if entry is None:  # _CLOSE_DIR
                    try:
                        os.close(fd)
                    except OSError as exc:
                        self._fail(exc, None)
                elif self._stopped and what != _CLOSE:
                    continue  # after a failure only fds handed over are still closed
                elif what == _CREATE:
                    self._create(fd, leaf, data, entry)
                elif what == _APPEND:
                    try:
                        digest.update(data)
                        write_all(fd, data)
                    except BaseException as exc:  # reported to the caller's thread
                        self._fail(exc, entry)
                else:
                    self._close(fd, digest.hexdigest(), entry)
                    digest = hashlib.sha256()

    def _close(self, fd: int, actual: str, entry: FileEntry) -> None:
        try:
            if not self._stopped:
                check_digest(actual, entry)
                finish_file(fd, entry.mode, self._umask)
                start_writeback(fd)  # progressive: the final syncfs has little left
        except BaseException as exc:
            self._fail(exc, entry)
        finally:
            try:
                os.close(fd)  # exactly once: a retry could close a reused number
            except OSError as exc:
                self._fail(exc, entry)

    def _create(self, dir_fd: int, leaf: str, data: memoryview, entry: FileEntry) -> None:
        try:
            fd = create_file(dir_fd, leaf, entry.mode, self._umask)
        except BaseException as exc:
            self._fail(exc, entry)
            return
        try:
            if data:
                write_all(fd, data)
            finish_file(fd, entry.mode, self._umask)  # small: left to the final syncfs
        except BaseException as exc:
            self._fail(exc, entry)
        finally:
            try:
                os.close(fd)
            except OSError as exc:
                self._fail(exc, entry)

    def _fail(self, exc: BaseException, entry: FileEntry | None) -> None:
        self._stopped = True
        if self.error is None:
            if isinstance(exc, CutoverError):
                self.error = exc
            else:
                path = "" if entry is None else entry.path
                if isinstance(exc, OSError):
                    self.error = storage_error(exc, self._dest, path)
                else:
                    self.error = StorageError(f"writing {path} failed: {exc!r}")
                self.error.__cause__ = exc
