"""``cutover deploy PACKAGE`` (or ``--package-url URL``): push, then activate, in one command.

Staging happens everywhere first; activation starts only when **every** selected host staged the
release (a deploy never leaves a group half on the new version because one box refused the
package): otherwise deploy stops with push's outcome and exit code, and says which hosts to fix.
Activation is delegated to an :class:`~cutover.controller.fleet.strategy.ActivationStrategy`
(:class:`AllAtOnce`), or with ``--rollout`` to the rollout engine (canary, waves, bake, budget:
docs/rollouts.md; its summary and exit code are the rollout's). Webhooks get ``push``, then
``activate``, then ``deploy`` (and ``failure`` whenever a step is not ok), delivered in the
background while the deploy goes on.
"""

from __future__ import annotations

import argparse

from cutover.controller.commands._context import (
    FleetContext,
    add_fleet_options,
    open_context,
    run_command,
)
from cutover.controller.commands._source import Source, add_source_options, resolve_source
from cutover.controller.commands.push import run_push
from cutover.controller.commands.rollout import (
    add_rollout_options,
    lease_options,
    params_from,
    run_rollout,
    start_rollout,
)
from cutover.controller.fleet.results import FleetOutcome, FleetResult
from cutover.controller.fleet.strategy import ActivationStrategy, AllAtOnce
from cutover.controller.rollout.store import RolloutStore, default_state_dir

__all__ = ["deploy", "register", "run_deploy"]


async def run_deploy(
    ctx: FleetContext, source: Source, strategy: ActivationStrategy
) -> tuple[FleetResult, FleetResult | None]:
    """Push then (if every host staged) activate; returns both steps' results."""
    runner = ctx.runner()
    notifier = ctx.notifier()
    try:
        pushed = await run_push(runner, source)
        ctx.reporter.step(pushed, "step.done")
        notifier.notify("push", pushed)
        activated: FleetResult | None = None
        if pushed.outcome == FleetOutcome.OK:
            activated = await strategy.activate(runner, source.app, source.version, ctx.hosts)
            ctx.reporter.step(activated, "step.done")
            notifier.notify("activate", activated)
        else:
            ctx.reporter.warn(
                f"not activated: {len(pushed.failed())} host(s) did not stage {source.version} "
                f"({', '.join(h.host for h in pushed.failed())}); fix them, or narrow the selection "
                "with --hosts/--group, and deploy again (hosts that staged it skip the upload)"
            )
        final = (activated or pushed).model_copy(update={"action": "deploy"})
        notifier.notify("deploy", final)
    finally:
        await notifier.drain()  # bounded by each webhook's timeout; the summary stays last
        ctx.reporter.close()
    extra = {"activated": activated is not None, "strategy": strategy.name}
    ctx.reporter.step(final, "summary", extra, table_too=False)  # the steps showed the tables
    return pushed, activated


def deploy(args: argparse.Namespace) -> int:
    ctx = open_context(args, stream=True)
    source = resolve_source(args, ctx.fleet)
    if args.rollout:
        return _deploy_rollout(args, ctx, source)

    async def go() -> int:
        pushed, activated = await run_deploy(ctx, source, AllAtOnce())
        return (activated or pushed).exit_code

    return run_command(go())


def _deploy_rollout(args: argparse.Namespace, ctx: FleetContext, source: Source) -> int:
    """``deploy --rollout``: push everywhere, then (only if every host staged) the rollout."""
    params = params_from(args, ctx.max_parallel)
    store = RolloutStore(args.state_dir or default_state_dir())

    async def go() -> int:
        notifier = ctx.notifier()
        try:
            pushed = await run_push(ctx.runner(), source)
            ctx.reporter.step(pushed, "step.done")
            notifier.notify("push", pushed)
        finally:
            await notifier.drain()
            ctx.reporter.close()
        if pushed.outcome != FleetOutcome.OK:
            ctx.reporter.warn(
                f"no rollout: {len(pushed.failed())} host(s) did not stage {source.version} "
                f"({', '.join(h.host for h in pushed.failed())}); fix them and deploy again"
            )
            ctx.reporter.step(pushed.model_copy(update={"action": "deploy"}), table_too=False)
            return pushed.exit_code
        rid = start_rollout(ctx, store, source.app, source.version, params)
        summary = await run_rollout(ctx, store, rid, **lease_options(args))
        return summary.exit_code

    try:
        return run_command(go())
    finally:
        store.close()


def register(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser
) -> None:
    p = sub.add_parser("deploy", parents=[common], help="push, then activate on the selected hosts")
    add_source_options(p)
    p.add_argument(
        "--rollout",
        action="store_true",
        help="activate with the rollout engine (canary, waves; options below; docs/rollouts.md)",
    )
    add_rollout_options(p)
    add_fleet_options(p)
    p.set_defaults(fn=deploy)
