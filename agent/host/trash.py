"""Deleting releases: rename into ``.cutover/trash/`` (instant, atomic), then remove.

A crash mid-removal leaves garbage only in ``trash/``, which the next recovery empties. Which
release to delete comes from the state file, never from ``ls`` or mtimes (the caller decides).
Nothing here follows a symlink, even one swapped in while it runs.
"""

from __future__ import annotations

import os
import shutil
import stat
from pathlib import Path

from cutover.agent._util.fsutil import fsync_dir, random_suffix
from cutover.agent.host.layout import Layout

__all__ = ["empty_trash", "remove_tree", "trash_release"]


def remove_tree(path: Path) -> None:
    """Remove a tree we own, making read-only directories writable first.

    Never follows a symlink, even one swapped in while it runs: directories are opened with
    ``O_NOFOLLOW`` and made writable through their fds (``os.fwalk``); ``shutil.rmtree`` is the
    fd-based, symlink-attack-safe variant on Linux.
    """
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISDIR(st.st_mode):
        path.unlink()
        return
    for _, _, _, dirfd in os.fwalk(path, follow_symlinks=False):
        os.fchmod(dirfd, 0o700)
    shutil.rmtree(path)


def trash_release(layout: Layout, version: str) -> Path | None:
    """Move ``releases/<version>`` (whatever it is) into trash/ and forget its kept manifests.

    Returns:
        Where it went, or None if there was nothing to move.
    """
    src = layout.release(version)
    try:
        st = os.lstat(src)
    except FileNotFoundError:
        return None
    dst = layout.trash / f"{version}.{random_suffix()}"
    if stat.S_ISDIR(st.st_mode):
        # Renaming a directory updates its '..': it needs write permission. fchmod through an
        # O_NOFOLLOW fd, so a symlink planted in releases/ never redirects the chmod.
        fd = os.open(src, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            os.fchmod(fd, 0o700)
        finally:
            os.close(fd)
    os.rename(src, dst)
    fsync_dir(layout.releases)
    for kept in (layout.kept_manifest(version), layout.runtime_spec(version)):
        kept.unlink(missing_ok=True)
    layout.inventory(version).unlink(missing_ok=True)
    layout.seal(version).unlink(missing_ok=True)
    return dst


def empty_trash(layout: Layout) -> int:
    """Remove everything in trash/; returns how many entries there were."""
    n = 0
    for entry in sorted(layout.trash.iterdir()) if layout.trash.is_dir() else []:
        remove_tree(entry)
        n += 1
    return n
