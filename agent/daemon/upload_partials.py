"""The partial uploads kept for a resume: ``<state_dir>/resume/<app>/<sha256>_<version>.<owner>.part``
(the rules: agent/daemon/uploads.py, which receives them; this module lists, expires, bounds and
drops them).

:class:`ResumeStore` is also a :class:`agent.host.room.SpaceHolder`: retention by disk asks it what
it holds on a filesystem, drops expired partials first and, when a stage needs room, the partials
of that app nobody is appending to (reason ``disk``).
"""

from __future__ import annotations

import asyncio
import stat
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import structlog

from cutover.agent.config import AgentSection
from cutover.agent.daemon.upload_keys import PART_RE, UploadKey
from cutover.agent.host.room import device_of
from cutover.agent.package.manifest import APP_RE

__all__ = ["ResumeLimits", "ResumeStore", "SpoolCounters"]

log = structlog.get_logger(__name__)

_Partial = tuple[float, int, Path, str]  # (mtime, size, path, app)


class SpoolCounters(Protocol):
    """Where the spool counts what it does (agent/daemon/metrics.py ``Metrics``)."""

    def upload_resume(self, app: str, result: str) -> None: ...  # accepted | refused

    def partial_removed(self, app: str, reason: str) -> None: ...  # expired | over_limit | disk


@dataclass(frozen=True)
class ResumeLimits:
    """How much of interrupted uploads is kept (agent.upload_resume_*)."""

    ttl_s: float
    per_app: int
    max_bytes: int

    @classmethod
    def of(cls, agent: AgentSection) -> ResumeLimits:
        return cls(
            agent.upload_resume_ttl_s, agent.upload_resume_per_app, agent.upload_resume_max_bytes
        )


class ResumeStore:
    """The ``resume/`` directory.

    Args:
        resume_dir: ``<state_dir>/resume``.
        limits: the limits in force (read at each use).
        busy: the keys being received now (their partials are appended to: never dropped).
        counters: counts removals (None: nobody does).
    """

    def __init__(
        self,
        resume_dir: Path,
        limits: Callable[[], ResumeLimits],
        busy: Callable[[], set[UploadKey]],
        counters: SpoolCounters | None = None,
    ) -> None:
        self.resume_dir = resume_dir
        self._limits = limits
        self._busy = busy
        self._counters = counters
        self.lock = threading.Lock()  # resume/ is changed from worker threads

    # ------------------------------------------------------------------ queries
    def app_dir(self, app: str) -> Path | None:
        """``resume/<app>`` if it is a real directory (never a symlink's target)."""
        folder = self.resume_dir / app
        try:
            return folder if stat.S_ISDIR(folder.lstat().st_mode) else None
        except FileNotFoundError:
            return None

    def find(self, key: UploadKey) -> tuple[Path, str, int] | None:
        """The partial of ``key`` (path, owner, size), whichever key sent it (at most one)."""
        folder = self.app_dir(key.app)
        if folder is None:
            return None
        for entry in sorted(folder.glob(f"{key.sha256}_*.part")):
            match = PART_RE.fullmatch(entry.name)
            if match is None or match["version"] != key.version:
                continue
            st = entry.lstat()
            if stat.S_ISREG(st.st_mode):
                return entry, match["owner"], st.st_size
        return None

    # ------------------------------------------------------------------ limits
    def prepare(self) -> None:
        """Create ``resume/`` (mode 0700) and sweep it. Blocking."""
        self.resume_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.sweep()

    def _partials(self) -> list[_Partial]:
        """(mtime, size, path, app) of every partial this module wrote, oldest first."""
        found = []
        try:
            apps = sorted(self.resume_dir.iterdir())
        except FileNotFoundError:
            return []
        for folder in apps:
            if not APP_RE.fullmatch(folder.name) or self.app_dir(folder.name) is None:
                continue
            for entry in sorted(folder.iterdir()):
                if not PART_RE.fullmatch(entry.name):
                    continue
                st = entry.lstat()
                if not stat.S_ISREG(st.st_mode):
                    continue
                found.append((st.st_mtime, st.st_size, entry, folder.name))
        found.sort(key=lambda p: (p[0], str(p[2])))
        return found

    def sweep(self, now: float | None = None) -> list[str]:
        """Remove expired partials, then the oldest beyond the limits. Blocking.

        Returns:
            ``app/name`` of each partial removed.
        """
        limits = self._limits()
        now = time.time() if now is None else now
        removed: list[str] = []
        with self.lock:
            partials = self._idle()
            keep: list[_Partial] = []
            for mtime, size, path, app in partials:
                if now - mtime > limits.ttl_s:
                    self._drop(path, app, "expired", removed)
                else:
                    keep.append((mtime, size, path, app))
            per_app: dict[str, int] = {}
            for _, _, _, app in keep:
                per_app[app] = per_app.get(app, 0) + 1
            total = sum(size for _, size, _, _ in keep)
            for _, size, path, app in keep:  # oldest first
                if per_app[app] > limits.per_app or total > limits.max_bytes:
                    per_app[app] -= 1
                    total -= size
                    self._drop(path, app, "over_limit", removed)
        return removed

    def _idle(self) -> list[_Partial]:
        """The partials nobody is appending to (a resume appends in place), oldest first."""
        busy = {f"{k.app}/{k.sha256}_{k.version}" for k in self._busy()}
        return [p for p in self._partials() if f"{p[3]}/{p[2].name[:-22]}" not in busy]

    def _drop(self, path: Path, app: str, reason: str, removed: list[str]) -> None:
        path.unlink(missing_ok=True)
        removed.append(f"{app}/{path.name}")
        log.info("upload_partial_removed", app=app, partial=path.name, reason=reason)
        if self._counters is not None:
            self._counters.partial_removed(app, reason)

    # ------------------------------------------------------------------ room for a stage
    def _on(self, device: int) -> bool:
        try:
            return device_of(self.resume_dir) == device
        except FileNotFoundError:
            return False

    def holdings(self, device: int) -> list[tuple[Path, int]]:
        """``resume/`` and the bytes its partials hold, if it is on ``device`` and holds any."""
        total = sum(p[1] for p in self._partials()) if self._on(device) else 0
        return [(self.resume_dir, total)] if total else []

    def expire(self) -> None:
        """Drop expired partials (and those beyond the limits): :meth:`sweep`."""
        self.sweep()

    def reclaimable(self, app: str, device: int) -> int:
        """Bytes :meth:`reclaim` would free now."""
        return sum(p[1] for p in self._idle() if p[3] == app) if self._on(device) else 0

    def reclaim(self, app: str, device: int) -> int:
        """Drop ``app``'s partials nobody is appending to, if ``resume/`` is on ``device`` (a
        stage of ``app`` there needs the room); the bytes freed."""
        if not self._on(device):
            return 0
        freed, removed = 0, list[str]()
        with self.lock:
            for _, size, path, owner_app in self._idle():
                if owner_app == app:
                    self._drop(path, app, "disk", removed)
                    freed += size
        return freed

    async def sweep_loop(self, stop: asyncio.Event) -> None:
        """Sweep every ``min(ttl / 4, 60 s)`` until ``stop`` is set."""
        while not stop.is_set():
            interval = min(self._limits().ttl_s / 4, 60.0)
            try:
                await asyncio.wait_for(stop.wait(), timeout=interval)
            except TimeoutError:
                try:
                    await asyncio.to_thread(self.sweep)
                except OSError as exc:
                    log.warning("upload_sweep_failed", error=str(exc))
