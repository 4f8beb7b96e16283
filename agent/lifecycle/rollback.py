"""Rollback: flip back to the previous good release (or a named one that was active before).

::

    [restore if --restore and a crossed release migrated] → intent saved → FLIP → commit
    → post_rollback hooks (release, then host) → live checks and version probe (reported as
    warnings: a rollback is never undone)

Crossing a release whose rollback plan says the database rollback is ``unsafe`` is refused
before anything changes unless the caller accepts the risk (``--accept-db-risk``); the acceptance
is journaled. Rolling back is otherwise the safe direction: a rollback interrupted after its flip is completed by
recovery. It skips checkpoints, pre_activate hooks and health gating, so only a release that was
active on this host before can be its target.
"""

from __future__ import annotations

import asyncio

from cutover.agent._util.faults import fault_point
from cutover.agent.errors import HookError, StateError
from cutover.agent.host.current import flip
from cutover.agent.host.kept import load_runtime
from cutover.agent.host.state import AppState, ReleaseRecord, ReleaseStatus, record_rollback
from cutover.agent.lifecycle.context import (
    AppContext,
    OpResult,
    installed_names,
    installed_record,
)
from cutover.agent.lifecycle.runners import HealthRunner, HookRunner, health_summary
from cutover.agent.lifecycle.unit import UnitOfWork
from cutover.agent.package.manifest import Hook

__all__ = ["Rollback", "crossed", "is_forward"]


def is_forward(state: AppState, target: str) -> bool:
    """Whether going to ``target`` moves forward: it is not in the activation history before
    ``current`` (an earlier rollback unwound it), so nothing being left was activated after it."""
    return target != state.current and target not in state.activations


def crossed(state: AppState, target: str) -> list[str]:
    """Releases a rollback to ``target`` leaves behind, oldest first (none moving forward: the
    releases being left were activated before ``target``, whose schema is the newer one)."""
    if is_forward(state, target):
        return []
    if target in state.activations:
        idx = len(state.activations) - 1 - state.activations[::-1].index(target)
        left = state.activations[idx + 1 :]
    else:
        left = []
    if state.current and state.current not in left:
        left.append(state.current)
    return left


