"""``cutover rollout VERSION``, ``rollouts``, ``promote ID``, ``abort ID``: the rollout engine's CLI.

``rollout`` plans waves over the selection (``--canary``, ``--batch``), records the plan in the
local state dir (``--state-dir``, else ``$CUTOVER_STATE_DIR``, else ``~/.local/state/cutover``),
leases the app on every host, then runs the engine (controller/rollout/engine.py).
``--resume ID`` continues a rollout whose CLI died (the agents' records are the truth);
``promote ID`` continues a paused one past its pause; ``abort ID`` reverts every host a rollout
touched; ``rollouts`` lists past and running rollouts. A paused rollout keeps its leases for
``--pause-lease`` (default 1 h). Exit codes: controller/rollout/report.py
(0 rolled out, 8 partial, 7 reverted/aborted, 1 halted, 10 paused, 4 leased by another rollout).
"""

from __future__ import annotations

import argparse
import getpass
import socket
from pathlib import Path
from typing import Any

from cutover.agent.errors import ConfigError
from cutover.agent.versions import VERSION_RE
from cutover.controller.commands._context import (
    FleetContext,
    add_fleet_options,
    open_context,
    resolve_app,
    run_command,
)
from cutover.controller.commands._rollout_view import RolloutView, rollouts_table
from cutover.controller.fleet.agents import AgentPool
from cutover.controller.rollout.engine import RolloutEngine
from cutover.controller.rollout.leases import DEFAULT_TTL_S, PAUSE_LEASE_S, LeaseKeeper
from cutover.controller.rollout.plan import RolloutParams, parse_amount, plan_waves
from cutover.controller.rollout.report import RolloutSummary, summary_event, webhook_body
from cutover.controller.rollout.store import RolloutStore, default_state_dir

__all__ = [
    "add_pause_lease_option",
    "add_rollout_options",
    "check_pause_lease",
    "lease_options",
    "params_from",
    "register",
    "rollout",
    "run_rollout",
    "start_rollout",
]


def add_rollout_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("rollout (docs/rollouts.md)")
    g.add_argument("--canary", default="1", metavar="N|P%", help="hosts of wave 0 (default 1)")
    g.add_argument("--batch", default="25%", metavar="N|P%", help="hosts per later wave (25%%)")
    g.add_argument("--bake", type=float, default=0.0, metavar="S", help="min healthy time per wave")
    g.add_argument(
        "--healthy-deadline", type=float, default=300.0, metavar="S",
        help="one host's activation must be healthy within S (default 300)",
    )  # fmt: skip
    g.add_argument(
        "--progress-deadline", type=float, default=10.0, metavar="S",
        help="an agent silent for S is marked failed (default 10)",
    )  # fmt: skip
    g.add_argument(
        "--max-failures", default="0", metavar="N|P%",
        help="failures (after the canary) isolated before the whole rollout reverts (default 0)",
    )  # fmt: skip
    g.add_argument(
        "--auto-revert", action=argparse.BooleanOptionalAction, default=True,
        help="revert every touched host when the canary fails or the budget is exceeded",
    )  # fmt: skip
    g.add_argument("--pause-after-canary", action="store_true", help="wait for `cutover promote`")
    g.add_argument("--steal", action="store_true", help="take over another rollout's leases")
    g.add_argument(
        "--lease-ttl", type=float, default=DEFAULT_TTL_S, metavar="S",
        help=f"leases expire S after their last renewal (default {DEFAULT_TTL_S:g})",
    )  # fmt: skip
    add_pause_lease_option(g)
    add_state_option(g)


def add_pause_lease_option(g: argparse._ArgumentGroup | argparse.ArgumentParser) -> None:
    g.add_argument(
        "--pause-lease", type=float, default=PAUSE_LEASE_S, metavar="S",
        help="a paused rollout keeps its leases S more, so no other rollout slips in "
        f"(default {PAUSE_LEASE_S:g}, at most 3600)",
    )  # fmt: skip


def add_state_option(g: argparse._ArgumentGroup | argparse.ArgumentParser) -> None:
    g.add_argument(
        "--state-dir", type=Path, metavar="DIR",
        help="rollout state (default $CUTOVER_STATE_DIR, else ~/.local/state/cutover)",
    )  # fmt: skip


def params_from(args: argparse.Namespace, max_parallel: int) -> RolloutParams:
    """The rollout parameters of the command line (ConfigError, exit 2, when one is wrong)."""
    for name in ("bake", "healthy_deadline", "progress_deadline", "lease_ttl"):
        value = getattr(args, name)
        if value < 0 or (name != "bake" and value == 0):
            raise ConfigError(f"--{name.replace('_', '-')} {value:g}: must be positive")
    if not 3 <= args.lease_ttl <= 3600:
        raise ConfigError("--lease-ttl must be from 3 to 3600 seconds")
    check_pause_lease(args)
    return RolloutParams(
        canary=parse_amount("--canary", args.canary),
        batch=parse_amount("--batch", args.batch),
        max_parallel=max_parallel,
        bake_s=args.bake,
        healthy_deadline_s=args.healthy_deadline,
        progress_deadline_s=args.progress_deadline,
        max_failures=parse_amount("--max-failures", args.max_failures, allow_zero=True),
        auto_revert=args.auto_revert,
        pause_after_canary=args.pause_after_canary,
    )


def check_pause_lease(args: argparse.Namespace) -> None:
    if not 3 <= args.pause_lease <= 3600:
        raise ConfigError(
            f"--pause-lease {args.pause_lease:g}: must be from 3 to 3600 seconds "
            "(an agent keeps a lease at most an hour)"
        )


def _owner() -> str:
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return f"{user}@{socket.gethostname()}"[:128]


