"""Housekeeping: prune (retention), pin/unpin, clear-bad, delete, and drift checks of installed
releases.

Retention (docs/operations.md §6): keep the ``keep`` newest installed good releases by staging
order (never by mtime; bad and failed ones take no slot), plus everything pinned, ``current``, ``previous`` and whatever a pending
operation uses. Deleting is a rename into ``.cutover/trash/`` under the lock, then removal.

Retention by disk (:meth:`Housekeeping.make_room`, rules in agent/host/diskspace.py and
agent/host/room.py): before a stage writes, expired resume partials go, then (if it still does
not fit) this app's idle partials, then releases beyond those same protections, oldest first,
until the stage fits above ``min_free_bytes`` / ``min_free_pct`` net of what other running
stages on that filesystem have reserved; when even all of them would not make it fit, nothing is
pruned and the stage is refused, naming what else holds space there. The stage's bytes are
reserved until :meth:`Housekeeping.release_room`.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from cutover.agent._util.faults import fault_point
from cutover.agent.errors import DriftError, NotFoundError, StateError, StorageError
from cutover.agent.host.diskspace import (
    DiskRule,
    DiskUsage,
    freeable_bytes,
    prunable_oldest_first,
)
from cutover.agent.host.drift import find_drift
from cutover.agent.host.room import Reservation, device_of
from cutover.agent.host.state import AppState, ReleaseStatus
from cutover.agent.host.trash import empty_trash, trash_release
from cutover.agent.lifecycle.context import AppContext, OpResult, installed_record
from cutover.agent.lifecycle.unit import UnitOfWork

__all__ = ["Housekeeping", "retained"]


def retained(state: AppState, keep: int) -> set[str]:
    """The versions retention must keep: bad and failed releases never count toward ``keep``
    (they go first), so a run of broken deploys cannot push the good releases out."""
    good = [
        r for r in state.installed() if r.status not in (ReleaseStatus.BAD, ReleaseStatus.FAILED)
    ]
    kept = {r.version for r in good[:keep]}
    kept |= {r.version for r in state.releases.values() if r.pinned or r.adopted}
    kept |= {v for v in (state.current, state.previous) if v}
    if state.pending is not None:
        kept |= {v for v in (state.pending.from_version, state.pending.to_version) if v}
    return kept


class Housekeeping:
    """Prune, pin, delete and check_drift of one app."""

    def __init__(self, ctx: AppContext) -> None:
        self.ctx = ctx
        self.reservation: Reservation | None = None  # make_room's, until release_room
        self._seen = DiskUsage(0, 0)  # the usage the last check saw (net of reservations)

    async def prune_now(self, uow: UnitOfWork) -> list[str]:
        """Apply retention inside an operation that holds the unit (also after activations)."""
        ctx, state = self.ctx, uow.state
        keep = retained(state, ctx.section.keep)
        doomed = [r.version for r in state.installed() if r.version not in keep]
        if not doomed:
            return []
        for v in doomed:
            await asyncio.to_thread(trash_release, ctx.layout, v)
            state.releases[v].installed = False
            fault_point("prune.trashed")
        await uow.log("prune", removed=doomed, actor=ctx.actor)
        await uow.save()
        await asyncio.to_thread(empty_trash, ctx.layout)
        return doomed

    async def make_room(self, uow: UnitOfWork, need: int, version: str) -> list[str]:
        """Make room before staging ``version``, which needs ``need`` bytes, and reserve them
        until :meth:`release_room` (agent/host/room.py), so other stages count them.

        Order: expired resume partials go; if it does not fit (free space net of other stages'
        reservations), this app's partials nobody is appending to go; then releases.

        Returns:
            The versions pruned (each journaled as ``prune`` with ``reason: "disk"``).

        Raises:
            StorageError: ``insufficient_space``, it cannot fit even with every prunable
                release and partial gone (then nothing was pruned or dropped), or still does
                not after pruning.
        """
        ctx, state, room = self.ctx, uow.state, self.ctx.room
        rule = DiskRule(ctx.section.min_free_bytes, ctx.section.min_free_pct)
        if rule.active:
            for holder in room.holders:
                await asyncio.to_thread(holder.expire)
        if await self._reserve(need, rule):
            return []
        root = ctx.layout.root
        device = await asyncio.to_thread(device_of, root)
        usage = self._seen
        candidates = prunable_oldest_first(state, retained(state, 0))

        def estimate() -> tuple[int, int]:
            partials = sum(h.reclaimable(ctx.app, device) for h in room.holders)
            return partials, sum(freeable_bytes(ctx.layout.release(v)) for v in candidates)

        partials, releases = await asyncio.to_thread(estimate)
        if rule.shortfall(usage, need) > partials + releases:
            raise await self._no_room(version, need, rule, device, candidates, pruned=[])
        if partials:

            def reclaim() -> int:
                return sum(h.reclaim(ctx.app, device) for h in room.holders)

            freed = await asyncio.to_thread(reclaim)
            fault_point("prune.disk.partials")
            uow.emit("resume.reclaimed", bytes=freed, for_version=version)
            if await self._reserve(need, rule):
                return []
        removed: list[str] = []
        for v in candidates:
            await asyncio.to_thread(trash_release, ctx.layout, v)
            fault_point("prune.disk.trashed")
            state.releases[v].installed = False
            removed.append(v)
            await uow.log(
                "prune",
                removed=[v],
                actor=ctx.actor,
                reason="disk",
                for_version=version,
                need_bytes=need,
                free_bytes=self._seen.free_bytes,
                threshold_bytes=rule.threshold(self._seen),
            )
            fault_point("prune.disk.logged")
            await uow.save()
            fault_point("prune.disk.saved")
            room.on_pruned(ctx.app, [v])
            await asyncio.to_thread(empty_trash, ctx.layout)
            if await self._reserve(need, rule):
                return removed
        raise await self._no_room(version, need, rule, device, [], pruned=removed)

    async def _reserve(self, need: int, rule: DiskRule) -> bool:
        """Reserve ``need`` if it fits (``self._seen``: the usage the check saw)."""
        held, self._seen = await asyncio.to_thread(
            self.ctx.room.reservations.try_reserve, self.ctx.layout.root, need, rule, self.ctx.disk
        )
        if held is None:
            return False
        self.release_room()
        self.reservation = held
        return True

    def release_room(self) -> None:
        """The stage ended: its reservation goes (idempotent)."""
        if self.reservation is not None:
            self.reservation.release()
            self.reservation = None

    async def _no_room(
        self,
        version: str,
        need: int,
        rule: DiskRule,
        device: int,
        candidates: list[str],
        pruned: list[str],
    ) -> StorageError:
        ctx, usage = self.ctx, self._seen

        def holdings() -> list[tuple[Path, int]]:
            return [h for holder in ctx.room.holders for h in holder.holdings(device)]

        held = await asyncio.to_thread(holdings)
        reserved = await asyncio.to_thread(ctx.room.reservations.outstanding, device)
        what = (
            f"pruned {', '.join(pruned)} and it still does not fit"
            if pruned
            else f"pruning every prunable release ({', '.join(candidates) or 'none'}) would not "
            "free enough, so nothing was pruned"
        )
        others = "".join(
            f"; {path} holds {size} bytes of interrupted uploads (of other apps, or being "
            f"resumed now): they expire after agent.upload_resume_ttl_s, or remove them"
            for path, size in held
            if size
        )
        if reserved:
            others += f"; other stages running on that filesystem will still write {reserved} bytes"
        return StorageError(
            f"not enough disk space to stage {ctx.app} {version} under {ctx.layout.root}: it "
            f"needs {need} bytes, {usage.free_bytes} are free and {rule.threshold(usage)} must "
            f"stay free (min_free_bytes={rule.min_free_bytes}, min_free_pct={rule.min_free_pct:g}"
            f" of {usage.total_bytes}); {what}{others}. Nothing of {version} was written. Free "
            "space on that filesystem, unpin or delete releases you no longer need, or lower the "
            "threshold",
            code="insufficient_space",
        )

    async def prune(self, uow: UnitOfWork) -> OpResult:
        removed = await self.prune_now(uow)
        return uow.result(
            current=uow.state.current,
            previous=uow.state.previous,
            details={"removed": removed},
            message=f"removed {len(removed)} release(s)" if removed else "nothing to prune",
        )

    async def pin(self, uow: UnitOfWork, version: str, pinned: bool) -> OpResult:
        rec = installed_record(uow.state, version)
        rec.pinned = pinned
        name = "pin" if pinned else "unpin"
        await uow.log(name, version=version, actor=self.ctx.actor)
        await uow.save()
        return uow.result(
            name,
            version=version,
            current=uow.state.current,
            message=f"{'pinned' if pinned else 'unpinned'} {version}",
        )

    async def clear_bad(self, uow: UnitOfWork, version: str) -> OpResult:
        """Lift a ``bad`` mark (the operator knows better): the release may be activated again.

        Raises:
            StateError: the release is not marked bad.
        """
        rec = installed_record(uow.state, version)
        if rec.status != ReleaseStatus.BAD:
            raise StateError(
                f"{self.ctx.app} {version} is not marked bad (it is {rec.status.value}); "
                "nothing to clear"
            )
        was = rec.reason
        rec.status, rec.reason = ReleaseStatus.STAGED, ""
        await uow.log("clear_bad", version=version, actor=self.ctx.actor, was=was)
        await uow.save()
        return uow.result(
            version=version, message=f"cleared the bad mark of {version} (was: {was})"
        )

    async def delete(self, uow: UnitOfWork, version: str) -> OpResult:
        ctx, state = self.ctx, uow.state
        rec = installed_record(state, version)
        if version in (state.current, state.previous):
            raise StateError(
                f"{ctx.app} {version} is the current or previous release; it cannot be deleted"
            )
        if rec.pinned:
            raise StateError(f"{ctx.app} {version} is pinned; unpin it first")
        await asyncio.to_thread(trash_release, ctx.layout, version)
        rec.installed = False
        await uow.log("delete", version=version, actor=ctx.actor)
        await uow.save()
        await asyncio.to_thread(empty_trash, ctx.layout)
        return uow.result(version=version, current=state.current, message=f"deleted {version}")

    async def check_drift(self, uow: UnitOfWork, version: str | None) -> OpResult:
        """Re-hash installed releases (default: current) against their kept manifests.

        Raises:
            NotFoundError: nothing to check. DriftError: files differ (listed).
        """
        ctx, state = self.ctx, uow.state
        versions = [version] if version else [v for v in [state.current] if v]
        if not versions:
            raise NotFoundError(f"{ctx.app} has no active release; name a version to verify")
        report: dict[str, list[str]] = {}
        for v in versions:
            report[v] = await asyncio.to_thread(find_drift, ctx.layout, state, v)
        result = uow.result(current=state.current, details={"drift": report})
        bad = {v: p for v, p in report.items() if p}
        if bad:
            lines = [f"{v}: {p}" for v, ps in bad.items() for p in ps[:20]]
            raise DriftError(
                f"{ctx.app}: installed files differ from the signed manifest:\n  "
                + "\n  ".join(lines)
            )
        result.message = f"{', '.join(versions)}: every file matches its manifest"
        return result
