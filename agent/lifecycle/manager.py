"""The release lifecycle of one app: stage, activate, rollback, prune, pin, verify, delete.

The one implementation behind both the on-host CLI and the daemon. Every operation:

1. takes the app's flock (a second operation fails at once with :class:`LockedError`),
2. runs crash recovery (finishing or reverting whatever a killed operation left),
3. does its work, journaling each step and saving state atomically.

Activation is write-ahead: the intent is saved before the flip and marked ``flipped`` after it,
so a crash at any instant is resolved by :meth:`AppManager.recover` on the next start:
an intent whose flip never happened is dropped; a flip whose activation never committed is
reverted (``current`` back to the old release, post_rollback hooks run) and reported. A
rollback that was interrupted after its flip is completed (rolling back is the safe direction).

Failure after the flip (post_activate hook, live health check, version probe) flips back
automatically, runs post_rollback hooks and marks the release ``bad`` so a plain rollback never
chooses it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import structlog

from cutover.agent._util.faults import checkpoint
from cutover.agent.actions import hooks as hooksmod
from cutover.agent.errors import (
    ActivationFailedError,
    CutoverError,
    HealthCheckError,
    HookError,
    StateError,
)
from cutover.agent.host.state import AppState, ReleaseRecord, ReleaseStatus, utcnow
from cutover.agent.host.store import remove_tree
from cutover.agent.lifecycle._base import (
    EventSink,
    OpResult,
    _crossed,
    _health_summary,
    _installed,
    _log_offsets,
    _newer,
)
from cutover.agent.lifecycle._maintenance import MaintenanceOps
from cutover.agent.package.container import open_package
from cutover.agent.package.manifest import Hook

__all__ = ["AppManager", "EventSink", "OpResult"]

log = structlog.get_logger(__name__)


class AppManager(MaintenanceOps):
    """Lifecycle operations on one app root (see the module docstring)."""

    # ------------------------------------------------------------------ stage
    async def stage(
        self,
        package: Path,
        *,
        expected_version: str | None = None,
        allow_downgrade: bool = False,
        progress: Callable[[str, int, int], None] | None = None,
    ) -> OpResult:
        """Verify a package, install it as a staged release, run stage hooks and staged checks."""
        with self._locked(f"stage {expected_version or package.name}"):
            state, recovered = await self._begin("stage")
            parts, fh = await asyncio.to_thread(open_package, package)
            with fh:
                # Parsing and checking a 20,000-entry manifest takes ~0.2 s: never on the loop.
                verified = await asyncio.to_thread(
                    self.store.verify,
                    parts,
                    state,
                    expected_version=expected_version,
                    allow_downgrade=allow_downgrade,
                )
                manifest = verified.manifest
                version = manifest.version
                rec = state.releases.get(version)
                result = OpResult("stage", self.app, version=version, recovered=recovered)
                if verified.already_known and rec is not None and rec.installed:
                    if rec.status == ReleaseStatus.BAD:
                        result.message = (
                            f"{version} is already on this host (marked bad: {rec.reason})"
                        )
                    else:
                        result.message = f"{version} is already staged; nothing to do"
                    result.details["already_staged"] = True
                    result.current = state.current
                    return result
                self.emit("verify.done", version=version, signers=list(verified.signers))
                await asyncio.to_thread(
                    self.store.log,
                    "stage.start",
                    version=version,
                    actor=self.actor,
                    manifest_sha256=verified.digest,
                    signers=list(verified.signers),
                )
                total = manifest.total_file_bytes()
                done = 0

                def on_bytes(n: int) -> None:
                    nonlocal done
                    done += n
                    if progress is not None:
                        progress("extract", done, total)

                try:
                    staging = await asyncio.to_thread(
                        self.store.extract, fh, parts, verified, on_bytes
                    )
                except BaseException as exc:  # the extractor already removed its partial tree
                    await asyncio.shield(
                        self._log_quietly(
                            "stage.failed",
                            version=version,
                            error=(str(exc) or type(exc).__name__)[:4000],
                            code=getattr(exc, "code", "cancelled"),
                        )
                    )
                    raise
            checkpoint("stage.extracted")
            self.emit("extract.done", version=version, bytes=total)
            try:
                release_dir, runtime_digest = await asyncio.to_thread(
                    self.store.install, staging, verified
                )
                ctx = self._hook_ctx(version, state.current, release_dir)
                hook_results = await self._run_hooks(manifest.hooks.stage, "stage", ctx)
                if manifest.hooks.stage:
                    await asyncio.to_thread(self.store.record_inventory, release_dir, manifest)
                await asyncio.to_thread(self.store.make_readonly, release_dir)
                staged_health = await self._health(
                    "staged", manifest.health, version, release_dir, {}
                )
                if staged_health["status"] != "pass":
                    raise HealthCheckError(
                        f"staged health checks of {version} did not pass: "
                        f"{_health_summary(staged_health)}"
                    )
                await asyncio.to_thread(self.store.make_durable)
                checkpoint("stage.durable")
            except BaseException as exc:
                await asyncio.shield(
                    self._abort_stage(state, verified.digest, version, staging, exc)
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
                requires_migration=manifest.requires_migration,
                staged_at=utcnow(),
                staged_by=self.actor,
                hooks=hook_results,
                health=[staged_health],
            )
            state.next_seq += 1
            state.known_digests[version] = verified.digest
            if state.highest_version is None or _newer(version, state.highest_version):
                state.highest_version = version
            await asyncio.to_thread(
                self.store.log,
                "stage.done",
                version=version,
                actor=self.actor,
                manifest_sha256=verified.digest,
            )
            await self._save(state)
            checkpoint("stage.recorded")
            self.emit("stage.done", version=version)
            result.current, result.previous = state.current, state.previous
            result.message = f"staged {self.app} {version}"
            return result

    async def _abort_stage(
        self,
        state: AppState,
        digest: str,
        version: str,
        staging: Path,
        exc: BaseException,
    ) -> None:
        def cleanup() -> None:
            # Either the staging dir or (after the rename) releases/<version>: never a recorded
            # release, since staging an installed version returns early above.
            remove_tree(staging)
            dst = self.store.trash_release(version)
            if dst is not None:
                remove_tree(dst)

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
            staged_by=self.actor,
            reason=reason[:2000],
        )
        state.next_seq += 1
        try:
            await asyncio.to_thread(
                self.store.log, "stage.failed", version=version, error=reason[:4000]
            )
            await self._save(state)
        except CutoverError:  # disk full: the record is lost, the cleanup is not
            log.exception("stage_abort_record_failed", app=self.app, version=version)
        self.emit("stage.failed", version=version, error=reason[:4000])

    # ------------------------------------------------------------------ activate
    async def activate(self, version: str) -> OpResult:
        """Checkpoint if needed, pre_activate hooks, flip, post_activate hooks, live checks."""
        with self._locked(f"activate {version}"):
            state, recovered = await self._begin("activate")
            rec = self._installed_record(state, version)
            if rec.status == ReleaseStatus.BAD:
                raise StateError(
                    f"{self.app} {version} is marked bad ({rec.reason}); stage a fixed release"
                )
            result = OpResult("activate", self.app, version=version, recovered=recovered)
            if state.current == version:
                result.current, result.previous = state.current, state.previous
                result.message = f"{version} is already active; nothing to do"
                result.details["already_active"] = True
                return result
            spec = await asyncio.to_thread(self.store.load_runtime, state, version)
            release_dir = self.store.layout.release(version)
            old = state.current
            ctx = self._hook_ctx(version, old, release_dir)
            if spec.requires_migration:
                rec.checkpoint_ref = await self._checkpoint(version, ctx)
                await self._save(state)
            await self._run_hooks(spec.hooks.pre_activate, "pre_activate", ctx)
            offsets = await asyncio.to_thread(_log_offsets, spec.health, release_dir)
            op_id = await self._write_intent(state, "activate", old, version)
            checkpoint("activate.intent")
            history_before = list(state.history)
            judged = committing = False
            # Everything from the flip to the commit is inside the try: whatever fails or is
            # cancelled there (a hook, a check, a full disk, SIGTERM) flips back.
            try:
                await asyncio.to_thread(self.store.flip, version)
                checkpoint("activate.flipped")
                if state.pending is not None:
                    state.pending = state.pending.model_copy(update={"phase": "flipped"})
                await self._save(state)
                self.emit("flip", version=version, previous=old)
                judged = True  # from here on a failure is the release's: it will be marked bad
                hooks_out = await self._run_hooks(
                    [*spec.hooks.post_activate, *self.section.hooks.post_activate],
                    "post_activate",
                    ctx,
                )
                live = await self._health("live", spec.health, version, release_dir, offsets)
                if live["status"] != "pass":
                    raise HealthCheckError(f"live health checks failed: {_health_summary(live)}")
                checkpoint("activate.before_commit")
                committing = True
                rec.activated_at, rec.activated_by = utcnow(), self.actor
                rec.hooks = hooks_out
                rec.health = [*rec.health[-1:], live]
                state.current = version
                state.history = [v for v in state.history if v != version] + [version]
                state.pending = None
                await asyncio.to_thread(
                    self.store.log,
                    "activate.done",
                    version=version,
                    previous=old,
                    op_id=op_id,
                    actor=self.actor,
                )
                await self._save(state)
            except BaseException as exc:
                await asyncio.shield(
                    self._revert(
                        state,
                        version,
                        old,
                        exc,
                        mark_bad=judged and not committing,
                        history=history_before,
                    )
                )
                if isinstance(exc, Exception):
                    db_note = (
                        f" The database was NOT restored (checkpoint {rec.checkpoint_ref!r}): "
                        "restore it if the old release needs the old schema."
                        if spec.requires_migration and judged
                        else ""
                    )
                    raise ActivationFailedError(
                        f"activation of {self.app} {version} failed after the flip and was reverted "
                        f"to {old or '(no release)'}: {str(exc).rstrip('.')}.{db_note}"
                    ) from exc
                raise
            checkpoint("activate.committed")
            self.emit("activate.done", version=version)
            result.current, result.previous = state.current, state.previous
            result.message = f"activated {self.app} {version}"
            pruned = await self._prune_locked(state)
            if pruned:
                result.details["pruned"] = pruned
            return result

    async def _checkpoint(self, version: str, ctx: hooksmod.HookContext) -> str:
        argv = self.section.checkpoint
        if not argv:
            raise StateError(
                f"{self.app} {version} requires a migration, but no checkpoint command is configured "
                f"for app {self.app!r}; set apps.{self.app}.checkpoint in the agent config (e.g. a "
                "database dump) so the database can be restored"
            )
        hook = Hook(name="checkpoint", argv=argv, timeout_s=self.section.checkpoint_timeout_s)
        results = await self._run_hooks([hook], "checkpoint", ctx)
        tail = str(results[-1].get("output_tail", "")).strip().splitlines()
        ref = tail[-1] if tail else ""
        await asyncio.to_thread(self.store.log, "checkpoint.done", version=version, ref=ref)
        self.emit("checkpoint.done", version=version, ref=ref)
        return ref

    async def _revert(
        self,
        state: AppState,
        version: str,
        old: str | None,
        exc: BaseException,
        *,
        mark_bad: bool,
        history: list[str],
    ) -> None:
        """Flip back to ``old`` after a failed or interrupted activation (write-ahead: the
        ``reverting`` phase is saved first, so a crash mid-revert is finished by recovery)."""
        reason = str(exc) or type(exc).__name__
        self.emit("revert.start", version=version, to=old, reason=reason[:2000])
        rec = state.releases[version]
        if mark_bad:
            rec.status = ReleaseStatus.BAD
            rec.reason = f"activation failed: {reason}"[:2000]
        state.history = history
        if state.pending is not None:
            state.pending = state.pending.model_copy(update={"phase": "reverting"})
        try:
            await self._save(state)
        except CutoverError:  # disk full: flip back anyway; recovery finishes from the journal
            log.exception("revert_intent_not_saved", app=self.app, version=version)
        await asyncio.to_thread(self.store.flip, old)
        checkpoint("activate.reverted_flip")
        state.current = old
        state.pending = None
        db: dict[str, Any] = {}
        if rec.requires_migration and mark_bad:
            db = {"database_restored": False, "checkpoint_ref": rec.checkpoint_ref}
            self.emit(
                "revert.database",
                message=f"{version} may have migrated the database; it was NOT restored "
                f"(checkpoint {rec.checkpoint_ref!r}): restore it by hand if the old release "
                "needs the old schema",
            )
        await asyncio.to_thread(
            self.store.log,
            "activate.reverted",
            version=version,
            restored=old,
            reason=reason[:4000],
            marked_bad=mark_bad,
            **db,
        )
        await self._save(state)
        if old is not None:
            try:
                await self._post_rollback_hooks(state, old, version)
            except HookError:
                log.exception("post_rollback_failed_after_revert", app=self.app)
        self.emit("revert.done", version=version, current=old)

    async def rollback(self, to: str | None = None, *, restore: bool = False) -> OpResult:
        """Flip back to the previous good release (or ``to``), then post_rollback hooks and checks."""
        with self._locked(f"rollback{' to ' + to if to else ''}"):
            state, recovered = await self._begin("rollback")
            target = to or state.rollback_target()
            if target is None:
                raise StateError(
                    f"no release to roll back to for {self.app}: current is {state.current}, and no "
                    f"earlier good release is installed ({_installed(state)})"
                )
            rec = self._installed_record(state, target)
            if rec.status == ReleaseStatus.BAD:
                raise StateError(
                    f"{self.app} {target} is marked bad ({rec.reason}); choose another --to"
                )
            if rec.activated_at is None:
                raise StateError(
                    f"{self.app} {target} has never been active on this host; a rollback skips "
                    f"checkpoints, pre_activate hooks and health gating, so use `activate {target}`"
                )
            result = OpResult("rollback", self.app, version=target, recovered=recovered)
            if target == state.current:
                result.current, result.previous = state.current, state.previous
                result.message = f"{target} is already active; nothing to do"
                return result
            # Load (and digest-check) the target's runtime spec before changing anything.
            spec = await asyncio.to_thread(self.store.load_runtime, state, target)
            old = state.current
            migrated = [
                state.releases[v]
                for v in _crossed(state, target)
                if v in state.releases and state.releases[v].requires_migration
            ]
            warnings: list[str] = []
            if migrated and restore:
                # The earliest crossed migration's checkpoint is the database the target expects.
                ref = migrated[0].checkpoint_ref
                await self._restore(state, old or "", target, ref)
                warnings.append(f"database restored from checkpoint {ref!r}")
            elif migrated:
                names = ", ".join(
                    f"{r.version} (checkpoint {r.checkpoint_ref!r})" for r in migrated
                )
                warnings.append(
                    f"rolling back across migrating release(s) {names}: the database was NOT "
                    "restored; use --restore to run the configured restore command"
                )
            elif restore:
                warnings.append("--restore ignored: no release being rolled back ran migrations")
            op_id = await self._write_intent(state, "rollback", old, target, warnings=warnings)
            checkpoint("rollback.intent")
            await asyncio.to_thread(self.store.flip, target)
            checkpoint("rollback.flipped")
            self.emit("flip", version=target, previous=old)
            self._commit_rollback(state, target)
            await asyncio.to_thread(
                self.store.log,
                "rollback.done",
                version=target,
                previous=old,
                op_id=op_id,
                actor=self.actor,
                database_restored=restore and bool(migrated),
            )
            await self._save(state)
            checkpoint("rollback.committed")
            try:
                await self._post_rollback_hooks(state, target, old)
                live = await self._health(
                    "live", spec.health, target, self.store.layout.release(target), {}
                )
                result.details["health"] = live
                if live["status"] != "pass":
                    warnings.append(f"live health checks after rollback: {_health_summary(live)}")
            except HookError as exc:
                warnings.append(f"post_rollback hooks failed: {exc}")
                result.ok = False
            result.current, result.previous = state.current, state.previous
            result.message = f"rolled back {self.app} to {target}" + (
                "" if result.ok else f", but: {'; '.join(warnings)}"
            )
            if warnings:
                result.details["warnings"] = warnings
                await asyncio.to_thread(
                    self.store.log, "rollback.warnings", version=target, warnings=warnings
                )
            self.emit("rollback.done", version=target, warnings=warnings)
            return result

    async def _restore(self, state: AppState, left: str, target: str, ref: str | None) -> None:
        argv = self.section.restore
        if not argv:
            raise StateError(
                f"--restore asked, but no restore command is configured (apps.{self.app}.restore)"
            )
        ctx = self._hook_ctx(target, left, self.store.layout.release(target))
        ctx = hooksmod.HookContext(
            **{**ctx.__dict__, "extra_env": {"CUTOVER_CHECKPOINT_REF": ref or ""}}
        )
        await self._run_hooks(
            [Hook(name="restore", argv=argv, timeout_s=self.section.checkpoint_timeout_s)],
            "restore",
            ctx,
        )
