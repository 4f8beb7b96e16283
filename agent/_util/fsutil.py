"""Small durable-filesystem primitives shared by the store, state, journal and extractor.

Rules: a file that must survive a crash is written to a temp file in the same directory, fsynced,
``os.replace``d over the target, and the directory is fsynced (python-tuf ``_persist_metadata``).
A staged release is made durable with one ``syncfs(2)`` of its filesystem instead of an fsync per
file.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import secrets
from pathlib import Path

__all__ = ["atomic_write", "fsync_dir", "random_suffix", "syncfs"]

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_syncfs = getattr(_libc, "syncfs", None)


def random_suffix() -> str:
    return secrets.token_hex(6)


def fsync_dir(path: str | os.PathLike[str]) -> None:
    """fsync a directory so that renames and creations inside it are durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


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
