"""Deleting releases: rename into ``.cutover/trash/`` (instant, atomic), then remove.

A crash mid-removal leaves garbage only in ``trash/``, which the next recovery empties. Which
release to delete comes from the state file, never from ``ls`` or mtimes (the caller decides).
Nothing here follows a symlink, even one swapped in while it runs.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
from pathlib import Path

from cutover.agent._util.fsutil import fsync_dir, random_suffix
from cutover.agent._util.lazylog import get_logger
from cutover.agent.host.layout import Layout

__all__ = ["empty_trash", "remove_release_tree", "remove_tree", "trash_release"]

log = get_logger(__name__)


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


def remove_release_tree(layout: Layout, path: Path) -> None:
    """:func:`remove_tree` of a release's tree (trashed, or a failed stage's), keeping the seals
    of the other releases fresh for the inodes it shared with them (:mod:`agent.host.seal`)."""
    # imported here: the seal code (and the extractor's I/O it uses) only when a release goes,
    # not in every command that empties the trash (`status` runs recovery)
    from cutover.agent.host.seal import unlink_sealed

    own = path.with_name(f"{path.name}.seal.json")  # its seal, moved along by trash_release
    refresh = unlink_sealed(layout, path, own)
    remove_tree(path)
    _remove_seal(own)
    refresh()


def _remove_seal(path: Path) -> None:
    """Remove a seal file, or whatever was planted in its place (a directory, a FIFO): a
    regular file is unlinked, anything else removed as a tree. A failure is logged, never
    raised: a seal is only a cache, and must never fail an operation or wedge the recovery."""
    try:
        if stat.S_ISREG(os.lstat(path).st_mode):
            path.unlink()
        else:
            remove_tree(path)
    except FileNotFoundError:
        return
    except OSError as exc:
        log.warning(
            "seal_not_removed",
            path=str(path),
            error=f"{type(exc).__name__}: {exc.strerror or exc}",
            next="remove it by hand; until then it is ignored",
        )


def trash_release(layout: Layout, version: str) -> Path | None:
    """Move ``releases/<version>`` (whatever it is) into trash/ and forget its kept manifests.

    Returns:
        Where it went, or None if there was nothing to move.
    """
    src = layout.release(version)
    try:
        st = os.lstat(src)
    except FileNotFoundError:
        _remove_seal(layout.seal(version))
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
    with contextlib.suppress(OSError):  # never offered again; proves shared inodes
        os.replace(layout.seal(version), dst.with_name(f"{dst.name}.seal.json"))
    return dst


def empty_trash(layout: Layout) -> int:
    """Remove everything in trash/; returns how many entries there were."""
    n = 0
    for entry in sorted(layout.trash.iterdir()) if layout.trash.is_dir() else []:
        if entry.name.endswith(".seal.json"):  # a trashed release's (removed with it)
            _remove_seal(entry)
            continue
        remove_release_tree(layout, entry)
        n += 1
    return n
