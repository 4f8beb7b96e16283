"""``cutover log [--group G] [--format table|md|json]``: the release log of the selection.

Two views, merged from what the agents hold (controller/fleet/release_log.py,
controller/fleet/views.py):

* the **release log**, one row per version, newest first: Version | Date | Type | Owner | Status |
  Notes, from each host's release records (the signed manifest's fields) and journal; a version
  whose content differs between hosts is marked **INTEGRITY FAILURE**;
* the **history**, every release event of every host, oldest first: who (the actor the agent
  recorded), what (event, version, previous), when (the agent's UTC timestamp), the result and
  checkpoint references.

``--format table`` (the default) prints both; ``md`` the release log as a Markdown table (for a
change ticket or a wiki); ``json`` (or ``--json``) one document with ``releases``, ``entries``
(the history), ``integrity_failures``, ``missing`` and ``exit_code``. Exit codes: 0 every host
answered, 6 a version's content differs between hosts (wins over the others), 8 some hosts did
not answer (their history is missing from the output), 9 none did.
"""

from __future__ import annotations

import argparse
import sys

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
from cutover.controller.fleet.agents import AgentPort, AppView, JournalEntry
from cutover.controller.fleet.release_log import (
    NOTES_WIDTH,
    ReleaseRow,
    display_date,
    integrity_message,
    release_log,
    release_log_markdown,
)
from cutover.controller.fleet.views import LogRow, merge_journals

__all__ = ["log", "register"]

MAX_PER_HOST = 10_000
_FAILED = ("stage.failed", "activate.reverted", "hooks.failed")


async def _log(ctx: FleetContext, app: str, per_host: int, limit: int, fmt: str) -> int:
    async def ask(agent: AgentPort) -> tuple[AppView, list[JournalEntry]]:
        view: AppView = await agent.app(app)
        entries: list[JournalEntry] = await agent.journal(app, per_host)
        return view, entries

    answers = await ctx.runner().read(ask)
    got = {n: a for n, a in answers.items() if not isinstance(a, CutoverError)}
    missing = {n: f"{a.code}: {a}" for n, a in answers.items() if isinstance(a, CutoverError)}
    journals = {n: entries for n, (_, entries) in got.items()}
    releases = release_log({n: view for n, (view, _) in got.items()}, journals, limit)
    rows = merge_journals(journals, limit)
    failures = [r for r in releases if r.integrity_failure]
    code = (
        ExitCode.VERIFY_FAILED
        if failures
        else ExitCode.OK
        if not missing
        else ExitCode.UNREACHABLE
        if not got
        else ExitCode.PARTIAL
    )
    data = {
        "app": app,
        "releases": [r.model_dump(mode="json") for r in releases],
        "entries": [r.model_dump(mode="json") for r in rows],
        "integrity_failures": [
            {"version": r.version, "message": integrity_message(app, r)} for r in failures
        ],
        "missing": missing,
        "exit_code": code,
    }

    def human() -> None:
        if fmt == "md":
            sys.stdout.write(release_log_markdown(app, releases, missing))
            return
        ctx.reporter.out.print(_releases_table(app, releases))
        ctx.reporter.out.print(_history_table(app, rows))
        for r in failures:
            ctx.reporter.err.print(f"[red]{escape(integrity_message(app, r))}[/]")
        for host, why in missing.items():
            ctx.reporter.warn(f"{host}: no history: {why}")

    ctx.reporter.document(data, human)
    return code


def _releases_table(app: str, releases: list[ReleaseRow]) -> Table:
    t = Table(title=f"release log: {app}", title_justify="left")
    for col in ("version", "date (UTC)", "type", "owner", "status", "notes"):
        t.add_column(col, overflow="fold")
    for r in releases:
        status = escape(r.status)
        if r.integrity_failure:
            status = f"[bold red]INTEGRITY FAILURE[/], {status}"
        notes = r.notes if len(r.notes) <= NOTES_WIDTH else r.notes[: NOTES_WIDTH - 1] + "…"
        t.add_row(
            escape(r.version),
            display_date(r.date),
            escape(r.release_type or "-"),
            escape(r.owner or "-"),
            status,
            escape(notes or "-"),
        )
    return t


def _history_table(app: str, rows: list[LogRow]) -> Table:
    t = Table(title=f"history: {app}", title_justify="left")
    for col in ("when (UTC)", "host", "result", "version", "from", "who", "checkpoint", "detail"):
        t.add_column(col, overflow="fold")
    for r in rows:
        result = escape(r.result)  # every cell from an agent is text, never rich markup
        t.add_row(
            escape(r.ts),
            escape(r.host),
            f"[red]{result}[/]" if r.event in _FAILED else result,
            escape(r.version or "-"),
            escape(r.previous or "-"),
            escape(r.actor or "-"),
            escape(r.checkpoint_ref or "-"),
            escape(r.detail or ""),
        )
    return t


def log(args: argparse.Namespace) -> int:
    if not 1 <= args.limit <= MAX_PER_HOST:
        raise ConfigError(f"--limit must be from 1 to {MAX_PER_HOST}")
    if args.format == "json":
        args.json = True
    ctx = open_context(args, stream=False)
    per_host = min(args.limit * 5, MAX_PER_HOST)  # the journal also holds non-release entries
    app = resolve_app(args, ctx.fleet)
    return run_command(_log(ctx, app, per_host, args.limit, args.format))


def register(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser
) -> None:
    p = sub.add_parser(
        "log",
        parents=[common],
        help="release log (version, date, type, owner, status, notes) and history of the hosts",
    )
    p.add_argument(
        "--limit",
        type=int,
        default=50,
        help="newest N versions and N history entries (default 50)",
    )
    p.add_argument(
        "--format",
        choices=("table", "md", "json"),
        default="table",
        help="table (default: release log and history), md (the release log in Markdown), json",
    )
    add_fleet_options(p)
    p.set_defaults(fn=log)
