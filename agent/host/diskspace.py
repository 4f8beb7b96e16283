"""Retention by disk: what a stage needs, what the app root's filesystem must keep free, and
which releases may go to make room (docs/operations.md §6, docs/lifecycle.md).

Rules:

* A stage **needs** the manifest's file bytes, each file rounded up to a 4 KiB block, plus a
  block per directory and symlink, plus :data:`MARGIN_BYTES` (kept manifest, state, journal).
  This is an estimate that errs high: a stage that fits by it fits.
* The **threshold** is the larger of ``min_free_bytes`` and ``min_free_pct`` of the filesystem's
  size (``statvfs`` of the app root: the space an unprivileged writer may use, ``f_bavail``).
* Releases that may go are those ``keep`` may prune (:func:`agent.lifecycle.housekeeping.retained`
  with no slots): never ``current``, ``previous``, a pinned or adopted release (Cutover did not
  create its files) or one a pending operation uses. Failed and bad ones go first, then the
  oldest by staging order (the state's sequence, never mtimes).
* A release frees only its files that no other release shares (``st_nlink == 1``: a file
  hardlinked into another release stays on disk), so the estimate of what pruning can free counts
  only those, and the stage is refused **before anything is pruned or written** when even
  pruning every candidate would not be enough.

Everything here is pure but :func:`statvfs_probe` and :func:`freeable_bytes`; the probe is a
parameter of the stage (:class:`agent.lifecycle.context.AppContext`), so tests inject one.
"""

from __future__ import annotations

import math
import os
import stat
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from cutover.agent.host.state import AppState, ReleaseStatus
from cutover.agent.package.manifest import FileEntry, Manifest

__all__ = [
    "BLOCK_BYTES",
    "MARGIN_BYTES",
    "DiskProbe",
    "DiskRule",
    "DiskUsage",
    "freeable_bytes",
    "prunable_oldest_first",
    "space_needed",
    "statvfs_probe",
]

BLOCK_BYTES = 4096
MARGIN_BYTES = 1 << 20


@dataclass(frozen=True)
class DiskUsage:
    """The filesystem of a path: bytes free (to an unprivileged writer) and its size."""

    free_bytes: int
    total_bytes: int


DiskProbe = Callable[[Path], DiskUsage]


def statvfs_probe(path: Path) -> DiskUsage:
    """``statvfs(2)`` of ``path``'s filesystem."""
    st = os.statvfs(path)
    return DiskUsage(st.f_bavail * st.f_frsize, st.f_blocks * st.f_frsize)


def space_needed(manifest: Manifest) -> int:
    """The bytes staging ``manifest`` may write (see the module docstring)."""
    need = MARGIN_BYTES
    for entry in manifest.files:
        if isinstance(entry, FileEntry):
            need += max(1, math.ceil(entry.size / BLOCK_BYTES)) * BLOCK_BYTES
        else:
            need += BLOCK_BYTES
    return need


@dataclass(frozen=True)
class DiskRule:
    """``min_free_bytes`` / ``min_free_pct`` of one app (0 and 0: off)."""

    min_free_bytes: int = 0
    min_free_pct: float = 0.0

    @property
    def active(self) -> bool:
        return self.min_free_bytes > 0 or self.min_free_pct > 0

    def threshold(self, usage: DiskUsage) -> int:
        """The bytes that must stay free on this filesystem."""
        pct = math.ceil(usage.total_bytes * self.min_free_pct / 100)
        return max(self.min_free_bytes, pct)

    def shortfall(self, usage: DiskUsage, need: int) -> int:
        """How many bytes are missing for ``need`` to fit above the threshold (0: it fits)."""
        return max(0, need + self.threshold(usage) - usage.free_bytes)


def prunable_oldest_first(state: AppState, protected: Iterable[str]) -> list[str]:
    """Installed releases that may be pruned for space: failed and bad first, then oldest."""
    keep = set(protected)
    candidates = [r for r in state.installed() if r.version not in keep]
    broken = (ReleaseStatus.BAD, ReleaseStatus.FAILED)
    candidates.sort(key=lambda r: (r.status not in broken, r.seq))
    return [r.version for r in candidates]


def freeable_bytes(tree: Path) -> int:
    """Bytes removing ``tree`` would free: its files' blocks, counting only files no other
    directory links to (a hardlink shared with another release stays). Never follows symlinks."""
    total = 0
    for dirpath, dirnames, filenames in os.walk(tree, followlinks=False):
        for name in [*filenames, *dirnames]:
            try:
                st = os.lstat(Path(dirpath, name))
            except FileNotFoundError:
                continue
            if st.st_nlink == 1 or stat.S_ISDIR(st.st_mode):
                total += st.st_blocks * 512
    return total
