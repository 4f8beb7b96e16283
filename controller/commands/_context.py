"""What every fleet command needs before it talks to a host: the options and the context.

``--fleet FILE`` (else ``$CUTOVER_FLEET``, else ``./fleet.toml``), ``--group G``, ``--hosts a,b``,
``--key FILE`` (else ``$CUTOVER_KEY``, else ``controller_key`` of fleet.toml), ``--app`` (else
``app`` of fleet.toml), ``--max-parallel N`` (else ``concurrency.max_parallel``), ``--json``.
Everything here fails before any host is contacted, with :class:`ConfigError` (exit 2).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cutover.agent.errors import ConfigError
from cutover.agent.keys import PrivateKey, load_private_key
from cutover.agent.package.manifest import APP_RE
from cutover.controller.commands._output import Reporter
from cutover.controller.fleet.inventory import Fleet, HostSpec, fleet_path, load_fleet
from cutover.controller.fleet.selection import parse_host_list, select_hosts

if TYPE_CHECKING:
    from cutover.controller.fleet.notify import Notifier
    from cutover.controller.fleet.runner import FleetRunner

__all__ = [
    "INTERRUPTED",
    "KEY_ENV",
    "FleetContext",
    "add_fleet_options",
    "open_context",
    "resolve_app",
    "run_command",
]

KEY_ENV = "CUTOVER_KEY"
INTERRUPTED = 130


def run_command(coro: Coroutine[Any, Any, int]) -> int:
    """Run a command's coroutine; Ctrl-C exits 130 with what it means for the fleet."""
    try:
        return asyncio.run(coro)
    except KeyboardInterrupt:
        print(
            "interrupted: operations already started on agents run to their end there; "
            "see `cutover status` (and run the command again: it is idempotent)",
            file=sys.stderr,
        )
        return INTERRUPTED


def add_fleet_options(p: argparse.ArgumentParser, *, app: bool = True) -> None:
    g = p.add_argument_group("fleet")
    g.add_argument(
        "--fleet", metavar="FILE", help="fleet.toml (default $CUTOVER_FLEET, else ./fleet.toml)"
    )
    g.add_argument("--group", metavar="G", help="only the hosts of group G")
    g.add_argument("--hosts", metavar="A,B", help="only these hosts (comma-separated)")
    g.add_argument(
        "--key",
        metavar="FILE",
        help=f"controller key (default ${KEY_ENV}, else fleet.toml controller_key)",
    )
    g.add_argument(
        "--max-parallel",
        type=int,
        metavar="N",
        help="hosts at once (default fleet.toml concurrency.max_parallel)",
    )
    if app:
        g.add_argument("--app", help="the app (default: fleet.toml app)")


@dataclass
class FleetContext:
    fleet: Fleet
    hosts: list[HostSpec]
    key: PrivateKey
    reporter: Reporter
    max_parallel: int

    def runner(self) -> FleetRunner:
        # the agent client (aiohttp) only for a command that talks to hosts, not for the parser
        from cutover.controller.fleet.agents import connect
        from cutover.controller.fleet.runner import FleetRunner

        limits = self.fleet.concurrency
        return FleetRunner(
            self.hosts,
            lambda h: connect(h, self.key, limits),
            max_parallel=self.max_parallel,
            sink=self.reporter.event,
        )

    def notifier(self) -> Notifier:
        from cutover.controller.fleet.notify import Notifier  # aiohttp: webhooks

        return Notifier(self.fleet.webhooks, self.fleet.path.name, self.reporter.event)


def _key(args: argparse.Namespace, fleet: Fleet) -> PrivateKey:
    path = args.key or os.environ.get(KEY_ENV) or fleet.controller_key
    if not path:
        raise ConfigError(
            f"no controller key: pass --key FILE, set {KEY_ENV}, or set controller_key in {fleet.path}"
        )
    return load_private_key(Path(path))


def resolve_app(args: argparse.Namespace, fleet: Fleet, found: str | None = None) -> str:
    """The app: ``--app``, else what the package says (``found``), else fleet.toml's ``app``."""
    given = getattr(args, "app", None)
    if given and found and given != found:
        raise ConfigError(f"--app {given!r} but the package is for app {found!r}")
    app = given or found or fleet.app
    if not app:
        raise ConfigError(f"which app? pass --app NAME or set app in {fleet.path}")
    if not APP_RE.fullmatch(app):
        raise ConfigError(f"app {app!r}: use lowercase letters, digits, '_' and '-'")
    return app


def open_context(args: argparse.Namespace, *, stream: bool) -> FleetContext:
    """Load fleet.toml, select hosts, load the key; ``stream``: NDJSON events under --json."""
    fleet = load_fleet(fleet_path(args.fleet))
    hosts = select_hosts(fleet, args.group, parse_host_list(args.hosts))
    if args.max_parallel is not None and args.max_parallel < 1:
        raise ConfigError("--max-parallel must be at least 1")
    key = _key(args, fleet)
    return FleetContext(
        fleet=fleet,
        hosts=hosts,
        key=key,
        reporter=Reporter(as_json=args.json, stream=stream),
        max_parallel=args.max_parallel or fleet.concurrency.max_parallel,
    )
