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
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog

from agent import hooks as hooksmod
from agent._faults import checkpoint
from agent.config import AppSection
from agent.errors import (
    ActivationFailedError,
    CutoverError,
    DriftError,
    HookError,
    NotFoundError,
    StateError,
)
from agent.locking import AppLock
from agent.manifest import HealthSpec, Hook
from agent.package import open_package
from agent.state import AppState, Pending, ReleaseRecord, ReleaseStatus, utcnow
from agent.store import ReleaseStore, remove_tree
from agent.trust import TrustPolicy
from agent.versions import Incomparable, is_older

__all__ = ["AppManager", "EventSink", "OpResult"]

log = structlog.get_logger(__name__)

EventSink = Callable[[dict[str, Any]], None]


def _no_events(_: dict[str, Any]) -> None:
    return None


@dataclass
class OpResult:
    """What an operation did, for the CLI's output and the API's operation record."""

    op: str
    app: str
    ok: bool = True
    version: str | None = None
    current: str | None = None
    previous: str | None = None
    message: str = ""
    recovered: list[str] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "op": self.op,
            "app": self.app,
            "ok": self.ok,
            "version": self.version,
            "current": self.current,
            "previous": self.previous,
            "message": self.message,
            "recovered": self.recovered,
            **self.details,
        }


