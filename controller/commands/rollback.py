"""``cutover rollback [--to V]``: flip every selected host back, all in parallel.

Without ``--to`` each agent goes back to its own previous good release; with ``--to V`` to V
(which must have been active on that host). The agents run post_rollback hooks and live checks.

An agent refuses (``invalid_state``, nothing changed) a rollback that crosses a release whose
rollback plan says the database rollback is ``unsafe``, unless ``--accept-db-risk`` is given; the
agent then journals ``rollback.db_risk_accepted`` with the controller key as actor.
"""

from __future__ import annotations

import argparse

from cutover.agent.errors import ConfigError
from cutover.agent.versions import VERSION_RE
from cutover.controller.commands._context import (
    FleetContext,
    add_fleet_options,
    open_context,
    resolve_app,
    run_command,
)
from cutover.controller.fleet.steps import rollback_step

__all__ = ["register", "rollback"]


async def _rollback(ctx: FleetContext, app: str, to: str | None, accept_db_risk: bool) -> int:
    notifier = ctx.notifier()
    step = rollback_step(app, to, accept_db_risk=accept_db_risk)
    try:
        result = await ctx.runner().run("rollback", app, to, step)
        notifier.notify("rollback", result)
    finally:
        await notifier.drain()  # bounded by each webhook's timeout; the summary stays last
        ctx.reporter.close()
    ctx.reporter.step(result)
    return result.exit_code


def rollback(args: argparse.Namespace) -> int:
    if args.to is not None and not VERSION_RE.fullmatch(args.to):
        raise ConfigError(f"--to {args.to!r}: use [A-Za-z0-9._+-], at most 128 characters")
    ctx = open_context(args, stream=True)
    return run_command(_rollback(ctx, resolve_app(args, ctx.fleet), args.to, args.accept_db_risk))


def register(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser
) -> None:
    p = sub.add_parser(
        "rollback", parents=[common], help="roll the selected hosts back, in parallel"
    )
    p.add_argument(
        "--to", metavar="V", help="a release that was active (default: each host's previous)"
    )
    p.add_argument(
        "--accept-db-risk",
        action="store_true",
        help="roll back across a release whose database rollback is 'unsafe' (journaled)",
    )
    add_fleet_options(p)
    p.set_defaults(fn=rollback)
