"""``cutover status``: one row per host — current, previous, staged, last health — with drift.

Hosts of a group that do not run the version most of the group runs are highlighted as drift;
a host that does not answer is shown as ``unreachable`` with the reason. Exit codes: 0 every host
answered (drift or not: ``drift`` in the JSON says so), 8 some could not be read, 9 none
answered, 1 every host answered with an error (e.g. the app is not configured there).
"""

from __future__ import annotations

import argparse
from typing import Any

from rich.markup import escape
from rich.table import Table

from cutover.agent.errors import CutoverError, ExitCode, TransportError
from cutover.controller.commands._context import (
    FleetContext,
    add_fleet_options,
    open_context,
    resolve_app,
    run_command,
)
from cutover.controller.fleet.agents import AppView
from cutover.controller.fleet.views import StatusRow, Unreadable, status_rows

__all__ = ["register", "status", "status_exit_code"]


def status_exit_code(rows: list[StatusRow]) -> int:
    """0 every host read; 9 none answered; 8 some read, some not; 1 none read (errors)."""
    unread = [r for r in rows if r.error is not None]
    if not unread:
        return ExitCode.OK
    if all(not r.reachable for r in rows):
        return ExitCode.UNREACHABLE
    return ExitCode.PARTIAL if len(unread) < len(rows) else ExitCode.FAILED


def _why(exc: CutoverError) -> Unreadable:
    if isinstance(exc, TransportError):
        return Unreadable(False, f"unreachable: {exc}")
    return Unreadable(True, f"{exc.code}: {exc}")


def _table(app: str, rows: list[StatusRow]) -> Table:
    t = Table(title=f"fleet status: {app}", title_justify="left")
    for col in ("host", "groups", "current", "previous", "staged", "health", "note"):
        t.add_column(col, overflow="fold")
    for r in rows:
        if r.error is not None:
            label = "[red]error[/]" if r.reachable else "[magenta]unreachable[/]"
            t.add_row(r.host, ",".join(r.groups), label, "-", "-", "-", escape(r.error))
            continue
        current = f"[bold yellow]{r.current or '-'}[/]" if r.drift else (r.current or "-")
        note = (
            f"[yellow]drift: {','.join(r.drift_groups)} runs {r.expected or 'nothing'}[/]"
            if r.drift
            else ""
        )
        if r.busy:
            note = (note + " busy").strip()
        health = r.health or "-"
        if r.health and not r.health.endswith("pass"):
            health = f"[red]{health}[/]"
        t.add_row(
            r.host,
            ",".join(r.groups),
            current,
            r.previous or "-",
            ", ".join(r.staged) or "-",
            health,
            note,
        )
    return t


async def _status(ctx: FleetContext, app: str) -> int:
    async def ask(agent: Any) -> AppView:
        view: AppView = await agent.app(app)
        return view

    answers = await ctx.runner().read(ask)
    views: dict[str, AppView | Unreadable] = {
        name: a if isinstance(a, AppView) else _why(a) for name, a in answers.items()
    }
    rows = status_rows(ctx.hosts, views)
    code = status_exit_code(rows)
    data = {
        "app": app,
        "hosts": [r.model_dump(mode="json") for r in rows],
        "drift": any(r.drift for r in rows),
        "unreachable": [r.host for r in rows if not r.reachable],
        "errors": {r.host: r.error for r in rows if r.reachable and r.error is not None},
        "exit_code": code,
    }

    def human() -> None:
        ctx.reporter.out.print(_table(app, rows))
        drifting = [r.host for r in rows if r.drift]
        if drifting:
            ctx.reporter.out.print(f"[yellow]drift[/]: {', '.join(drifting)}")

    ctx.reporter.document(data, human)
    return code


def status(args: argparse.Namespace) -> int:
    ctx = open_context(args, stream=False)
    return run_command(_status(ctx, resolve_app(args, ctx.fleet)))


def register(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser
) -> None:
    p = sub.add_parser(
        "status",
        parents=[common],
        help="current/previous/staged/health per host; drift highlighted",
    )
    add_fleet_options(p)
    p.set_defaults(fn=status)
