"""``cutover activate VERSION``: activate a staged release on every selected host, in parallel.

Each agent runs its pre/post-activate hooks and live health checks; a host whose activation fails
after the flip reverts by itself and reports ``failed`` with reason ``reverted``. A host already
running VERSION reports ``unchanged``. Canary waves are the rollout engine's job, not this one's.
The command itself is controller/commands/_step.py (shared with ``rollback``).
"""

from __future__ import annotations

import argparse

from cutover.controller.commands._context import add_fleet_options
from cutover.controller.commands._step import check_version, run_step
from cutover.controller.fleet.steps import activate_step

__all__ = ["activate", "register"]


def activate(args: argparse.Namespace) -> int:
    check_version("version", args.release)
    version: str = args.release
    return run_step(args, "activate", version, lambda app: activate_step(app, version))


def register(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser
) -> None:
    p = sub.add_parser(
        "activate", parents=[common], help="activate a staged release on the selected hosts"
    )
    p.add_argument("release", metavar="VERSION")
    add_fleet_options(p)
    p.set_defaults(fn=activate)
