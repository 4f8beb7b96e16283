"""The lifecycle and inspection commands: status, releases, stage, activate, rollback, verify, prune, pin, clear-bad, delete, journal, keys, serve."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cutover.agent.cli._common import (
    _become_owner,
    _freeze_view,
    _manager,
    _pick_app,
    _print_op,
    _run,
    _state_view,
)
from cutover.agent.cli._invocation import _actor, _Out
from cutover.agent.config import load_config
from cutover.agent.errors import (
    ExitCode,
)
from cutover.agent.host.layout import Layout
from cutover.agent.host.ledger import Ledger
from cutover.agent.lifecycle.manager import AppManager
from cutover.agent.package.container import open_package
from cutover.agent.trust.freeze import status_lines
from cutover.agent.trust.policy import peek_app


def cmd_status(args: argparse.Namespace, out: _Out) -> int:
    cfg = load_config(args.config)
    apps = [_pick_app(cfg, args.app)] if args.app or len(cfg.apps) == 1 else list(cfg.apps)
    # Recovery first: status after a crash must show the recovered, consistent state.
    recovered: dict[str, list[str]] = {}
    for app in apps:
        res = _run(_manager(cfg, app).recover_only())
        out.recovered(res.recovered)
        recovered[app] = res.recovered
    now = datetime.now(UTC)  # one reading for the JSON and the human lines
    views = [
        {**_state_view(cfg, a), "recovered": recovered[a], "freeze": _freeze_view(cfg, a, now)}
        for a in apps
    ]

    def human() -> None:
        for v in views:
            staged = [
                r["version"] for r in v["releases"] if r["status"] == "staged" and r["installed"]
            ]
            bad = [r["version"] for r in v["releases"] if r["status"] == "bad"]
            print(f"{v['app']}  ({v['root']})")
            print(f"  current   {v['current'] or '-'}")
            print(f"  previous  {v['previous'] or '-'}")
            print(f"  staged    {', '.join(staged) or '-'}")
            if bad:
                print(f"  bad       {', '.join(bad)}")
            for line in status_lines(cfg.apps[v["app"]].freeze, now):
                print(f"  {line}")

    out.result({"apps": views}, human)
    return ExitCode.OK


def cmd_releases(args: argparse.Namespace, out: _Out) -> int:
    cfg = load_config(args.config)
    app = _pick_app(cfg, args.app)
    view = _state_view(cfg, app, with_results=True)

    def human() -> None:
        rows = [("VERSION", "STATUS", "TYPE", "OWNER", "STAGED", "ACTIVATED", "PIN", "SIGNERS")]
        for r in view["releases"]:
            if not r["installed"] and r["status"] != "failed":
                continue
            rows.append(
                (
                    r["version"],
                    r["status"] + ("" if r["installed"] else " (removed)"),
                    r["release_type"] or "-",
                    r["owner"] or "-",
                    r["staged_at"],
                    r["activated_at"] or "-",
                    "yes" if r["pinned"] else "",
                    ",".join(s[:12] for s in r["signers"]),
                )
            )
        widths = [max(len(str(row[i])) for row in rows) for i in range(len(rows[0]))]
        for row in rows:
            print("  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())

    out.result(view, human)
    return ExitCode.OK


def cmd_stage(args: argparse.Namespace, out: _Out) -> int:
    cfg = load_config(args.config)
    package = Path(args.package)
    app = args.app
    if app is None:
        parts, fh = open_package(package)
        fh.close()
        app = peek_app(parts.manifest_bytes)
    app = _pick_app(cfg, app)
    progress: Callable[[str, int, int], None] | None = None
    if sys.stderr.isatty() and not out.json:
        from cutover.agent.progress import stage_bar  # rich: only when a bar is drawn

        progress = stage_bar()
    mgr = _manager(cfg, app, progress_events=not out.json)
    try:
        res = _run(
            mgr.stage(
                package,
                expected_version=args.version,
                allow_downgrade=args.allow_downgrade,
                progress=progress,
            )
        )
    finally:
        if progress is not None:
            progress("done", 0, 0)
    _print_op(out, res)
    return ExitCode.OK


def cmd_activate(args: argparse.Namespace, out: _Out) -> int:
    cfg = load_config(args.config)
    app = _pick_app(cfg, args.app)
    if out.json or not sys.stderr.isatty():
        res = _run(_manager(cfg, app, progress_events=not out.json).activate(args.version))
    else:  # a terminal: phases, check results and the bake countdown (agent/progress.py)
        from cutover.agent.progress import ActivationProgress

        with ActivationProgress() as shown:
            mgr = AppManager(app, cfg.apps[app], cfg.policies[app], actor=_actor(), events=shown)
            res = _run(mgr.activate(args.version))
    _print_op(out, res)
    return ExitCode.OK


def cmd_rollback(args: argparse.Namespace, out: _Out) -> int:
    cfg = load_config(args.config)
    mgr = _manager(cfg, _pick_app(cfg, args.app), progress_events=not out.json)
    res = _run(mgr.rollback(args.to, restore=args.restore, accept_db_risk=args.accept_db_risk))
    _print_op(out, res)
    return ExitCode.OK if res.ok else ExitCode.FAILED


def cmd_verify(args: argparse.Namespace, out: _Out) -> int:
    cfg = load_config(args.config)
    res = _run(_manager(cfg, _pick_app(cfg, args.app)).check_drift(args.version))
    _print_op(out, res)
    return ExitCode.OK


def cmd_prune(args: argparse.Namespace, out: _Out) -> int:
    cfg = load_config(args.config)
    _print_op(out, _run(_manager(cfg, _pick_app(cfg, args.app)).prune()))
    return ExitCode.OK


def cmd_pin(args: argparse.Namespace, out: _Out) -> int:
    cfg = load_config(args.config)
    mgr = _manager(cfg, _pick_app(cfg, args.app))
    _print_op(out, _run(mgr.pin(args.version, args.command == "pin")))
    return ExitCode.OK


def cmd_clear_bad(args: argparse.Namespace, out: _Out) -> int:
    cfg = load_config(args.config)
    _print_op(out, _run(_manager(cfg, _pick_app(cfg, args.app)).clear_bad(args.version)))
    return ExitCode.OK


def cmd_delete(args: argparse.Namespace, out: _Out) -> int:
    cfg = load_config(args.config)
    _print_op(out, _run(_manager(cfg, _pick_app(cfg, args.app)).delete(args.version)))
    return ExitCode.OK


def cmd_journal(args: argparse.Namespace, out: _Out) -> int:
    cfg = load_config(args.config)
    app = _pick_app(cfg, args.app)
    _become_owner(cfg.apps[app].root)
    layout = Layout(cfg.apps[app].root)
    layout.check(app)
    ledger = Ledger(app, layout)
    if args.verify:
        state = ledger.load()
        n = ledger.journal.check_chain(ledger.recorded_head(state))
        out.result(
            {"app": app, "entries": n, "ok": True},
            lambda: print(f"journal of {app}: {n} entries, hash chain intact"),
        )
        return ExitCode.OK
    entries = ledger.journal.tail(args.limit)

    def human() -> None:
        for e in entries:
            extra = {k: v for k, v in e.items() if k not in ("seq", "ts", "event", "prev", "app")}
            detail = " ".join(f"{k}={json.dumps(v, default=str)}" for k, v in extra.items())
            print(f"{e['seq']:>5} {e['ts']} {e['event']:<18} {detail}"[:400])

    out.result({"app": app, "entries": entries}, human)
    return ExitCode.OK


def cmd_keys(args: argparse.Namespace, out: _Out) -> int:
    cfg = load_config(args.config)
    rows: list[dict[str, Any]] = []
    for app, pol in cfg.policies.items():
        for kid, k in sorted(pol.keys.items()):
            rows.append(
                {
                    "role": "release",
                    "app": app,
                    "keyid": kid,
                    "source": k.source,
                    "threshold": pol.threshold,
                }
            )
    for kid, lk in sorted(cfg.controller_keys.items()):
        rows.append(
            {
                "role": f"controller:{lk.role}",
                "app": "*",
                "keyid": kid,
                "source": lk.key.source,
                "name": lk.name,
            }
        )

    def human() -> None:
        for r in rows:
            print(f"{r['role']:<20} {r['app']:<12} {r['keyid'][:16]}  {r['source']}")

    out.result({"keys": rows}, human)
    return ExitCode.OK


def cmd_serve(args: argparse.Namespace, out: _Out) -> int:
    from cutover.agent.daemon.server import serve

    code: int = serve(args.config)
    return code


# ---------------------------------------------------------------- parser
