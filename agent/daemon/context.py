"""The state the API handlers share: one :class:`AgentContext` per running server.

It holds the config in force (through the reload holder), the operation registry, the metrics, the
nonce store and the upload spool (agent/daemon/uploads.py), and creates a fresh :class:`~agent.lifecycle.AppManager` per
operation: the journal caches its chain head, which is only valid while the app lock is held, so a
long-lived manager would chain new entries onto a stale head after the CLI appended some.
"""

from __future__ import annotations

import asyncio
import functools
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import structlog

from cutover.agent.config import LoadedConfig
from cutover.agent.daemon.leases import LeaseTable
from cutover.agent.daemon.metrics import AppReleases, Metrics
from cutover.agent.daemon.nonces import NonceStore
from cutover.agent.daemon.operations import OperationRegistry
from cutover.agent.daemon.reload import ConfigHolder
from cutover.agent.daemon.uploads import UploadSpool
from cutover.agent.errors import NotFoundError, UnavailableError
from cutover.agent.host.layout import Layout
from cutover.agent.host.lock import AppLock
from cutover.agent.host.room import Room
from cutover.agent.host.state import AppState, ReleaseStatus, StateFile
from cutover.agent.lifecycle.manager import AppManager, EventSink
from cutover.agent.lifecycle.stagework import LocalStageWork, StageWorkFactory
from cutover.agent.trust.freeze import refusing_window
from cutover.agent.worker.process import WorkerPool
from cutover.agent.worker.remote import ChildStageWork

__all__ = ["AgentContext"]

log = structlog.get_logger(__name__)

_PROGRESS_EVERY_S = 0.5


@dataclass
class AgentContext:
    """Everything the handlers share; one per running server."""

    holder: ConfigHolder
    registry: OperationRegistry
    metrics: Metrics
    nonces: NonceStore
    uploads_dir: Path
    spool: UploadSpool  # uploads being received and partials kept for resuming
    leases: LeaseTable | None = None  # agent/daemon/leases.py; None: leases not offered
    shutting_down: bool = False
    uploads: set[asyncio.Task[Any]] = field(default_factory=set)
    # stage workers (agent/worker/): a stage's CPU-heavy work off this process's GIL; None: in
    # worker threads of this process
    workers: WorkerPool | None = None
    # state file -> ((inode, mtime, size) when read, the state read): GET /v1/apps from memory
    _states: dict[Path, tuple[tuple[int, int, int], AppState]] = field(default_factory=dict)

    @property
    def config(self) -> LoadedConfig:
        return self.holder.current

    def manager(self, app: str, actor: str, events: EventSink | None = None) -> AppManager:
        """A fresh AppManager for ``app`` under the config in force.

        Raises:
            NotFoundError: the app is not configured (any more).
        """
        cfg = self.config
        if app not in cfg.apps:
            raise NotFoundError(f"app {app!r} is not configured on this agent")
        # retention by disk drops this daemon's resume partials before releases, and counts
        room = Room(holders=(self.spool.partials,), on_pruned=self.metrics.disk_pruned)
        pool = self.workers
        work: StageWorkFactory = (
            LocalStageWork if pool is None else functools.partial(ChildStageWork, pool)
        )
        if events is None:
            return AppManager(
                app, cfg.apps[app], cfg.policies[app], actor=actor, room=room, stage_work=work
            )
        return AppManager(
            app,
            cfg.apps[app],
            cfg.policies[app],
            actor=actor,
            events=events,
            room=room,
            stage_work=work,
        )

    def layout(self, app: str) -> Layout:
        """The layout of ``app`` under the config in force.

        Raises:
            NotFoundError: the app is not configured (any more).
        """
        cfg = self.config
        if app not in cfg.apps:
            raise NotFoundError(f"app {app!r} is not configured on this agent")
        return Layout(cfg.apps[app].root)

    def read_state(self, app: str) -> AppState:
        """``app``'s state, without the lock (the file is replaced atomically). Blocking."""
        path = self.layout(app).state_file
        key = _file_key(path)  # taken before reading: a replace meanwhile only costs a re-read
        state = StateFile(path, app).load()
        if key is not None:
            self._states[path] = (key, state)
        return state

    async def state(self, app: str) -> AppState:
        """``app``'s state for a read-only answer: from memory while its file is unchanged (one
        ``stat``, no worker thread: under a stage's load every hand-off to a thread waits for
        the GIL, bench/api.py), else read in a thread. Callers must not modify it."""
        path = self.layout(app).state_file
        hit = self._states.get(path)
        if hit is not None and hit[0] == _file_key(path):
            return hit[1]
        return await asyncio.to_thread(self.read_state, app)

    def frozen_releases(self, app: str, state: AppState) -> dict[str, dict[str, object]]:
        """Staged version -> the freeze window that refuses activating it now
        (agent/trust/freeze.py; ``GET /v1/apps/{app}`` reports it, so a rollout stops before a
        wave instead of meeting refusals)."""
        cfg = self.config
        schedule, roles = cfg.apps[app].freeze, cfg.policies[app].key_roles
        if not schedule.windows():
            return {}
        now = datetime.now(UTC)
        out: dict[str, dict[str, object]] = {}
        for r in state.installed():
            if r.status == ReleaseStatus.STAGED:
                hit = refusing_window(
                    schedule, release_type=r.release_type, signers=r.signers, key_roles=roles,
                    now=now,
                )  # fmt: skip
                if hit is not None:
                    out[r.version] = hit.to_json()
        return out

    def accepting(self) -> None:
        if self.shutting_down:
            raise UnavailableError(
                "the agent is shutting down; retry once it is back", code="shutting_down"
            )

    async def ensure_free(self, app: str) -> None:
        """Refuse early (409) if this process or another holds the app.

        Raises:
            LockedError: busy; ``holder`` says with what.
        """
        self.registry.check_free(app)
        await self.probe_flock(app)

    async def probe_flock(self, app: str) -> None:
        """Take and drop the app's flock at once: is another process (the CLI) holding it?

        Raises:
            LockedError: held; ``holder`` is what the holder wrote into the lock file.
        """
        layout = self.layout(app)

        def probe() -> None:
            layout.check(app)
            with AppLock(layout.lock_file, app, "probe"):
                pass

        await asyncio.to_thread(probe)

    async def refresh_app(self, app: str) -> None:
        """Re-read ``app``'s state into the release metrics."""
        cfg = self.config
        if app not in cfg.apps:
            self.metrics.set_app(app, None)
            return
        try:
            state = await asyncio.to_thread(self.read_state, app)
        except Exception as exc:
            log.warning("app_state_unreadable", app=app, error=str(exc))
            return
        self.metrics.set_app(app, AppReleases.of(state))

    def progress_sink(self, sink: EventSink, step: str) -> Callable[[int, int | None], None]:
        """A throttled ``progress`` event emitter (safe from worker threads via ``sink``)."""
        last = [0.0]

        def progress(done: int, total: int | None) -> None:
            now = time.monotonic()
            if now - last[0] >= _PROGRESS_EVERY_S or (total is not None and done >= total):
                last[0] = now
                sink({"event": "progress", "step": step, "done": done, "total": total})

        return progress


def _file_key(path: Path) -> tuple[int, int, int] | None:
    """What changes whenever the state file is replaced (atomically, so a new inode) or written."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_ino, st.st_mtime_ns, st.st_size)