class AppManager:
    """Lifecycle operations on one app root."""

    def __init__(
        self,
        app: str,
        section: AppSection,
        policy: TrustPolicy,
        *,
        actor: str = "local",
        events: EventSink = _no_events,
    ) -> None:
        self.app = app
        self.section = section
        self.store = ReleaseStore(app, section, policy)
        self.actor = actor
        self.events = events

    # ------------------------------------------------------------------ plumbing
    def emit(self, event: str, **fields: Any) -> None:
        self.events({"event": event, "app": self.app, **fields})

    @contextmanager
    def _locked(self, operation: str) -> Iterator[AppLock]:
        lock = self.store.lock(operation)
        lock.acquire()
        try:
            yield lock
        finally:
            lock.release()

    def _hook_ctx(
        self, version: str, previous: str | None, release_dir: Path
    ) -> hooksmod.HookContext:
        return hooksmod.HookContext(
            app=self.app,
            version=version,
            release_dir=release_dir,
            previous_version=previous,
            shared_dir=self.store.layout.shared,
            path_env=self.section.hook_path,
            output_cap_bytes=self.section.hook_output_cap_bytes,
        )

    def _on_output(self, hook: str, line: str) -> None:
        self.emit("hook.output", hook=hook, line=line)

    async def _run_hooks(
        self, hooks: list[Hook], phase: str, ctx: hooksmod.HookContext
    ) -> list[dict[str, Any]]:
        if not hooks:
            return []
        self.emit("hooks.start", phase=phase, count=len(hooks))
        try:
            results = await hooksmod.run_hooks(hooks, phase, ctx, on_output=self._on_output)
        except HookError as exc:
            res = exc.results if isinstance(exc, hooksmod.HookFailedError) else []
            self.store.log(
                "hooks.failed",
                phase=phase,
                version=ctx.version,
                error=str(exc),
                results=[r.to_json() for r in res],
            )
            raise
        out = [r.to_json() for r in results]
        self.store.log("hooks.done", phase=phase, version=ctx.version, results=out)
        self.emit("hooks.done", phase=phase)
        return out

    async def _save(self, state: AppState) -> None:
        await asyncio.to_thread(self.store.save, state)

    # ------------------------------------------------------------------ recovery
    async def recover(self, state: AppState) -> list[str]:
        """Resolve a crashed operation (caller holds the lock). Returns what was done."""
        actions = await asyncio.to_thread(self.store.recover, state)
        pending = state.pending
        if pending is not None:
            on_disk = self.store.read_current()
            if pending.op == "activate":
                if on_disk == pending.from_version:
                    actions.append(
                        f"activation of {pending.to_version} (op {pending.op_id}) was interrupted "
                        f"before the flip; current stays {pending.from_version}"
                    )
                else:
                    await asyncio.to_thread(self.store.flip, pending.from_version)
                    actions.append(
                        f"activation of {pending.to_version} (op {pending.op_id}) was interrupted "
                        f"after the flip; reverted current to {pending.from_version or '(none)'}"
                    )
                    state.current = pending.from_version
                    state.pending = None
                    await self._save(state)
                    if pending.from_version is not None:
                        await self._post_rollback_hooks(
                            state, pending.from_version, pending.to_version
                        )
            else:
                if on_disk == pending.to_version:
                    self._commit_rollback(state, pending.to_version)
                    actions.append(
                        f"rollback to {pending.to_version} (op {pending.op_id}) was interrupted "
                        "after the flip; completed it"
                    )
                    await self._save(state)
                    try:
                        await self._post_rollback_hooks(
                            state, pending.to_version, pending.from_version
                        )
                    except HookError as exc:
                        actions.append(f"post_rollback hooks after the completed rollback: {exc}")
                else:
                    actions.append(
                        f"rollback to {pending.to_version} (op {pending.op_id}) was interrupted "
                        f"before the flip; current stays {on_disk}"
                    )
            state.pending = None
        on_disk = self.store.read_current()
        if on_disk != state.current:
            rec = state.releases.get(on_disk or "")
            if on_disk is not None and rec is not None and rec.installed:
                # An operator flipped by hand (the documented last-resort runbook): adopt it as a
                # rollback, so history and `previous` follow what is really live.
                actions.append(
                    f"current was switched outside Cutover from {state.current} to {on_disk}; "
                    "recorded it as a rollback"
                )
                self._commit_rollback(state, on_disk)
            elif (
                on_disk is None
                and state.current is not None
                and self.store.layout.release(state.current).is_dir()
            ):
                await asyncio.to_thread(self.store.flip, state.current)
                actions.append(
                    f"the current link was missing; restored it to {state.current} (the recorded "
                    "active release)"
                )
            else:
                raise DriftError(
                    f"{self.store.layout.current} points at {on_disk!r}, which is not an installed "
                    f"release (the state says {state.current!r}); inspect the host, then point it "
                    "at a release by hand: ln -sfn releases/VERSION current.tmp && "
                    "mv -T current.tmp current"
                )
        if actions:
            for a in actions:
                self.emit("recovery", action=a)
            await asyncio.to_thread(self.store.log, "recovery", actions=actions)
            await self._save(state)
            log.warning("recovered", app=self.app, actions=actions)
        return actions

    async def _begin(self, op: str) -> tuple[AppState, list[str]]:
        state = await asyncio.to_thread(self.store.load)
        recovered = await self.recover(state)
        self.emit("op.start", op=op)
        return state, recovered

    async def recover_only(self) -> OpResult:
        with self._locked("recover"):
            state, recovered = await self._begin("recover")
            return OpResult("recover", self.app, current=state.current, recovered=recovered)

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
                verified = self.store.verify(
                    parts, state, expected_version=expected_version, allow_downgrade=allow_downgrade
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

                staging = await asyncio.to_thread(self.store.extract, fh, parts, verified, on_bytes)
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
                    raise StateError(
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

    # ------------------------------------------------------------------ health helper
    async def _health(
        self,
        phase_name: str,
        health: HealthSpec,
        version: str,
        release_dir: Path,
        offsets: dict[str, int],
    ) -> dict[str, Any]:
        phase = health.staged if phase_name == "staged" else health.live
        probe = health.version_probe if phase_name == "live" else None
        if not phase.checks and probe is None:
            return {"phase": phase_name, "status": "pass", "rounds": 0, "checks": 0}
        from agent import health as healthmod  # imports aiohttp: only when checks run

        hctx = healthmod.HealthContext(
            release_dir=release_dir,
            version=version,
            log_offsets=offsets,
            env=self._hook_ctx(version, None, release_dir).env(f"health_{phase_name}"),
        )
        self.emit("health.start", phase=phase_name, checks=len(phase.checks))

        def on_event(r: healthmod.CheckResult) -> None:
            self.emit(
                "health.check", phase=phase_name, name=r.name, status=r.status, detail=r.detail
            )

        result = await healthmod.run_phase(phase_name, phase, hctx, on_event=on_event)
        out: dict[str, Any] = dict(result.to_json())
        if probe is not None and result.status == "pass":
            seen = await healthmod.probe_version(probe, hctx)
            out["version_probe"] = {"status": seen.status, "detail": seen.detail}
            if seen.status != "pass":
                out["status"] = seen.status
        self.emit("health.done", phase=phase_name, status=out["status"])
        return out

    # ------------------------------------------------------------------ activate
    async def activate(self, version: str) -> OpResult:
        """Checkpoint if needed, pre_activate hooks, flip, post_activate hooks, live checks."""
        with self._locked(f"activate {version}"):
            state, recovered = await self._begin("activate")
            rec = state.releases.get(version)
            if rec is None or not rec.installed:
                raise NotFoundError(
                    f"{self.app} {version} is not staged on this host; stage it first "
                    f"(`cutover-agent stage PACKAGE`); staged: {_installed(state)}"
                )
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
            op_id = uuid.uuid4().hex[:12]
            state.pending = Pending(
                op="activate", op_id=op_id, from_version=old, to_version=version, actor=self.actor
            )
            await self._save(state)
            await asyncio.to_thread(
                self.store.log,
                "activate.intent",
                version=version,
                previous=old,
                op_id=op_id,
                actor=self.actor,
            )
            checkpoint("activate.intent")
            await asyncio.to_thread(self.store.flip, version)
            checkpoint("activate.flipped")
            state.pending = state.pending.model_copy(update={"phase": "flipped"})
            await self._save(state)
            self.emit("flip", version=version, previous=old)
            try:
                hooks_out = await self._run_hooks(
                    [*spec.hooks.post_activate, *self.section.hooks.post_activate],
                    "post_activate",
                    ctx,
                )
                live = await self._health("live", spec.health, version, release_dir, offsets)
                if live["status"] != "pass":
                    raise StateError(f"live health checks failed: {_health_summary(live)}")
            except BaseException as exc:
                await asyncio.shield(self._revert(state, version, old, exc))
                if isinstance(exc, Exception):
                    db_note = (
                        f" The database was NOT restored (checkpoint {rec.checkpoint_ref!r}): "
                        "restore it if the old release needs the old schema."
                        if spec.requires_migration
                        else ""
                    )
                    raise ActivationFailedError(
                        f"activation of {self.app} {version} failed after the flip and was reverted "
                        f"to {old or '(no release)'}: {exc}.{db_note}"
                    ) from exc
                raise
            checkpoint("activate.before_commit")
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
        self, state: AppState, version: str, old: str | None, exc: BaseException
    ) -> None:
        reason = str(exc) or type(exc).__name__
        self.emit("revert.start", version=version, to=old, reason=reason[:2000])
        await asyncio.to_thread(self.store.flip, old)
        state.current = old
        state.pending = None
        rec = state.releases[version]
        rec.status = ReleaseStatus.BAD
        rec.reason = f"activation failed: {reason}"[:2000]
        db: dict[str, Any] = {}
        if rec.requires_migration:
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
            **db,
        )
        await self._save(state)
        if old is not None:
            try:
                await self._post_rollback_hooks(state, old, version)
            except HookError:
                log.exception("post_rollback_failed_after_revert", app=self.app)
        self.emit("revert.done", version=version, current=old)

    async def _post_rollback_hooks(self, state: AppState, target: str, left: str | None) -> None:
        try:
            spec = await asyncio.to_thread(self.store.load_runtime, state, target)
        except CutoverError:
            return
        ctx = self._hook_ctx(target, left, self.store.layout.release(target))
        await self._run_hooks(
            [*spec.hooks.post_rollback, *self.section.hooks.post_rollback], "post_rollback", ctx
        )

    # ------------------------------------------------------------------ rollback
    def _commit_rollback(self, state: AppState, target: str) -> None:
        state.current = target
        rec = state.releases.get(target)
        if rec is not None and rec.activated_at is None:
            rec.activated_at, rec.activated_by = utcnow(), self.actor
        if target in state.history:
            while state.history and state.history[-1] != target:
                state.history.pop()
        else:
            state.history.append(target)
        state.pending = None

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
            rec = state.releases.get(target)
            if rec is None or not rec.installed:
                raise NotFoundError(
                    f"{self.app} {target} is not installed; installed: {_installed(state)}"
                )
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
            op_id = uuid.uuid4().hex[:12]
            state.pending = Pending(
                op="rollback", op_id=op_id, from_version=old, to_version=target, actor=self.actor
            )
            await self._save(state)
            await asyncio.to_thread(
                self.store.log,
                "rollback.intent",
                version=target,
                previous=old,
                op_id=op_id,
                actor=self.actor,
                warnings=warnings,
            )
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
                database_restored=restore,
            )
            await self._save(state)
            checkpoint("rollback.committed")
            try:
                await self._post_rollback_hooks(state, target, old)
                spec = await asyncio.to_thread(self.store.load_runtime, state, target)
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
            result.message = f"rolled back {self.app} to {target}"
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
            rec = state.releases.get(version)
            if rec is None or not rec.installed:
                raise NotFoundError(
                    f"{self.app} {version} is not installed; installed: {_installed(state)}"
                )
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
            rec = state.releases.get(version)
            if rec is None or not rec.installed:
                raise NotFoundError(
                    f"{self.app} {version} is not installed; installed: {_installed(state)}"
                )
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


