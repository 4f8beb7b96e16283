"""Housekeeping operations of the lifecycle manager: prune (retention), pin, delete, verify.

Retention (DESIGN.md): keep the ``keep`` newest installed releases by staging order (never by
mtime), plus everything pinned, ``current``, ``previous`` and whatever a pending operation uses.
Deleting is a rename into ``.cutover/trash/`` under the lock, then removal.
"""

from __future__ import annotations

import asyncio

from cutover.agent._util.faults import checkpoint
from cutover.agent.errors import DriftError, NotFoundError, StateError
from cutover.agent.host.state import AppState
from cutover.agent.lifecycle._base import ManagerBase, OpResult

__all__ = ["MaintenanceOps"]


class MaintenanceOps(ManagerBase):
    # ------------------------------------------------------------------ prune, pin, delete, verify
    def _retained(self, state: AppState) -> set[str]:
        keep = {r.version for r in state.installed()[: self.section.keep]}
        keep |= {r.version for r in state.releases.values() if r.pinned}
        keep |= {v for v in (state.current, state.previous) if v}
        if state.pending is not None:
            keep |= {v for v in (state.pending.from_version, state.pending.to_version) if v}
        return keep

    async def _prune_locked(self, state: AppState) -> list[str]:
        keep = self._retained(state)
        doomed = [r.version for r in state.installed() if r.version not in keep]
        if not doomed:
            return []
        for v in doomed:
            await asyncio.to_thread(self.store.trash_release, v)
            state.releases[v].installed = False
            checkpoint("prune.trashed")
        await asyncio.to_thread(self.store.log, "prune", removed=doomed, actor=self.actor)
        await self._save(state)
        await asyncio.to_thread(self.store.empty_trash)
        return doomed

    async def prune(self) -> OpResult:
        with self._locked("prune"):
            state, recovered = await self._begin("prune")
            removed = await self._prune_locked(state)
            return OpResult(
                "prune",
                self.app,
                current=state.current,
                previous=state.previous,
                recovered=recovered,
                details={"removed": removed},
                message=f"removed {len(removed)} release(s)" if removed else "nothing to prune",
            )

    async def pin(self, version: str, pinned: bool = True) -> OpResult:
        with self._locked("pin" if pinned else "unpin"):
            state, recovered = await self._begin("pin")
            rec = self._installed_record(state, version)
            rec.pinned = pinned
            await asyncio.to_thread(
                self.store.log, "pin" if pinned else "unpin", version=version, actor=self.actor
            )
            await self._save(state)
            return OpResult(
                "pin" if pinned else "unpin",
                self.app,
                version=version,
                current=state.current,
                recovered=recovered,
                message=f"{'pinned' if pinned else 'unpinned'} {version}",
            )

    async def delete(self, version: str) -> OpResult:
        with self._locked(f"delete {version}"):
            state, recovered = await self._begin("delete")
            rec = self._installed_record(state, version)
            if version in (state.current, state.previous):
                raise StateError(
                    f"{self.app} {version} is the current or previous release; it cannot be deleted"
                )
            if rec.pinned:
                raise StateError(f"{self.app} {version} is pinned; unpin it first")
            await asyncio.to_thread(self.store.trash_release, version)
            rec.installed = False
            await asyncio.to_thread(self.store.log, "delete", version=version, actor=self.actor)
            await self._save(state)
            await asyncio.to_thread(self.store.empty_trash)
            return OpResult(
                "delete",
                self.app,
                version=version,
                current=state.current,
                recovered=recovered,
                message=f"deleted {version}",
            )

    async def verify(self, version: str | None = None) -> OpResult:
        """Re-hash installed releases (default: current) against their manifests."""
        with self._locked("verify"):
            state, recovered = await self._begin("verify")
            versions = [version] if version else [v for v in [state.current] if v]
            if not versions:
                raise NotFoundError(f"{self.app} has no active release; name a version to verify")
            report: dict[str, list[str]] = {}
            for v in versions:
                report[v] = await asyncio.to_thread(self.store.drift, state, v)
            bad = {v: p for v, p in report.items() if p}
            result = OpResult(
                "verify",
                self.app,
                current=state.current,
                recovered=recovered,
                details={"drift": report},
            )
            if bad:
                lines = [f"{v}: {p}" for v, ps in bad.items() for p in ps[:20]]
                raise DriftError(
                    f"{self.app}: installed files differ from the signed manifest:\n  "
                    + "\n  ".join(lines)
                )
            result.message = f"{', '.join(versions)}: every file matches its manifest"
            return result

    def snapshot(self) -> AppState:
        """Read-only view of the state (no lock; the state file is replaced atomically)."""
        return self.store.load()
