"""Crash recovery, the executor: observe the disk, plan (:mod:`agent.host.recovery`, pure),
apply the plan, journal what was done.

It runs under the app lock at the start of every operation (the unit of work calls it), in the
CLI and the daemon alike. A failing post_rollback hook during recovery is reported as one more
action, never raised: the revert or the completed rollback stands.
"""

from __future__ import annotations

import asyncio

from cutover.agent._util.lazylog import get_logger
from cutover.agent.errors import DriftError, HookError
from cutover.agent.host import recovery as plan
from cutover.agent.host import workerlock
from cutover.agent.host.current import TEMP_LINK_PREFIX, flip, read_current
from cutover.agent.host.journal import Journal
from cutover.agent.host.layout import Layout
from cutover.agent.host.state import AppState, record_rollback
from cutover.agent.host.trash import empty_trash, remove_release_tree, remove_tree, trash_release
from cutover.agent.lifecycle.context import AppContext
from cutover.agent.lifecycle.runners import HookRunner

__all__ = ["Recovery", "observe"]

log = get_logger(__name__)


def observe(layout: Layout, journal: Journal) -> plan.DiskView:
    """What is on disk (opening the journal's head drops a torn final line, and says so).

    Raises:
        DriftError: ``current`` is not a Cutover release link.
    """
    head = journal.head
    torn, journal.dropped_torn_line = journal.dropped_torn_line, False
    releases = sorted(layout.releases.iterdir())
    incoming = [e.name for e in sorted(layout.incoming.iterdir())]
    return plan.DiskView(
        link_path=str(layout.current),
        current=read_current(layout),
        incoming=tuple(incoming),
        installing=frozenset(
            n.removesuffix(layout.INSTALLING) for n in incoming if n.endswith(layout.INSTALLING)
        ),
        release_entries=tuple(e.name for e in releases),
        release_dirs=frozenset(e.name for e in releases if e.is_dir() and not e.is_symlink()),
        temp_links=tuple(
            e.name
            for e in sorted(layout.root.iterdir())
            if e.name.startswith(TEMP_LINK_PREFIX) and e.is_symlink()
        ),
        trash=tuple(e.name for e in sorted(layout.trash.iterdir())),
        torn_journal_line=torn,
        journal_head=head,
    )


class Recovery:
    """Applies recovery plans for one app (caller holds the lock)."""

    def __init__(self, ctx: AppContext, hooks: HookRunner) -> None:
        self.ctx = ctx
        self.hooks = hooks

    async def run(self, state: AppState) -> list[str]:
        """Resolve whatever a killed operation left; returns what was done (journaled).

        It first takes the stage workers' lock exclusively (agent/host/workerlock.py): a
        worker of a daemon killed a moment ago may still be writing into ``incoming/``.

        Raises:
            DriftError: ``current`` is in a state only a human can resolve; nothing was changed.
            LockedError: such a worker outlived its daemon (named); nothing was changed.
        """
        ctx = self.ctx
        # a dying daemon's stage worker may still write its tree: wait until it is gone
        # (cancellable: a cancelled wait never leaves the lock taken)
        fd = await workerlock.acquire_exclusive_async(ctx.layout.worker_lock)
        try:
            disk = await asyncio.to_thread(observe, ctx.layout, ctx.ledger.journal)
            todo = plan.plan_recovery(state, disk)
            if todo.refusal is not None:
                raise DriftError(todo.refusal)
            done: list[str] = []
            for action in todo.actions:
                await self._apply(state, action, done)
        finally:
            workerlock.release(fd)
        if done:
            for a in done:
                ctx.emit("recovery", action=a)
            await ctx.log("recovery", actions=done)
            await ctx.save(state)
            log.warning("recovered", app=ctx.app, actions=done)
        return done

    async def _apply(self, state: AppState, action: plan.Action, done: list[str]) -> None:
        ctx, layout = self.ctx, self.ctx.layout
        done.append(action.message)
        match action:
            case plan.RemoveIncoming(name=name):
                await asyncio.to_thread(remove_tree, layout.incoming / name)
            case plan.RemoveUnrecorded(name=name):
                await asyncio.to_thread(_trash_now, layout, name)
            case plan.RemoveTempLink(name=name):
                (layout.root / name).unlink()
            case plan.EmptyTrash():
                await asyncio.to_thread(empty_trash, layout)
            case plan.ForgetRelease(version=version):
                state.releases[version].installed = False
            case plan.DropIntent():
                state.pending = None
            case plan.RevertActivation(pending=p):
                if action.flip_back:
                    await asyncio.to_thread(flip, layout, p.from_version)
                state.current = p.from_version
                state.pending = None
                if action.database_note is not None:
                    done.append(action.database_note)
                await ctx.save(state)
                if p.from_version is not None:
                    await self._post_rollback(
                        state, p.from_version, p.to_version, done, "after the revert"
                    )
            case plan.CompleteRollback(pending=p):
                record_rollback(state, p.to_version, ctx.actor)
                await ctx.save(state)
                await self._post_rollback(
                    state, p.to_version, p.from_version, done, "after the completed rollback"
                )
            case plan.AdoptHandFlip(on_disk=on_disk):
                record_rollback(state, on_disk, ctx.actor, stamp=False)
            case plan.RestoreLink(version=version):
                await asyncio.to_thread(flip, layout, version)
            case plan.Note():
                pass

    async def _post_rollback(
        self, state: AppState, target: str, left: str | None, done: list[str], when: str
    ) -> None:
        try:
            await self.hooks.post_rollback(state, target, left)
        except HookError as exc:
            done.append(f"post_rollback hooks {when} failed: {exc}")


def _trash_now(layout: Layout, name: str) -> None:
    dst = trash_release(layout, name)
    if dst is not None:
        remove_release_tree(layout, dst)  # and its seal, keeping the other seals fresh
