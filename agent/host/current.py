"""The ``current`` link: read it, and flip it atomically.

``current`` only ever changes by ``rename(2)`` of a freshly made temp symlink
(``current.<random>``) over it, followed by an fsync of the root directory, so at every instant
it resolves to a complete release (the old or the new one). Never ``rm`` + ``ln``.
"""

from __future__ import annotations

import os

from cutover.agent._util.fsutil import fsync_dir, random_suffix
from cutover.agent.errors import DriftError, StorageError
from cutover.agent.host.layout import Layout

__all__ = ["TEMP_LINK_PREFIX", "flip", "read_current"]

TEMP_LINK_PREFIX = "current."
_PREFIX = "releases/"


def read_current(layout: Layout) -> str | None:
    """The version ``current`` points at, or None when there is no link.

    Raises:
        DriftError: the link is not ``releases/<version>`` (absolute, nested, elsewhere).
        StorageError: the link cannot be read.
    """
    try:
        target = os.readlink(layout.current)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise StorageError(f"cannot read {layout.current}: {exc.strerror}") from exc
    if not target.startswith(_PREFIX) or "/" in target[len(_PREFIX) :]:
        raise DriftError(f"{layout.current} -> {target!r} is not a Cutover release link")
    return target[len(_PREFIX) :]


def flip(layout: Layout, version: str | None) -> None:
    """Point ``current`` at ``version`` atomically (None removes it: first-deploy revert).

    Raises:
        StorageError: the release directory is missing, or the link cannot be replaced.
    """
    cur = layout.current
    if version is None:
        cur.unlink(missing_ok=True)
        fsync_dir(layout.root)
        return
    if not layout.release(version).is_dir():
        raise StorageError(f"cannot flip to {version}: {layout.release(version)} is missing")
    tmp = layout.root / f"{TEMP_LINK_PREFIX}{random_suffix()}"
    try:
        os.symlink(f"{_PREFIX}{version}", tmp)
        os.replace(tmp, cur)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise StorageError(f"cannot switch {cur}: {exc.strerror}") from exc
    fsync_dir(layout.root)