class Rollback:
    """The rollback operation of one app."""

    def __init__(self, ctx: AppContext, hooks: HookRunner, health: HealthRunner) -> None:
        self.ctx = ctx
        self.hooks = hooks
        self.health = health

    def _target(self, state: AppState, to: str | None) -> tuple[str, ReleaseRecord]:
        app = self.ctx.app
        target = to or state.rollback_target()
        if target is None:
            raise StateError(
                f"no release to roll back to for {app}: current is {state.current}, and no "
                f"earlier good release is installed ({installed_names(state)})"
            )
        rec = installed_record(state, target)
        if rec.status == ReleaseStatus.BAD:
            raise StateError(f"{app} {target} is marked bad ({rec.reason}); choose another --to")
        if rec.activated_at is None and not rec.adopted:  # adopted: live under the old tool
            raise StateError(
                f"{app} {target} has never been active on this host; a rollback skips "
                f"checkpoints, pre_activate hooks and health gating, so use `activate {target}`"
            )
        return target, rec

    async def run(
        self,
        uow: UnitOfWork,
        to: str | None = None,
        *,
        restore: bool = False,
        accept_db_risk: bool = False,
    ) -> OpResult:
        ctx, state = self.ctx, uow.state
        target, _ = self._target(state, to)
        result = uow.result(version=target)
        if target == state.current:
            result.current, result.previous = state.current, state.previous
            result.message = f"{target} is already active; nothing to do"
            return result
        # Load (and digest-check) the target's runtime spec before changing anything.
        spec = await asyncio.to_thread(load_runtime, ctx.layout, state, target)
        old = state.current
        if restore and is_forward(state, target):
            raise StateError(
                f"--restore refused: {ctx.app} {target} was active after {old}, so going to it "
                "moves forward and no checkpoint holds the schema it expects; run the rollback "
                "without --restore (its migrations already ran on this database)"
            )
        migrated = [
            state.releases[v]
            for v in crossed(state, target)
            if v in state.releases and state.releases[v].requires_migration
        ]
        # rollback.database: "unsafe" and "needs-confirmation" both need the operator's word;
        # a --restore that really restores (a crossed migration's checkpoint) makes it safe.
        risky = {
            v: state.releases[v].db_rollback
            for v in crossed(state, target)
            if v in state.releases
            and state.releases[v].db_rollback in ("unsafe", "needs-confirmation")
        }
        if risky and not accept_db_risk and not (restore and migrated):
            plans = ", ".join(f"{v} ({plan})" for v, plan in risky.items())
            if migrated:
                how = (
                    f"Repeat with --restore to restore the database from the checkpoint taken "
                    f"before {migrated[0].version} (what was written since is lost), or with "
                    "--accept-db-risk to roll back on the current schema (journaled)"
                )
            else:
                how = (
                    "No migration checkpoint covers it, so Cutover cannot restore the database: "
                    "bring the database to what the old release expects by hand if needed, "
                    "then repeat with --accept-db-risk (journaled)"
                )
            raise StateError(
                f"rolling {ctx.app} back to {target} crosses {plans}: the rollback plan says the "
                "database rollback is not safe (the old release may not run on the new schema). "
                f"Nothing was changed. {how}"
            )
        if risky and not (restore and migrated):
            await uow.log(
                "rollback.db_risk_accepted",
                version=target,
                crossed=list(risky),
                actor=ctx.actor,
            )
        warnings: list[str] = []
        if migrated and restore:
            # The earliest crossed migration's checkpoint is the database the target expects.
            ref = migrated[0].checkpoint_ref
            await self._restore(old or "", target, ref)
            warnings.append(f"database restored from checkpoint {ref!r}")
        elif migrated:
            names = ", ".join(f"{r.version} (checkpoint {r.checkpoint_ref!r})" for r in migrated)
            warnings.append(
                f"rolling back across migrating release(s) {names}: the database was NOT "
                "restored; use --restore to run the configured restore command"
            )
        elif restore:
            warnings.append("--restore ignored: no release being rolled back ran migrations")
        intent = await uow.write_intent("rollback", old, target, warnings=warnings)
        fault_point("rollback.intent")
        await asyncio.to_thread(flip, ctx.layout, target)
        fault_point("rollback.flipped")
        uow.emit("flip", version=target, previous=old)
        record_rollback(state, target, ctx.actor)
        await uow.log(
            "rollback.done",
            version=target,
            previous=old,
            op_id=intent.op_id,
            actor=ctx.actor,
            database_restored=restore and bool(migrated),
        )
        await uow.save()
        fault_point("rollback.committed")
        try:
            await self.hooks.post_rollback(state, target, old)
            live = await self.health.run(
                "live", spec.health, target, ctx.layout.release(target), {}
            )
            result.details["health"] = live
            if live["status"] != "pass":
                warnings.append(f"live health checks after rollback: {health_summary(live)}")
        except HookError as exc:
            warnings.append(f"post_rollback hooks failed: {exc}")
            result.ok = False
        result.current, result.previous = state.current, state.previous
        result.message = f"rolled back {ctx.app} to {target}" + (
            "" if result.ok else f", but: {'; '.join(warnings)}"
        )
        if warnings:
            result.details["warnings"] = warnings
            await uow.log("rollback.warnings", version=target, warnings=warnings)
        uow.emit("rollback.done", version=target, warnings=warnings)
        return result

    async def _restore(self, left: str, target: str, ref: str | None) -> None:
        """Run the host's restore command with the checkpoint reference the target expects."""
        section, app = self.ctx.section, self.ctx.app
        argv = section.restore
        if not argv:
            raise StateError(
                f"--restore asked, but no restore command is configured (apps.{app}.restore)"
            )
        hctx = self.hooks.context(
            target,
            left,
            self.ctx.layout.release(target),
            extra_env={"CUTOVER_CHECKPOINT_REF": ref or ""},
        )
        await self.hooks.run(
            [Hook(name="restore", argv=argv, timeout_s=section.checkpoint_timeout_s)],
            "restore",
            hctx,
        )
