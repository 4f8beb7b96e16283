"""``cutover push PACKAGE`` / ``cutover push --package-url URL``: stage on every selected host.

Uploads (or has the agents fetch) in parallel up to ``max_parallel``; each host reports bytes,
verification, extraction and stage hooks as it goes, and ends with its own result. A host that
already holds the release reports ``unchanged`` (re-pushing is a no-op). Nothing is activated.
By default an upload is a delta: each host is sent only the files it lacks (controller/delta.py;
``--no-delta`` sends the full package); each host's result says the bytes sent and saved.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from cutover.controller.commands._context import (
    FleetContext,
    add_fleet_options,
    open_context,
    run_command,
)
from cutover.controller.commands._source import Source, add_source_options, resolve_source
from cutover.controller.delta import DeltaPlanner
from cutover.controller.fleet.results import FleetResult
from cutover.controller.fleet.runner import FleetRunner
from cutover.controller.fleet.steps import stage_step

__all__ = ["push", "register", "run_push"]


async def run_push(runner: FleetRunner, source: Source) -> FleetResult:
    """Stage ``source`` on every host of ``runner`` (a delta per host unless ``source.delta`` is
    off or the package comes from a URL)."""
    with tempfile.TemporaryDirectory(prefix="cutover-delta-") as workdir:
        planner = None
        if source.package is not None and source.delta:
            planner = DeltaPlanner(source.package, Path(workdir))
        step = stage_step(
            source.app, source.version, package=source.package, url=source.url, delta=planner
        )
        return await runner.run("push", source.app, source.version, step)


async def _push(ctx: FleetContext, source: Source) -> int:
    notifier = ctx.notifier()
    try:
        result = await run_push(ctx.runner(), source)
        notifier.notify("push", result)
    finally:
        await notifier.drain()  # bounded by each webhook's timeout; the summary stays last
        ctx.reporter.close()
    ctx.reporter.step(result)
    return result.exit_code


def push(args: argparse.Namespace) -> int:
    ctx = open_context(args, stream=True)
    source = resolve_source(args, ctx.fleet)
    return run_command(_push(ctx, source))


def register(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser
) -> None:
    p = sub.add_parser(
        "push", parents=[common], help="stage a release on the selected hosts (no activation)"
    )
    add_source_options(p)
    add_fleet_options(p)
    p.set_defaults(fn=push)
