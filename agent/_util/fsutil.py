"""Small durable-filesystem primitives shared by the store, state, journal and extractor.

Rules: a file that must survive a crash is written to a temp file in the same directory, fsynced,
``os.replace``d over the target, and the directory is fsynced (python-tuf ``_persist_metadata``).
A staged release is made durable with one ``syncfs(2)`` of its filesystem instead of an fsync per
file; its files are handed to writeback as they are closed (:func:`start_writeback`), so that
one ``syncfs`` never has to flush the whole release at once.
"""

from __future__ import annotations

import ctypes
import os
import secrets
from pathlib import Path

__all__ = ["atomic_write", "fsync_dir", "random_suffix", "start_writeback", "syncfs"]

# The C library the interpreter is linked with, already mapped (dlopen(NULL)): no lookup by name,
# which in ctypes.util.find_library runs `ldconfig -p` in a subprocess at every process start.
_libc = ctypes.CDLL(None, use_errno=True)
_syncfs = getattr(_libc, "syncfs", None)
_sync_file_range = getattr(_libc, "sync_file_range", None)
if _sync_file_range is not None:
    _sync_file_range.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    _sync_file_range.restype = ctypes.c_int
_SYNC_FILE_RANGE_WRITE = 2  # <linux/fs.h>: start writeback of dirty pages, do not wait for it


def random_suffix() -> str:
    return secrets.token_hex(6)


def fsync_dir(path: str | os.PathLike[str]) -> None:
    """fsync a directory so that renames and creations inside it are durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def start_writeback(fd: int) -> None:
    """Start writing ``fd``'s dirty pages to disk without waiting (``sync_file_range(2)``).

    A hint, not a durability guarantee: errors are ignored here (the ``syncfs`` that follows
    reports them). It spreads a release's writeback over its extraction, so that the final
    ``syncfs`` (and every other fsync on the disk meanwhile) does not wait behind all of it.
    """
    if _sync_file_range is not None:
        _sync_file_range(fd, 0, 0, _SYNC_FILE_RANGE_WRITE)


def syncfs(path: str | os.PathLike[str]) -> None:
    """Flush every dirty page of the filesystem holding ``path`` (falls back to ``sync``)."""
    if _syncfs is None:  # pragma: no cover - every glibc since 2.14 has it
        os.sync()
        return
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        if _syncfs(fd) != 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err), str(path))
    finally:
        os.close(fd)


def atomic_write(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Durably replace ``path`` with ``data`` (temp file, fsync, rename, fsync dir)."""
    tmp = path.with_name(f".{path.name}.{random_suffix()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    try:
        view = memoryview(data)
        while view:
            n = os.write(fd, view)
            view = view[n:]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        tmp.unlink(missing_ok=True)
        raise
    os.close(fd)
    try:
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)
