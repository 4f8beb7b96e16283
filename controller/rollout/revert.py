"""Undoing a rollout: isolate a failed host, revert every touched host, abort.

* **isolate** (a failure within the budget): the hosts whose agent did not revert them itself are
  rolled back, at the rollout's ``max_parallel``; the rollout goes on;
* **revert all** (the canary failed, or the budget is exceeded): every host the rollout activated
  (and every failed host still on the version) is rolled back **at once**, all in parallel, with
  no canary and no bake replayed: a revert goes to a release the host already ran;
* **abort** (``cutover abort ID``): the same for every host the local state says was touched.

A host is rolled back only if it still runs the rollout's version (anything else: nothing to
undo, ``unchanged``); the rollback request carries the rollout's lease, like activations.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from cutover.controller.fleet.agents import AgentPort
from cutover.controller.fleet.results import HostStatus
from cutover.controller.fleet.runner import Done, FleetRunner
from cutover.controller.fleet.steps import record_done
from cutover.controller.rollout.context import RolloutContext
from cutover.controller.rollout.deadlines import answer_within
from cutover.controller.rollout.report import HostFailure
from cutover.controller.rollout.store import RolloutRecord

__all__ = ["Reverter", "needs_revert"]

_NOT_REVERTED_BY_US = ("reverted", "unresponsive", "unreachable")


def needs_revert(f: HostFailure) -> bool:
    """A failed host still on the version (its agent did not flip it back itself)."""
    return f.code != "reverted"


class Reverter:
    """Rolls hosts of one rollout back to the release they ran before."""

    def __init__(self, ctx: RolloutContext) -> None:
        self._ctx = ctx

    async def rollback(
        self, rec: RolloutRecord, hosts: list[str], *, parallel: bool = False
    ) -> dict[str, bool]:
        """Roll ``hosts`` back to their previous release; host -> it worked."""
        if not hosts:
            return {}
        ctx = self._ctx
        specs = [ctx.hosts[h] for h in hosts]
        runner = FleetRunner(
            specs,
            ctx.connect,
            max_parallel=len(specs) if parallel else rec.params.max_parallel,
            sink=ctx.sink,
        )
        wait = rec.params.progress_deadline_s

        async def work(port: AgentPort, on_event: Callable[[dict[str, Any]], None]) -> Done:
            name = getattr(port, "name", "")
            view = await answer_within(port.app(rec.app), wait, name, "reading the app")
            if view.current != rec.version:  # not (or no longer) on this release: nothing to undo
                return Done(status=HostStatus.UNCHANGED, message=f"runs {view.current}")
            return record_done(
                await port.rollback(rec.app, None, on_event, ctx.lease_for(name)), "already_active"
            )

        result = await runner.run("revert", rec.app, rec.version, work)
        return {h.host: h.status.succeeded for h in result.hosts}

    async def isolate(self, rec: RolloutRecord, failures: list[HostFailure]) -> None:
        """Failures within the budget: roll back those the agent did not revert itself."""
        targets = [f.host for f in failures if f.code not in _NOT_REVERTED_BY_US]
        reverted = await self.rollback(rec, targets) if targets else {}
        for f in failures:
            ok = f.code == "reverted" or reverted.get(f.host, False)
            f.decision = (
                "isolated (reverted)" if ok else "isolated (not reverted: agent unreachable)"
            )
        self._ctx.store.set_hosts(rec.id, {f.host: ("isolated", f.message) for f in failures})

    async def revert_all(self, rec: RolloutRecord, hosts: list[str]) -> dict[str, bool]:
        """Every host in ``hosts`` at once; their states recorded (reverted / revert_failed)."""
        reverted = await self.rollback(rec, hosts, parallel=True)
        self._ctx.store.set_hosts(
            rec.id, {h: ("reverted" if ok else "revert_failed", "") for h, ok in reverted.items()}
        )
        return reverted
