"""The release lifecycle of one app: the one implementation behind the CLI and the daemon.

:class:`AppManager` is a thin facade. It composes, for one app:

* an :class:`~agent.lifecycle.context.AppContext` (config section, layout, ledger, actor, events),
* a :class:`~agent.lifecycle.runners.HookRunner` and a
  :class:`~agent.lifecycle.runners.HealthRunner`,
* the crash-recovery executor (:mod:`agent.lifecycle.recovery`, planning in
  :mod:`agent.host.recovery`),
* one object per operation: :class:`~agent.lifecycle.stage.Stage`,
  :class:`~agent.lifecycle.activate.Activate`, :class:`~agent.lifecycle.rollback.Rollback`,
  :class:`~agent.lifecycle.housekeeping.Housekeeping` (prune, pin, delete, drift check),

and runs each operation through one unit of work (:mod:`agent.lifecycle.unit`: lock → recovery
→ work → save → one log line). Create one per operation: the journal caches its chain head,
which is only valid while the app lock is held.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from cutover.agent.config import AppSection
from cutover.agent.host.diskspace import DiskProbe, statvfs_probe
from cutover.agent.host.layout import Layout
from cutover.agent.host.ledger import Ledger
from cutover.agent.host.room import Room
from cutover.agent.host.state import AppState
from cutover.agent.lifecycle.context import AppContext, EventSink, OpResult, no_events
from cutover.agent.lifecycle.recovery import Recovery
from cutover.agent.lifecycle.runners import HealthRunner, HookRunner
from cutover.agent.lifecycle.unit import UnitOfWork, unit_of_work
from cutover.agent.trust.policy import TrustPolicy

if TYPE_CHECKING:
    from cutover.agent.lifecycle.activate import Activate
    from cutover.agent.lifecycle.housekeeping import Housekeeping
    from cutover.agent.lifecycle.rollback import Rollback
    from cutover.agent.lifecycle.stage import PackageDone, Prestaged, Stage, StageProgress
    from cutover.agent.lifecycle.stagework import StageWorkFactory

__all__ = ["AppManager", "EventSink", "OpResult"]


class AppManager:
    """Lifecycle operations on one app root (see the module docstring)."""

    def __init__(
        self,
        app: str,
        section: AppSection,
        policy: TrustPolicy,
        *,
        actor: str = "local",
        events: EventSink = no_events,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        disk: DiskProbe = statvfs_probe,
        room: Room | None = None,
        stage_work: StageWorkFactory | None = None,
    ) -> None:
        """``stage_work``: where a stage verifies and extracts (default: in this process,
        agent/lifecycle/stagework.py ``LocalStageWork``; the daemon passes its stage workers)."""
        layout = Layout(section.root)
        ledger = Ledger(app, layout)
        self.ctx = AppContext(app, section, layout, ledger, actor, events, disk, room or Room())
        self._policy = policy
        self._clock = clock
        self._stage_work = stage_work
        self._hooks = HookRunner(self.ctx)
        self._health = HealthRunner(self.ctx, self._hooks)
        self._recovery = Recovery(self.ctx, self._hooks)

    # One object per operation, made (and its module imported) when the operation first runs:
    # `cutover-agent status` needs no extractor, `stage` no activation (issue 12, start-up).

    @functools.cached_property
    def _housekeeping(self) -> Housekeeping:
        from cutover.agent.lifecycle.housekeeping import Housekeeping

        return Housekeeping(self.ctx)

    @functools.cached_property
    def _stage(self) -> Stage:
        from cutover.agent.lifecycle.stage import Stage
        from cutover.agent.lifecycle.stagework import LocalStageWork

        return Stage(
            self.ctx,
            self._policy,
            self._hooks,
            self._health,
            self._housekeeping.make_room,
            self._stage_work or LocalStageWork,
        )

    @functools.cached_property
    def _activate(self) -> Activate:
        from cutover.agent.lifecycle.activate import Activate

        return Activate(
            self.ctx,
            self._hooks,
            self._health,
            self._housekeeping.prune_now,
            self._policy.key_roles,
            self._clock,
        )

    @functools.cached_property
    def _rollback(self) -> Rollback:
        from cutover.agent.lifecycle.rollback import Rollback

        return Rollback(self.ctx, self._hooks, self._health)

    @property
    def app(self) -> str:
        return self.ctx.app

    @property
    def layout(self) -> Layout:
        return self.ctx.layout

    def _unit(self, op: str, holder: str | None = None) -> AbstractAsyncContextManager[UnitOfWork]:
        return unit_of_work(self.ctx, self._recovery, op, holder)

    async def stage(
        self,
        package: Path,
        *,
        expected_version: str | None = None,
        allow_downgrade: bool = False,
        progress: StageProgress | None = None,
        prestaged: Prestaged | None = None,
        package_done: PackageDone | None = None,
    ) -> OpResult:
        """Verify a package, install it as a staged release, run stage hooks and staged checks
        (taking ``prestaged``'s tree if it was extracted from the same manifest; awaiting
        ``package_done`` once the package is no longer needed: Stage.run). The space it
        reserved (agent/host/room.py) is counted down as it writes and released at its end."""
        room = self._housekeeping

        def counted(step: str, done: int, total: int) -> None:
            if step == "extract" and room.reservation is not None:
                room.reservation.written = done
            if progress is not None:
                progress(step, done, total)

        try:
            async with self._unit("stage", f"stage {expected_version or package.name}") as uow:
                return await self._stage.run(
                    uow,
                    package,
                    expected_version=expected_version,
                    allow_downgrade=allow_downgrade,
                    progress=counted,
                    prestaged=prestaged,
                    package_done=package_done,
                )
        finally:
            room.release_room()

    async def activate(self, version: str, *, run_once: bool = True) -> OpResult:
        """Checkpoint if needed, pre_activate hooks, flip, post_activate hooks, live checks
        (``run_once`` False: without the checkpoint and the ``once`` hooks)."""
        async with self._unit("activate", f"activate {version}") as uow:
            return await self._activate.run(uow, version, run_once=run_once)

    async def rollback(
        self, to: str | None = None, *, restore: bool = False, accept_db_risk: bool = False
    ) -> OpResult:
        """Flip back to the previous good release (or ``to``), then post_rollback hooks and checks."""
        async with self._unit("rollback", f"rollback{' to ' + to if to else ''}") as uow:
            return await self._rollback.run(uow, to, restore=restore, accept_db_risk=accept_db_risk)

    async def prune(self) -> OpResult:
        """Delete installed releases beyond retention."""
        async with self._unit("prune") as uow:
            return await self._housekeeping.prune(uow)

    async def pin(self, version: str, pinned: bool = True) -> OpResult:
        """Protect a release from pruning (or allow it again)."""
        async with self._unit("pin", "pin" if pinned else "unpin") as uow:
            return await self._housekeeping.pin(uow, version, pinned)

    async def clear_bad(self, version: str) -> OpResult:
        """Lift the ``bad`` mark of a release, journaled with the actor."""
        async with self._unit("clear-bad", f"clear-bad {version}") as uow:
            return await self._housekeeping.clear_bad(uow, version)

    async def delete(self, version: str) -> OpResult:
        """Delete one release that is not current, previous or pinned."""
        async with self._unit("delete", f"delete {version}") as uow:
            return await self._housekeeping.delete(uow, version)

    async def check_drift(self, version: str | None = None) -> OpResult:
        """Re-hash an installed release (default: current) against its manifest (CLI ``verify``)."""
        async with self._unit("verify") as uow:
            return await self._housekeeping.check_drift(uow, version)

    async def recover_only(self) -> OpResult:
        """Run crash recovery and nothing else."""
        async with self._unit("recover") as uow:
            return uow.result(current=uow.state.current)

    def snapshot(self) -> AppState:
        """Read-only view of the state (no lock; the state file is replaced atomically)."""
        return self.ctx.ledger.load()
