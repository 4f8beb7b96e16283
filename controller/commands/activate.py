"""``cutover activate VERSION``: activate a staged release on every selected host, in parallel.

Each agent runs its pre/post-activate hooks and live health checks; a host whose activation fails
after the flip reverts by itself and reports ``failed`` with reason ``reverted``. A host already
running VERSION reports ``unchanged``. Canary waves are the rollout engine's job, not this one's.
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
from cutover.controller.fleet.strategy import AllAtOnce

__all__ = ["activate", "register"]


async def _activate(ctx: FleetContext, app: str, version: str) -> int:
    notifier = ctx.notifier()
    try:
        result = await AllAtOnce().activate(ctx.runner(), app, version, ctx.hosts)
        notifier.notify("activate", result)
    finally:
        await notifier.drain()  # bounded by each webhook's timeout; the summary stays last
        ctx.reporter.close()
    ctx.reporter.step(result)
    return result.exit_code


def activate(args: argparse.Namespace) -> int:
    if not VERSION_RE.fullmatch(args.release):
        raise ConfigError(f"version {args.release!r}: use [A-Za-z0-9._+-], at most 128 characters")
    ctx = open_context(args, stream=True)
    return run_command(_activate(ctx, resolve_app(args, ctx.fleet), args.release))


def register(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser
) -> None:
    p = sub.add_parser(
        "activate", parents=[common], help="activate a staged release on the selected hosts"
    )
    p.add_argument("release", metavar="VERSION")
    add_fleet_options(p)
    p.set_defaults(fn=activate)
