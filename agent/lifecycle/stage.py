"""Stage: verify a package, install it as a release, run stage hooks and staged checks.

::

    verify (signatures, policy, immutability, downgrade) → make room (retention by disk:
    prune, or refuse before writing) → extract into incoming/ (payload digest first; files the
    host holds taken from its releases, docs/lifecycle.md) → the package released (a daemon's
    spool removed: its pages never need to reach the disk) → link shared paths, keep the
    manifest, rename into releases/ → stage hooks
    → record their files → read-only (and sealed, without stage hooks) → staged health checks
    → syncfs → recorded STAGED

Any failure after verification removes the tree and records the release ``failed`` (its digest
is remembered: the same package can be staged again, a different one with that version cannot).

The CPU-heavy steps (verify, extract, record the hooks' files, read-only) run through a
:class:`~agent.lifecycle.stagework.StageWork`: worker threads here (the CLI), a child process
with its own GIL in the daemon (agent/worker/). Everything that touches the state, the journal
or the release's place (install, hooks, health, syncfs, the record) stays here, under the lock.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Protocol

from cutover.agent._util.faults import fault_point
from cutover.agent._util.fsutil import random_suffix
from cutover.agent._util.lazylog import get_logger
from cutover.agent.errors import CutoverError, HealthCheckError
from cutover.agent.extract.extractor import ExtractStats
from cutover.agent.host import installer
from cutover.agent.host.state import NOTES_CAP, ReleaseRecord, ReleaseStatus, utcnow
from cutover.agent.host.trash import remove_release_tree, remove_tree, trash_release
from cutover.agent.lifecycle.context import AppContext, OpResult
from cutover.agent.lifecycle.runners import HealthRunner, HookRunner, health_summary
from cutover.agent.lifecycle.stagework import LocalStageWork, StageWork, StageWorkFactory
from cutover.agent.lifecycle.unit import UnitOfWork
from cutover.agent.trust.policy import HostHistory, TrustPolicy
from cutover.agent.versions import Incomparable, is_older

__all__ = ["PackageDone", "Prestaged", "Stage", "StageProgress"]

log = get_logger(__name__)

StageProgress = Callable[[str, int, int], None]  # (step, done, total)
PackageDone = Callable[[], Awaitable[None]]  # the package is no longer needed (a spool: removed)
MakeRoom = Callable[[UnitOfWork, int, str], Awaitable[list[str]]]  # Housekeeping.make_room


class Prestaged(Protocol):
    """A tree extracted while the package arrived (agent.daemon.streaming), offered to the stage."""

    def stage_work(self, package: Path) -> StageWork | None:
        """The stage's job runner in the process that streamed ``package``, if it is to go on
        with the stage (it takes the trust decision again, under the lock); None: the usual one."""
        ...

    async def claim(self, digest: str, dest: Path) -> ExtractStats | None:
        """Move the tree to ``dest`` if it was completely extracted from the manifest with
        ``digest`` (returning what was extracted); else discard it and return None (the stage
        then extracts as usual)."""
        ...


class Stage:
    """The stage operation of one app."""

    def __init__(
        self,
        ctx: AppContext,
        policy: TrustPolicy,
        hooks: HookRunner,
        health: HealthRunner,
        make_room: MakeRoom | None = None,
        work: StageWorkFactory = LocalStageWork,
    ) -> None:
        self.ctx = ctx
        self.policy = policy
        self.hooks = hooks
        self.health = health
        self.make_room = make_room
        self.work = work

    async def run(
        self,
        uow: UnitOfWork,
        package: Path,
        *,
        expected_version: str | None = None,
        allow_downgrade: bool = False,
        progress: StageProgress | None = None,
        prestaged: Prestaged | None = None,
        package_done: PackageDone | None = None,
    ) -> OpResult:
        """``package_done``: awaited once the tree is extracted (or claimed) and the work closed
        the package, before anything is made durable (the daemon removes its spool there)."""
        work = None if prestaged is None else prestaged.stage_work(package)
        if work is None:
            work = self.work(package)
        try:
            return await self._run(
                uow, work, expected_version, allow_downgrade, progress, prestaged, package_done
            )
        finally:
            await asyncio.shield(work.close())

    async def _run(
        self,
        uow: UnitOfWork,
        work: StageWork,
        expected_version: str | None,
        allow_downgrade: bool,
        progress: StageProgress | None,
        prestaged: Prestaged | None,
        package_done: PackageDone | None,
    ) -> OpResult:
        ctx, state = self.ctx, uow.state
        # The trust decision, given what this host remembers of the app (as read under the
        # lock): the same verify_release wherever the work runs.
        history = HostHistory(
            known_digests=dict(state.known_digests),
            highest_version=state.highest_version,
            allow_downgrade=allow_downgrade or ctx.section.allow_downgrade,
        )
        head = await work.verify(self.policy, history, expected_version)
        verified = head.verified
        manifest = verified.manifest  # its file list stays with the work
        version = manifest.version
        rec = state.releases.get(version)
        result = uow.result(version=version)
        if verified.already_known and rec is not None and rec.installed:
            if rec.status == ReleaseStatus.BAD:
                result.message = f"{version} is already on this host (marked bad: {rec.reason})"
            elif version == state.current:
                result.message = f"{version} is already installed and is the active release"
                result.details["already_active"] = True
            else:
                result.message = f"{version} is already staged; nothing to do"
            added = sorted(set(verified.signers) - set(rec.signers))
            if added:
                # Same manifest, more valid signatures (e.g. a freeze override role signed
                # later): they count from now on.
                rec.signers = sorted({*rec.signers, *added})
                await uow.log("stage.signers_added", version=version, signers=added)
                await uow.save()
                result.message = f"{version} is already staged; recorded new signers"
                result.details["signers_added"] = added
            result.details["already_staged"] = True
            return result
        uow.emit("verify.done", version=version, signers=list(verified.signers))
        # A tree extracted while the package arrived, taken under the lock only if it came
        # from this very manifest (its writer checked it fit without pruning); else as usual.
        streamed = ctx.layout.incoming / f"{version}.{random_suffix()}"
        claimed = None if prestaged is None else await prestaged.claim(verified.digest, streamed)
        if self.make_room is not None and claimed is None:  # before anything is written
            pruned = await self.make_room(uow, head.space_needed, version)
            if pruned:
                result.details["pruned_for_space"] = pruned
        await uow.log(
            "stage.start",
            version=version,
            actor=ctx.actor,
            manifest_sha256=verified.digest,
            signers=list(verified.signers),
        )
        total = head.total_bytes
        done = 0

        def on_bytes(n: int) -> None:
            nonlocal done
            done += n
            if progress is not None:
                progress("extract", done, total)

        staging = streamed
        try:
            if claimed is not None:
                stats = claimed
            else:
                stats = await work.extract(ctx.layout, staging, state, ctx.section.reuse, on_bytes)
        except BaseException as exc:  # no partial tree is left (StageWork.extract)
            await asyncio.shield(
                ctx.log_quietly(
                    "stage.failed",
                    version=version,
                    error=(str(exc) or type(exc).__name__)[:4000],
                    code=getattr(exc, "code", "cancelled"),
                )
            )
            raise
        fault_point("stage.extracted")
        content = stats.content()
        uow.emit("extract.done", version=version, bytes=total, content=content)
        created_shared: list[Path] = []  # removed again if the staging fails
        try:
            # Every byte of the package was checked and the tree holds it: a daemon's spool is
            # garbage from here on, whatever follows (docs/lifecycle.md §1.3). Removed now, its
            # dirty pages are dropped instead of written back by the seal's and the stage's
            # syncfs.
            await work.release_package()
            if package_done is not None:
                await package_done()
            release_dir, runtime_digest = await asyncio.to_thread(
                installer.install, ctx.layout, staging, verified, created_shared
            )
            hctx = self.hooks.context(version, state.current, release_dir)
            hook_results = await self.hooks.run(manifest.hooks.stage, "stage", hctx)
            if manifest.hooks.stage:
                await work.record_inventory(ctx.layout, release_dir)
            seal_sha256 = await work.make_readonly(
                ctx.layout, release_dir, hooks_ran=bool(manifest.hooks.stage)
            )
            staged_health = await self.health.run(
                "staged", manifest.health, version, release_dir, {}
            )
            if staged_health["status"] != "pass":
                raise HealthCheckError(
                    f"staged health checks of {version} did not pass: "
                    f"{health_summary(staged_health)}"
                )
            await asyncio.to_thread(installer.make_durable, ctx.layout)
            fault_point("stage.durable")
        except BaseException as exc:
            await asyncio.shield(
                self._abort(uow, verified.digest, version, staging, created_shared, exc)
            )
            raise
        state.releases[version] = ReleaseRecord(
            version=version,
            status=ReleaseStatus.STAGED,
            seq=state.next_seq,
            manifest_digest=verified.digest,
            runtime_digest=runtime_digest,
            signers=list(verified.signers),
            release_type=manifest.release_type.value,
            build=manifest.build,
            commit=manifest.commit,
            branch=manifest.branch,
            notes=manifest.notes[:NOTES_CAP],
            summary=(manifest.release_notes.summary if manifest.release_notes else "")[:NOTES_CAP],
            payload_digest=manifest.payload.sha256,
            requires_migration=manifest.requires_migration,
            owner=manifest.owner or "",
            db_rollback=(manifest.rollback.database or "") if manifest.rollback else "",
            staged_at=utcnow(),
            staged_by=ctx.actor,
            hooks=hook_results,
            health=[staged_health],
            content=content,
            seal_sha256=seal_sha256,
        )
        state.next_seq += 1
        state.known_digests[version] = verified.digest
        if state.highest_version is None or _newer(version, state.highest_version):
            state.highest_version = version
        await uow.log(
            "stage.done",
            version=version,
            actor=ctx.actor,
            manifest_sha256=verified.digest,
            release_type=manifest.release_type.value,
            build=manifest.build,
            commit=manifest.commit,
            branch=manifest.branch,
            signers=list(verified.signers),
            notes=manifest.notes[:NOTES_CAP],
            content=content,
        )
        await uow.save()
        await asyncio.to_thread(installer.forget_install_marker, ctx.layout, version)
        fault_point("stage.recorded")
        uow.emit("stage.done", version=version)
        result.current, result.previous = state.current, state.previous
        result.message = f"staged {ctx.app} {version}"
        result.details["content"] = content
        return result

    async def _abort(
        self,
        uow: UnitOfWork,
        digest: str,
        version: str,
        staging: Path,
        created_shared: list[Path],
        exc: BaseException,
    ) -> None:
        ctx, state = self.ctx, uow.state

        def cleanup() -> None:
            # Either the staging dir or (after the rename, which its install marker announced)
            # releases/<version>: never a recorded release, since staging an installed version
            # returns early above, and never a directory Cutover did not create.
            remove_release_tree(ctx.layout, staging)  # hardlinks: keep the other seals fresh
            if ctx.layout.install_marker(version).exists():
                dst = trash_release(ctx.layout, version)
                if dst is not None:
                    remove_release_tree(ctx.layout, dst)
            for d in reversed(created_shared):  # made by this staging: the root is as it was
                remove_tree(d)

        await asyncio.to_thread(cleanup)
        reason = str(exc) or type(exc).__name__
        state.known_digests[version] = digest
        state.releases[version] = ReleaseRecord(
            version=version,
            status=ReleaseStatus.FAILED,
            seq=state.next_seq,
            manifest_digest=digest,
            installed=False,
            staged_at=utcnow(),
            staged_by=ctx.actor,
            reason=reason[:2000],
        )
        state.next_seq += 1
        try:
            await uow.log("stage.failed", version=version, error=reason[:4000])
            await uow.save()
            await asyncio.to_thread(installer.forget_install_marker, ctx.layout, version)
        except CutoverError:  # disk full: the record is lost, the cleanup is not
            log.exception("stage_abort_record_failed", app=ctx.app, version=version)
        uow.emit("stage.failed", version=version, error=reason[:4000])


def _newer(a: str, b: str) -> bool:
    try:
        return is_older(b, a)
    except Incomparable:
        return False
