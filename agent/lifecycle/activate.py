"""Activate: switch ``current`` to a staged release, judge it, commit or revert.

::

    [checkpoint if requires_migration] → pre_activate hooks → intent saved → FLIP
    → post_activate hooks (release, then host) → live checks → version probe → commit → prune
    any failure after the flip → flip back → post_rollback hooks → the release marked BAD

Before anything runs, a freeze window of the app (agent.trust.freeze) refuses the activation
unless a signer of the release holds an override role; an override is journaled with its key.

The activation walks the phases of :mod:`agent.host.phases` (a table of legal transitions).
Write-ahead: the intent is saved before the flip and the ``flipped`` / ``reverting`` phases
before the steps they announce, so a crash at any instant is resolved by recovery. Only a
failure in the ``flipped`` phase (a hook, a check, the probe: the release's own) marks the
release ``bad``; a failed flip, state write or commit, or a cancellation, reverts without
blaming it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from datetime import datetime
from typing import Any

from cutover.agent._util.faults import fault_point
from cutover.agent._util.lazylog import get_logger
from cutover.agent.actions.hooks import HookContext
from cutover.agent.errors import (
    ActivationFailedError,
    CutoverError,
    HealthCheckError,
    HookError,
    HookFailedError,
    StateError,
)
from cutover.agent.host.current import flip
from cutover.agent.host.kept import RuntimeSpec, load_runtime
from cutover.agent.host.phases import ActivationPhase, check_transition
from cutover.agent.host.state import Pending, ReleaseStatus, utcnow
from cutover.agent.lifecycle.context import AppContext, OpResult, installed_record
from cutover.agent.lifecycle.runners import HealthRunner, HookRunner, health_summary, log_offsets
from cutover.agent.lifecycle.unit import UnitOfWork
from cutover.agent.package.manifest import Hook
from cutover.agent.trust.freeze import check_freeze

__all__ = ["Activate"]

log = get_logger(__name__)

Phase = ActivationPhase


class Activate:
    """The activate operation of one app."""

    def __init__(
        self,
        ctx: AppContext,
        hooks: HookRunner,
        health: HealthRunner,
        prune: Callable[[UnitOfWork], Awaitable[list[str]]],
        key_roles: Mapping[str, frozenset[str]],
        clock: Callable[[], datetime],
    ) -> None:
        self.ctx = ctx
        self.hooks = hooks
        self.health = health
        self.prune = prune
        self.key_roles = key_roles
        self.clock = clock

    async def run(self, uow: UnitOfWork, version: str, *, run_once: bool = True) -> OpResult:
        """Activate ``version``; ``run_once`` False skips the checkpoint and ``once`` hooks (a
        rollout runs them on its first canary host only; the journal records which it was)."""
        ctx, state = self.ctx, uow.state
        rec = installed_record(state, version)
        if rec.status == ReleaseStatus.BAD:
            raise StateError(
                f"{ctx.app} {version} is marked bad ({rec.reason}); stage a fixed release"
            )
        if rec.adopted:
            raise StateError(
                f"{ctx.app} {version} was adopted from an earlier deploy tool: it is unsigned and "
                "only a rollback target (`cutover-agent rollback --to "
                f"{version}`); stage and activate a signed package instead"
            )
        result = uow.result(version=version)
        if state.current == version:
            result.current, result.previous = state.current, state.previous
            result.message = f"{version} is already active; nothing to do"
            result.details["already_active"] = True
            return result
        overrides = check_freeze(
            ctx.section.freeze,
            app=ctx.app,
            version=version,
            release_type=rec.release_type,
            signers=rec.signers,
            key_roles=self.key_roles,
            now=self.clock(),
        )
        for hit in overrides:
            await uow.log(
                "freeze.override",
                version=version,
                window=hit.name,
                ends_at=hit.ends_at.isoformat(),
                keyid=hit.override_keyid,
                roles=sorted(self.key_roles.get(hit.override_keyid or "", frozenset())),
                actor=ctx.actor,
            )
            uow.emit("freeze.override", version=version, window=hit.name, keyid=hit.override_keyid)
            result.details.setdefault("freeze_overrides", []).append(
                {**hit.to_json(), "keyid": hit.override_keyid}
            )
        spec = await asyncio.to_thread(load_runtime, ctx.layout, state, version)
        release_dir = ctx.layout.release(version)
        hctx = self.hooks.context(version, state.current, release_dir)
        try:
            return await self._run(uow, version, spec, hctx, result, run_once)
        except Exception as exc:
            await self._on_failure(spec.hooks.on_failure or [], hctx, exc)
            raise

    async def _on_failure(self, own: list[Hook], hctx: HookContext, exc: Exception) -> None:
        """The ``on_failure`` hooks (release's, then host's) of an activation that did not
        complete; their own failure is journaled and logged, never raised over ``exc``."""
        hooks = [*own, *self.ctx.section.hooks.on_failure]
        if not hooks:
            return
        try:
            await self.hooks.run(hooks, "on_failure", hctx)
        except HookError:
            log.exception("on_failure_hooks_failed", app=self.ctx.app, after=str(exc)[:200])

    async def _run(
        self,
        uow: UnitOfWork,
        version: str,
        spec: RuntimeSpec,
        hctx: HookContext,
        result: OpResult,
        run_once: bool,
    ) -> OpResult:
        ctx, state = self.ctx, uow.state
        rec = state.releases[version]
        release_dir = ctx.layout.release(version)
        old = state.current
        if spec.requires_migration and run_once:
            rec.checkpoint_ref = await self._checkpoint(uow, version, hctx)
            await uow.save()
        skipped = _once_hooks(spec.hooks.pre_activate, spec.hooks.post_activate, run_once)
        if skipped:
            uow.emit("hooks.once_skipped", hooks=skipped)
        await self.hooks.run(_this_host(spec.hooks.pre_activate, run_once), "pre_activate", hctx)
        offsets = await asyncio.to_thread(log_offsets, spec.health, release_dir)
        intent = await uow.write_intent("activate", old, version)
        fault_point("activate.intent")
        phase = Phase.INTENT
        activations_before = list(state.activations)
        # Whose fault a failure in the flipped phase is: the release's own hooks and checks mark
        # it bad; a host-local hook or an unreachable dependency (inconclusive checks) marks it
        # failed, which a later activation may retry.
        blame = "release"
        live_status: str | None = None  # the live phase's status when it did not pass
        # Everything from the flip to the commit is inside the try: whatever fails or is
        # cancelled there (a hook, a check, a full disk, SIGTERM) flips back.
        try:
            await asyncio.to_thread(flip, ctx.layout, version)
            fault_point("activate.flipped")
            # Write-ahead for the judgement; the phase counts only once saved (a failed write
            # is not the release's fault).
            flipped = check_transition(phase, Phase.FLIPPED)
            state.pending = intent.model_copy(update={"phase": flipped})
            await uow.save()
            phase = flipped
            uow.emit("flip", version=version, previous=old)
            own = _this_host(spec.hooks.post_activate, run_once)
            try:  # one step (one journal entry): the release's hooks, then the host's
                hooks_out = await self.hooks.run(
                    [*own, *ctx.section.hooks.post_activate], "post_activate", hctx
                )
            except HookFailedError as exc:
                # The failed hook is the last result: past the release's own, it is the host's.
                blame = "host" if len(exc.results) > len(own) else "release"
                raise
            live = await self.health.run("live", spec.health, version, release_dir, offsets)
            result.details["health"] = live
            if live["status"] != "pass":
                live_status = str(live["status"])
                blame = "host" if live["status"] == "inconclusive" else "release"
                raise HealthCheckError(f"live health checks failed: {health_summary(live)}")
            fault_point("activate.before_commit")
            phase = check_transition(phase, Phase.COMMITTING)
            rec.activated_at, rec.activated_by = utcnow(), ctx.actor
            if rec.status == ReleaseStatus.FAILED:  # a retried activation clears the verdict
                rec.status, rec.reason = ReleaseStatus.STAGED, ""
            rec.add_results(hooks_out, [live])
            rec.first_activated_at = rec.first_activated_at or rec.activated_at
            left = state.releases.get(state.current or "")
            if left is not None and state.current != version:
                left.left_by = "activate"
            state.current = version
            state.activations = [v for v in state.activations if v != version] + [version]
            state.pending = None
            await uow.log(
                "activate.done",
                version=version,
                previous=old,
                op_id=intent.op_id,
                actor=ctx.actor,
                run_once=run_once,
                once_skipped=skipped,
            )
            await uow.save()
            phase = check_transition(phase, Phase.COMMITTED)
        except BaseException as exc:
            failed_in = phase
            await asyncio.shield(
                self._revert(uow, intent, exc, failed_in, activations_before, blame)
            )
            if isinstance(exc, Exception):
                judged = failed_in in (Phase.FLIPPED, Phase.COMMITTING)
                db_note = (
                    f" The database was NOT restored (checkpoint {rec.checkpoint_ref!r}): "
                    "restore it if the old release needs the old schema."
                    if spec.requires_migration and judged
                    else ""
                )
                raise ActivationFailedError(
                    f"activation of {ctx.app} {version} failed after the flip and was reverted "
                    f"to {old or '(no release)'}: {str(exc).rstrip('.')}.{db_note}"
                    f"{_verdict(rec.status, version)}",
                    health=live_status,
                ) from exc
            raise
        fault_point("activate.committed")
        uow.emit("activate.done", version=version)
        result.current, result.previous = state.current, state.previous
        result.message = f"activated {ctx.app} {version}"
        result.details["run_once"] = run_once
        if skipped:
            result.details["once_skipped"] = skipped
        pruned = await self.prune(uow)
        if pruned:
            result.details["pruned"] = pruned
        return result

    async def _checkpoint(self, uow: UnitOfWork, version: str, hctx: HookContext) -> str:
        """Run the host's checkpoint command (a database dump); its last output line is the
        checkpoint reference."""
        section, app = self.ctx.section, self.ctx.app
        argv = section.checkpoint
        if not argv:
            raise StateError(
                f"{app} {version} requires a migration, but no checkpoint command is configured "
                f"for app {app!r}; set apps.{app}.checkpoint in the agent config (e.g. a "
                "database dump) so the database can be restored"
            )
        hook = Hook(name="checkpoint", argv=argv, timeout_s=section.checkpoint_timeout_s)
        results = await self.hooks.run([hook], "checkpoint", hctx)
        tail = str(results[-1].get("output_tail", "")).strip().splitlines()
        ref = tail[-1].strip() if tail else ""
        if not ref:
            # A dump that names nothing cannot be restored: it is not a checkpoint.
            await uow.log("checkpoint.failed", version=version, error="no reference printed")
            raise StateError(
                f"the checkpoint command of {app} ({' '.join(argv)}) printed no reference, so "
                f"there is nothing to restore {version}'s migration from; make it print the "
                "dump's name or path as its last output line, then retry the activation"
            )
        await uow.log("checkpoint.done", version=version, ref=ref)
        uow.emit("checkpoint.done", version=version, ref=ref)
        return ref

    async def _revert(
        self,
        uow: UnitOfWork,
        intent: Pending,
        exc: BaseException,
        failed_in: ActivationPhase,
        activations: list[str],
        blame: str = "release",
    ) -> None:
        """Flip back to ``old`` after a failed or interrupted activation (write-ahead: the
        ``reverting`` phase is saved first, so a crash mid-revert is finished by recovery)."""
        ctx, state = self.ctx, uow.state
        version, old = intent.to_version, intent.from_version
        check_transition(failed_in, Phase.REVERTING)
        judged = failed_in == Phase.FLIPPED
        mark_bad = judged and blame == "release"
        mark_failed = judged and blame == "host"
        reason = str(exc) or type(exc).__name__
        uow.emit("revert.start", version=version, to=old, reason=reason[:2000])
        rec = state.releases[version]
        if mark_bad:
            rec.status = ReleaseStatus.BAD
            rec.reason = f"activation failed: {reason}"[:2000]
        elif mark_failed:
            rec.status = ReleaseStatus.FAILED
            rec.reason = f"activation failed on this host (retryable): {reason}"[:2000]
        # A failed commit may have cleared the intent and moved current in memory: restore both.
        state.activations = activations
        state.current = old
        state.pending = intent.model_copy(update={"phase": Phase.REVERTING})
        try:
            await uow.save()
        except CutoverError:  # disk full: flip back anyway; recovery finishes from the journal
            log.exception("revert_intent_not_saved", app=ctx.app, version=version)
        await asyncio.to_thread(flip, ctx.layout, old)
        fault_point("activate.reverted_flip")
        state.pending = None
        db: dict[str, Any] = {}
        if rec.requires_migration and mark_bad:
            db = {"database_restored": False, "checkpoint_ref": rec.checkpoint_ref}
            uow.emit(
                "revert.database",
                message=f"{version} may have migrated the database; it was NOT restored "
                f"(checkpoint {rec.checkpoint_ref!r}): restore it by hand if the old release "
                "needs the old schema",
            )
        await uow.log(
            "activate.reverted",
            version=version,
            restored=old,
            actor=ctx.actor,
            reason=reason[:4000],
            marked_bad=mark_bad,
            marked_failed=mark_failed,
            **db,
        )
        await uow.save()
        if old is not None:
            try:
                await self.hooks.post_rollback(state, old, version)
            except HookError:
                log.exception("post_rollback_failed_after_revert", app=ctx.app)
        uow.emit("revert.done", version=version, current=old)


def _verdict(status: ReleaseStatus, version: str) -> str:
    """What the revert concluded about the release, and what to do next."""
    if status == ReleaseStatus.BAD:
        return (
            f" {version} is marked bad (its own hooks or checks failed): stage a fixed release, "
            f"or `cutover-agent clear-bad {version}` if you know the release is fine."
        )
    if status == ReleaseStatus.FAILED:
        return (
            f" {version} is marked failed, not bad (a host-local hook or an unreachable "
            f"dependency failed, not the release): fix the host, then retry `activate {version}`."
        )
    return ""


def _this_host(hooks: list[Hook], run_once: bool) -> list[Hook]:
    """The hooks this host runs: all of them, or those not marked ``once``."""
    return hooks if run_once else [h for h in hooks if not h.once]


def _once_hooks(pre: list[Hook], post: list[Hook], run_once: bool) -> list[str]:
    """Names of the ``once`` hooks this host skips (none when it runs them)."""
    if run_once:
        return []
    return [f"pre_activate:{h.name}" for h in pre if h.once] + [
        f"post_activate:{h.name}" for h in post if h.once
    ]
