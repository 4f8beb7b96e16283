"""What ``activate`` and ``rollback`` share: one step on every selected host, in parallel.

Both commands check their version argument, open the fleet context, run one
:data:`~cutover.controller.fleet.runner.HostWork` on every selected host (bounded by
``--max-parallel``), post the result to the webhooks, then print it and exit with its code
(controller/fleet/results.py). Only the step differs (controller/fleet/steps.py), so
:func:`run_step` is the one piece of code behind both.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

from cutover.agent.errors import ConfigError
from cutover.agent.versions import VERSION_RE
from cutover.controller.commands._context import open_context, resolve_app, run_command
from cutover.controller.fleet.runner import HostWork

__all__ = ["check_version", "run_step"]


def check_version(what: str, version: str | None) -> None:
    """Raises: ConfigError (exit 2, before any host): ``version`` is not a version."""
    if version is not None and not VERSION_RE.fullmatch(version):
        raise ConfigError(f"{what} {version!r}: use [A-Za-z0-9._+-], at most 128 characters")


def run_step(
    args: argparse.Namespace,
    action: str,
    version: str | None,
    step: Callable[[str], HostWork],
) -> int:
    """Run ``step(app)`` on the selection (``version`` names it in the output); the exit code."""
    ctx = open_context(args, stream=True)
    app = resolve_app(args, ctx.fleet)

    async def go() -> int:
        notifier = ctx.notifier()
        try:
            result = await ctx.runner().run(action, app, version, step(app))
            notifier.notify(action, result)
        finally:
            await notifier.drain()  # bounded by each webhook's timeout; the summary stays last
            ctx.reporter.close()
        ctx.reporter.step(result)
        return result.exit_code

    return run_command(go())