def _crossed(state: AppState, target: str) -> list[str]:
    """Releases a rollback to ``target`` leaves behind, oldest first."""
    if target in state.history:
        idx = len(state.history) - 1 - state.history[::-1].index(target)
        crossed = state.history[idx + 1 :]
    else:
        crossed = []
    if state.current and state.current not in crossed:
        crossed.append(state.current)
    return crossed


def _newer(a: str, b: str) -> bool:
    try:
        return is_older(b, a)
    except Incomparable:
        return False


def _installed(state: AppState) -> str:
    return ", ".join(r.version for r in state.installed()) or "(none)"


def _log_offsets(health: HealthSpec, release_dir: Path) -> dict[str, int]:
    """Log sizes before the flip, so live log checks see only lines written after it."""
    if not any(c.type == "log" for c in health.live.checks):
        return {}
    from agent.health import log_offsets

    return log_offsets(health.live.checks, release_dir)


def _health_summary(result: dict[str, Any]) -> str:
    failing = [
        f"{c.get('name')}: {c.get('detail')}"
        for c in result.get("last", [])
        if c.get("status") != "pass"
    ]
    probe = result.get("version_probe")
    if probe and probe.get("status") != "pass":
        failing.append(f"version probe: {probe.get('detail')}")
    return "; ".join(failing) or str(result.get("status"))
