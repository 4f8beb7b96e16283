"""``cutover log``: the release history of the selection, merged from the agents' journals.

Who (the actor the agent recorded), what (event, version, previous), when (the agent's UTC
timestamp), the result and checkpoint references, oldest first. Exit codes as ``status``: 0 every
host answered, 8 some did not (their history is missing from the output), 9 none did.
"""

from __future__ import annotations

import argparse
from typing import Any

from rich.markup import escape
from rich.table import Table

from cutover.agent.errors import ConfigError, CutoverError, ExitCode
from cutover.controller.commands._context import (
    FleetContext,
    add_fleet_options,
    open_context,
    resolve_app,
    run_command,
)
from cutover.controller.fleet.agents import JournalEntry
from cutover.controller.fleet.views import merge_journals

__all__ = ["log", "register"]

MAX_PER_HOST = 10_000


async def _log(ctx: FleetContext, app: str, per_host: int, limit: int) -> int:
    async def ask(agent: Any) -> list[JournalEntry]:
        entries: list[JournalEntry] = await agent.journal(app, per_host)
        return entries

    answers = await ctx.runner().read(ask)
    journals = {n: a for n, a in answers.items() if not isinstance(a, CutoverError)}
    missing = {n: f"{a.code}: {a}" for n, a in answers.items() if isinstance(a, CutoverError)}
    rows = merge_journals(journals, limit)
    code = (
        ExitCode.OK if not missing else ExitCode.UNREACHABLE if not journals else ExitCode.PARTIAL
    )
    data = {
        "app": app,
        "entries": [r.model_dump(mode="json") for r in rows],
        "missing": missing,
        "exit_code": code,
    }

    def human() -> None:
        t = Table(title=f"release log: {app}", title_justify="left")
        for col in (
            "when (UTC)",
            "host",
            "result",
            "version",
            "from",
            "who",
            "checkpoint",
            "detail",
        ):
            t.add_column(col, overflow="fold")
        for r in rows:
            style = (
                "red" if r.event in ("stage.failed", "activate.reverted", "hooks.failed") else ""
            )
            t.add_row(
                r.ts,
                r.host,
                f"[{style}]{r.result}[/]" if style else r.result,
                r.version or "-",
                r.previous or "-",
                escape(r.actor or "-"),
                r.checkpoint_ref or "-",
                escape(r.detail or ""),
            )
        ctx.reporter.out.print(t)
        for host, why in missing.items():
            ctx.reporter.warn(f"{host}: no history: {why}")

    ctx.reporter.document(data, human)
    return code


def log(args: argparse.Namespace) -> int:
    if not 1 <= args.limit <= MAX_PER_HOST:
        raise ConfigError(f"--limit must be from 1 to {MAX_PER_HOST}")
    ctx = open_context(args, stream=False)
    per_host = min(args.limit * 5, MAX_PER_HOST)  # the journal also holds non-release entries
    return run_command(_log(ctx, resolve_app(args, ctx.fleet), per_host, args.limit))


def register(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser
) -> None:
    p = sub.add_parser(
        "log", parents=[common], help="release history merged from the agents' journals"
    )
    p.add_argument(
        "--limit", type=int, default=50, help="newest N entries (also read per host; default 50)"
    )
    add_fleet_options(p)
    p.set_defaults(fn=log)