def _store(args: argparse.Namespace) -> RolloutStore:
    return RolloutStore(args.state_dir or default_state_dir())


def start_rollout(
    ctx: FleetContext, store: RolloutStore, app: str, version: str, params: RolloutParams
) -> str:
    """Record a new rollout of ``version`` over ``ctx.hosts``; returns its id."""
    waves = plan_waves([h.name for h in ctx.hosts], params.canary, params.batch)
    return store.create(app, version, str(ctx.fleet.path), _owner(), params, waves)


def lease_options(args: argparse.Namespace) -> dict[str, Any]:
    """``run_rollout``'s lease keywords from the command line (promote/abort have no --lease-ttl)."""
    return {
        "steal": args.steal,
        "lease_ttl_s": getattr(args, "lease_ttl", DEFAULT_TTL_S),
        "pause_lease_s": args.pause_lease,
    }


async def run_rollout(
    ctx: FleetContext,
    store: RolloutStore,
    rid: str,
    *,
    steal: bool = False,
    lease_ttl_s: float = DEFAULT_TTL_S,
    pause_lease_s: float = PAUSE_LEASE_S,
    promote: bool = False,
    abort: bool = False,
) -> RolloutSummary:
    """Run (resume, promote, abort) rollout ``rid``; events go to the context's reporter."""
    rec = store.get(rid)
    unknown = [h for w in rec.waves for h in w if h not in ctx.fleet.hosts]
    if unknown:
        raise ConfigError(f"rollout {rid}: host(s) {', '.join(unknown)} not in {ctx.fleet.path}")
    hosts = [ctx.fleet.hosts[h] for w in rec.waves for h in w]
    view = RolloutView(ctx.reporter)
    limits = ctx.fleet.concurrency
    notifier = ctx.notifier()

    def sink(event: dict[str, Any]) -> None:
        view.event(event)
        message = webhook_body(event)
        if message is not None:
            notifier.post(message[0], failure=message[1])

    dial = AgentPool(ctx.key, limits)  # one client per host: keep-alive across the steps
    keeper = LeaseKeeper(rec.app, rid, rec.owner, dial, sink, ttl_s=lease_ttl_s, steal=steal)
    engine = RolloutEngine(hosts, dial, store, sink, keeper, pause_lease_s=pause_lease_s)
    try:
        summary = await (engine.abort(rid) if abort else engine.run(rid, promote=promote))
        final = summary_event(summary)
        message = webhook_body(final)
        if message is not None:
            notifier.post(message[0], failure=message[1])
    finally:
        await dial.aclose()
        await notifier.drain()  # bounded by each webhook's timeout; the summary stays last
        view.close()
    view.summary(summary)
    if ctx.reporter.as_json:
        ctx.reporter.event({"ts": _ts(), **final})
    return summary


def _ts() -> str:
    from cutover.controller.fleet.runner import now_iso

    return now_iso()


def rollout(args: argparse.Namespace) -> int:
    if (args.version is None) == (args.resume is None):
        raise ConfigError("give VERSION (a new rollout) or --resume ID, not both")
    if args.version is not None and not VERSION_RE.fullmatch(args.version):
        raise ConfigError(f"VERSION {args.version!r}: use [A-Za-z0-9._+-]")
    ctx = open_context(args, stream=True)
    params = params_from(args, ctx.max_parallel)
    store = _store(args)

    async def go() -> int:
        if args.resume is not None:
            rid = args.resume
        else:
            rid = start_rollout(ctx, store, resolve_app(args, ctx.fleet), args.version, params)
        summary = await run_rollout(ctx, store, rid, **lease_options(args))
        return summary.exit_code

    try:
        return run_command(go())
    finally:
        store.close()


def _continue(args: argparse.Namespace, *, promote: bool, abort: bool) -> int:
    args.group = args.hosts = None
    check_pause_lease(args)
    ctx = open_context(args, stream=True)
    store = _store(args)

    async def go() -> int:
        summary = await run_rollout(
            ctx, store, args.id, promote=promote, abort=abort, **lease_options(args)
        )
        return summary.exit_code

    try:
        return run_command(go())
    finally:
        store.close()


def promote(args: argparse.Namespace) -> int:
    return _continue(args, promote=True, abort=False)


def abort(args: argparse.Namespace) -> int:
    return _continue(args, promote=False, abort=True)


def rollouts(args: argparse.Namespace) -> int:
    store = _store(args)
    try:
        records = store.list(args.limit)
    finally:
        store.close()
    if args.json:
        import json

        print(json.dumps({"rollouts": [r.model_dump(mode="json") for r in records]}, indent=2))
    else:
        from cutover.controller.commands._output import Reporter

        Reporter(as_json=False, stream=False).out.print(rollouts_table(records))
    return 0


def register(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser
) -> None:
    p = sub.add_parser(
        "rollout", parents=[common], help="activate a staged release in health-gated waves"
    )
    p.add_argument("version", nargs="?", metavar="VERSION")
    p.add_argument("--resume", metavar="ID", help="continue rollout ID after the CLI died")
    add_rollout_options(p)
    add_fleet_options(p)
    p.set_defaults(fn=rollout)

    for name, fn, text in (
        ("promote", promote, "continue a paused rollout past its pause"),
        ("abort", abort, "revert every host a rollout touched and end it"),
    ):
        p = sub.add_parser(name, parents=[common], help=text)
        p.add_argument("id", metavar="ID")
        p.add_argument("--steal", action="store_true", help="take over other leases")
        add_pause_lease_option(p)
        add_state_option(p)
        add_fleet_options(p, app=False)
        p.set_defaults(fn=fn)

    p = sub.add_parser("rollouts", parents=[common], help="past and running rollouts")
    p.add_argument("--limit", type=int, default=50)
    add_state_option(p)
    p.set_defaults(fn=rollouts)
