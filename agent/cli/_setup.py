"""Setting up an app root: ``init`` and ``adopt`` (taking over a Capistrano/Deployer root)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from cutover.agent._util.privileges import acting_as, owner_of
from cutover.agent.cli._common import (
    _become_owner,
    _pick_app,
)
from cutover.agent.cli._invocation import _actor, _Out
from cutover.agent.config import add_app_to_config, load_config
from cutover.agent.errors import (
    ConfigError,
    ExitCode,
    StateError,
)
from cutover.agent.host.layout import Layout
from cutover.agent.host.ledger import Ledger
from cutover.agent.lifecycle.adopt import adopt, preflight, survey


def cmd_init(args: argparse.Namespace, out: _Out) -> int:
    if not args.app:
        raise ConfigError("init needs --app NAME (the app this root holds, e.g. --app ame)")
    root = Path(args.root).resolve()
    holder, foreign = survey(root)
    if holder is not None and holder != args.app:
        raise StateError(
            f"{root} is the root of app {holder!r} (its .cutover/ state says so); every app "
            "needs its own root: choose another --root"
        )
    if foreign and args.adopt:
        preflight(root)  # a current link adopt would refuse: refused before anything is written
    if foreign and not args.adopt:
        raise StateError(
            f"{root} holds releases Cutover did not create ({', '.join(foreign)}), e.g. from "
            "Capistrano or Deployer; Cutover never deletes them. Record them as rollback targets "
            "with `cutover-agent init --adopt ...` (docs/migrating.md), or choose an empty root"
        )
    # Whatever the caller's umask, nothing init creates is group- or world-writable: the agent
    # refuses such a config, key directory or app root (agent/strictmodes.py).
    old_umask = os.umask(0o022)
    os.umask(old_umask | 0o022)
    # Root writes the config; the app's files belong to the root's owner (e.g. Capistrano's
    # deploy user, or the agent's): never root-owned files in an app owned by someone else.
    owner = owner_of(root)
    try:
        with acting_as(owner):  # first: a config naming a root that cannot be created helps nobody
            Layout(root).create()
        add_app_to_config(args.config, args.app, root, [Path(k) for k in args.trust_release_key])
    finally:
        os.umask(old_umask)
    cfg = load_config(args.config)
    layout = Layout(cfg.apps[args.app].root)
    with acting_as(owner):
        layout.create()
        Ledger(args.app, layout).log(
            "init",
            root=str(root),
            actor=_actor(),
            release_keys=sorted(cfg.policies[args.app].keys),
        )
        adopted = _adopt(layout, args.app) if args.adopt else None
    data: dict[str, Any] = {
        "app": args.app,
        "root": str(root),
        "config": str(args.config),
        "release_keys": sorted(cfg.policies[args.app].keys),
    }
    if adopted is not None:
        data["adopted"] = adopted

    def human() -> None:
        print(f"initialised {args.app} at {root}; config {args.config}")
        if adopted is not None:
            _print_adopted(adopted)

    out.result(data, human)
    return ExitCode.OK


def _adopt(layout: Layout, app: str) -> dict[str, Any]:
    plan, state = adopt(layout, app, _actor())
    return {
        "releases": list(plan.releases),
        "current": state.current,
        "previous": state.previous,
        "converted_link": plan.convert_link,
    }


def _print_adopted(a: dict[str, Any]) -> None:
    if not a["releases"] and not a["converted_link"]:
        print("nothing to adopt: every release in the root is recorded")
        return
    print(f"adopted (unsigned, rollback targets only): {', '.join(a['releases']) or '-'}")
    if a["converted_link"]:
        print(f"converted current to the relative link releases/{a['current']}")
    print(f"current: {a['current'] or '-'}   previous: {a['previous'] or '-'}")


def cmd_adopt(args: argparse.Namespace, out: _Out) -> int:
    cfg = load_config(args.config)
    app = _pick_app(cfg, args.app)
    _become_owner(cfg.apps[app].root)
    data = {"app": app, **_adopt(Layout(cfg.apps[app].root), app)}
    out.result(data, lambda: _print_adopted(data))
    return ExitCode.OK
