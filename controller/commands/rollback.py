"""``cutover rollback [--to V]``: flip every selected host back, all in parallel.

Without ``--to`` each agent goes back to its own previous good release; with ``--to V`` to V
(which must have been active on that host). The agents run post_rollback hooks and live checks.

An agent refuses (``invalid_state``, nothing changed) a rollback that crosses a release whose
rollback plan says the database rollback is ``unsafe``, unless ``--accept-db-risk`` is given; the
agent then journals ``rollback.db_risk_accepted`` with the controller key as actor.
The command itself is controller/commands/_step.py (shared with ``activate``).
"""

from __future__ import annotations

import argparse

from cutover.controller.commands._context import add_fleet_options
from cutover.controller.commands._step import check_version, run_step
from cutover.controller.fleet.steps import rollback_step

__all__ = ["register", "rollback"]


def rollback(args: argparse.Namespace) -> int:
    check_version("--to", args.to)
    to: str | None = args.to
    accept: bool = args.accept_db_risk
    return run_step(args, "rollback", to, lambda app: rollback_step(app, to, accept_db_risk=accept))


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
