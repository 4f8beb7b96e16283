"""``cutover-agent``: the on-host CLI. Works with the daemon stopped: this is the emergency path.

Every command takes the same per-app lock, reads the same state and journal, and runs the same
crash recovery as the daemon (agent.lifecycle). Human output by default, ``--json`` for scripts.
Exit codes (agent.errors.ExitCode, docs/operations.md): 0 ok, 1 operation failed, 2 usage or
config, 3 input rejected, 4 conflict (locked), 5 not found, 6 verification failed (drift),
7 activation reverted.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import pwd
import shlex
import sys
from collections.abc import Callable, Coroutine, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cutover.agent import __version__
from cutover.agent._util.privileges import acting_as, current_user, drop_to, owner_of
from cutover.agent.config import DEFAULT_CONFIG, LoadedConfig, add_app_to_config, load_config
from cutover.agent.errors import (
    ConfigError,
    CutoverError,
    ExitCode,
    NotFoundError,
    StateError,
)
from cutover.agent.host.layout import Layout
from cutover.agent.host.ledger import Ledger
from cutover.agent.host.state import ReleaseRecord, ReleaseStatus
from cutover.agent.lifecycle.adopt import adopt, preflight, survey
from cutover.agent.lifecycle.manager import AppManager, OpResult
from cutover.agent.package.container import open_package
from cutover.agent.trust.freeze import freeze_status
from cutover.agent.trust.policy import peek_app

__all__ = ["main"]


_INVOKER: list[str] = []  # who ran the command, before any privilege drop


def _actor() -> str:
    if not _INVOKER:
        try:
            _INVOKER.append(pwd.getpwuid(os.getuid()).pw_name)
        except KeyError:
            _INVOKER.append(str(os.getuid()))
    return f"cli:{os.environ.get('SUDO_USER', _INVOKER[0])}"


class _Out:
    def __init__(self, as_json: bool) -> None:
        self.json = as_json

    def result(self, data: dict[str, Any], human: Callable[[], None]) -> None:
        if self.json:
            print(json.dumps(data, indent=2, default=str))
        else:
            human()

    def recovered(self, actions: Sequence[str]) -> None:
        if actions and not self.json:
            for a in actions:
                print(f"recovered: {a}", file=sys.stderr)


def _pick_app(cfg: LoadedConfig, name: str | None) -> str:
    if name:
        if name not in cfg.apps:
            raise NotFoundError(
                f"app {name!r} is not in {cfg.path}; configured apps: {', '.join(cfg.apps) or '(none)'}"
            )
        return name
    if len(cfg.apps) == 1:
        return next(iter(cfg.apps))
    if not cfg.apps:
        raise ConfigError(f"{cfg.path} has no apps; add one with `cutover-agent init`")
    raise ConfigError(f"{cfg.path} has several apps ({', '.join(cfg.apps)}); choose one with --app")


_ARGV: list[str] = []  # the command line, for the `sudo -u OWNER ...` a permission error suggests


def _become_owner(root: Path) -> None:
    """Run as root on an app owned by another user: become that user (never leave root-owned
    files in someone else's app; hooks run as under the daemon). All-root: nothing changes."""
    layout = Layout(root)
    owner = owner_of(layout.meta, layout.root)
    if owner is not None and os.geteuid() == 0 and owner.uid != 0:
        drop_to(owner)


def _manager(cfg: LoadedConfig, app: str, progress_events: bool = False) -> AppManager:
    def events(ev: dict[str, Any]) -> None:
        if progress_events and ev.get("event") == "hook.output":
            print(f"  [{ev.get('hook')}] {ev.get('line')}", file=sys.stderr)

    _become_owner(cfg.apps[app].root)
    return AppManager(app, cfg.apps[app], cfg.policies[app], actor=_actor(), events=events)


def _run(coro: Coroutine[Any, Any, OpResult]) -> OpResult:
    return asyncio.run(coro)


def _print_op(out: _Out, res: OpResult) -> None:
    out.recovered(res.recovered)

    def human() -> None:
        print(res.message)
        if res.current is not None or res.op in ("activate", "rollback"):
            print(f"current: {res.current or '-'}   previous: {res.previous or '-'}")
        for w in res.details.get("warnings", []):
            print(f"warning: {w}", file=sys.stderr)
        if res.details.get("removed"):
            print("removed: " + ", ".join(res.details["removed"]))
        if res.details.get("pruned"):
            print("pruned: " + ", ".join(res.details["pruned"]))

    out.result(res.to_json(), human)


# ---------------------------------------------------------------- commands
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


def _state_view(cfg: LoadedConfig, app: str, *, with_results: bool = False) -> dict[str, Any]:
    mgr = _manager(cfg, app)
    state = mgr.snapshot()
    return {
        "app": app,
        "root": str(cfg.apps[app].root),
        "current": state.current,
        "previous": state.previous,
        "highest_version": state.highest_version,
        "pending": state.pending.model_dump() if state.pending else None,
        "releases": [
            _release_view(r, with_results=with_results)
            for r in sorted(state.releases.values(), key=lambda r: -r.seq)
        ],
    }


def _release_view(rec: ReleaseRecord, *, with_results: bool = True) -> dict[str, Any]:
    """One release as ``status``/``releases`` show it: a removed release says ``pruned``."""
    view = rec.model_dump(mode="json", exclude=None if with_results else {"hooks", "health"})
    if not rec.installed and rec.status not in (ReleaseStatus.FAILED, ReleaseStatus.BAD):
        view["status"] = "pruned"
    return view


def _freeze_view(cfg: LoadedConfig, app: str) -> dict[str, list[dict[str, object]]]:
    """Freeze windows of ``app`` in force now, and those starting within a week."""
    active, upcoming = freeze_status(cfg.apps[app].freeze, datetime.now(UTC))
    return {"active": [h.to_json() for h in active], "upcoming": [h.to_json() for h in upcoming]}


def _override_hint(window: dict[str, Any]) -> str:
    roles = window["override_roles"]
    return f" (override: a signature by role {' or '.join(roles)})" if roles else ""


def cmd_status(args: argparse.Namespace, out: _Out) -> int:
    cfg = load_config(args.config)
    apps = [_pick_app(cfg, args.app)] if args.app or len(cfg.apps) == 1 else list(cfg.apps)
    # Recovery first: status after a crash must show the recovered, consistent state.
    recovered: dict[str, list[str]] = {}
    for app in apps:
        res = _run(_manager(cfg, app).recover_only())
        out.recovered(res.recovered)
        recovered[app] = res.recovered
    views = [
        {**_state_view(cfg, a), "recovered": recovered[a], "freeze": _freeze_view(cfg, a)}
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
            for w in v["freeze"]["active"]:
                print(f"  FROZEN    {w['name']} until {w['ends_at']}{_override_hint(w)}")
            for w in v["freeze"]["upcoming"]:
                print(f"  freeze    {w['name']} from {w['starts_at']} to {w['ends_at']}")

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
    from cutover.agent.progress import stage_bar  # rich: only when drawn

    progress = stage_bar() if sys.stderr.isatty() and not out.json else None
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
def _positive_int(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number of at least 1, not {text!r}")
    return n


# --app is required for init, also when given before the command (argparse cannot say both)
_INIT_USAGE = (
    "%(prog)s [-h] [--json] [--config CONFIG] --app APP --root ROOT\n"
    "       --trust-release-key FILE.pub [--trust-release-key FILE.pub ...] [--adopt]"
)


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--json",
        action="store_true",
        default=argparse.SUPPRESS,
        help="machine-readable JSON on stdout",
    )
    common.add_argument(
        "--config",
        type=Path,
        default=argparse.SUPPRESS,
        help="agent config (also accepted before the command)",
    )
    app_opt = argparse.ArgumentParser(add_help=False)
    app_opt.add_argument(
        "--app", default=argparse.SUPPRESS, help="app name (needed when several are configured)"
    )
    p = argparse.ArgumentParser(
        prog="cutover-agent",
        description="Cutover host agent: stage, activate and roll back signed releases on this host. "
        "Every command works with the daemon stopped.",
        epilog="Exit codes: 0 ok, 1 failed, 2 usage/config, 3 rejected, 4 locked, 5 not found, "
        "6 verification failed, 7 activation reverted.",
    )
    p.add_argument(
        "--config",
        type=Path,
        default=DEFAULT_CONFIG,
        help=f"agent config (default {DEFAULT_CONFIG}, or $CUTOVER_AGENT_CONFIG)",
    )
    p.add_argument("--json", action="store_true", help="machine-readable JSON on stdout")
    p.add_argument("--app", default=None, help="app name (needed when several are configured)")
    p.add_argument("--version", action="version", version=f"cutover-agent {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(
        name: str, fn: Callable[[argparse.Namespace, _Out], int], help_: str
    ) -> argparse.ArgumentParser:
        parents = [common] if name == "init" else [common, app_opt]
        usage = _INIT_USAGE if name == "init" else None
        sp = sub.add_parser(name, parents=parents, help=help_, description=help_, usage=usage)
        sp.set_defaults(fn=fn)
        return sp

    sp = add("init", cmd_init, "create an app root and add the app to the config")
    # Required, but may also come before the command (`cutover-agent --app ame init ...`):
    # cmd_init checks it, the usage line shows it as required.
    sp.add_argument(
        "--app",
        default=argparse.SUPPRESS,
        metavar="APP",
        help="(required) the app this root holds, e.g. ame",
    )
    sp.add_argument("--root", required=True, help="app root directory, e.g. /srv/ame")
    sp.add_argument(
        "--trust-release-key",
        required=True,
        action="append",
        metavar="FILE.pub",
        help="release public key to trust (repeat for several keys)",
    )
    sp.add_argument(
        "--adopt",
        action="store_true",
        help="record releases an earlier deploy tool left in the root (docs/migrating.md)",
    )
    add(
        "adopt",
        cmd_adopt,
        "record releases an earlier deploy tool (Capistrano, Deployer) left in the app root "
        "as unsigned rollback targets; convert an absolute current link",
    )
    add("serve", cmd_serve, "run the agent daemon (HTTP API)")
    add("status", cmd_status, "show current, previous and staged releases")
    add("releases", cmd_releases, "list releases and their states")
    sp = add("stage", cmd_stage, "verify a package and install it as a staged release")
    sp.add_argument("package", help="path to APP-VERSION.cutover")
    sp.add_argument(
        "--expect-version",
        dest="version",
        default=None,
        help="refuse the package unless it is this version",
    )
    sp.add_argument(
        "--allow-downgrade",
        action="store_true",
        help="accept a version older than the highest staged (local override)",
    )
    sp = add(
        "activate",
        cmd_activate,
        "switch current to a staged release (hooks, health checks, auto-revert)",
    )
    sp.add_argument("version")
    sp = add("rollback", cmd_rollback, "switch back to the previous good release, or --to VERSION")
    sp.add_argument("--to", default=None, metavar="VERSION", help="a specific installed release")
    sp.add_argument(
        "--restore",
        action="store_true",
        help="run the configured database restore command when leaving a migrating release",
    )
    sp.add_argument(
        "--accept-db-risk",
        action="store_true",
        help="roll back across a release whose rollback plan marks the database unsafe (journaled)",
    )
    sp = add(
        "verify", cmd_verify, "re-hash an installed release (default: current) against its manifest"
    )
    sp.add_argument("version", nargs="?", default=None)
    add(
        "prune",
        cmd_prune,
        "delete releases beyond the retention count (never current, previous or pinned)",
    )
    for name, help_ in (
        ("pin", "protect a release from pruning"),
        ("unpin", "allow pruning again"),
    ):
        sp = add(name, cmd_pin, help_)
        sp.add_argument("version")
    sp = add(
        "clear-bad",
        cmd_clear_bad,
        "lift the bad mark of a release you know is fine (journaled, with who did it)",
    )
    sp.add_argument("version")
    sp = add("delete", cmd_delete, "delete one release that is not current, previous or pinned")
    sp.add_argument("version")
    sp = add("journal", cmd_journal, "show the audit journal, or --verify its hash chain")
    sp.add_argument(
        "--verify", action="store_true", help="check the hash chain; exit 6 if tampered"
    )
    sp.add_argument("--limit", type=_positive_int, default=50, help="entries to show (default 50)")
    add("keys", cmd_keys, "list trusted release keys and controller keys")
    return p


def _permission_hint(exc: BaseException) -> str | None:
    """For a permission error anywhere in ``exc``'s causes: which path, which user, what to run."""
    err: BaseException | None = exc
    while err is not None and not isinstance(err, PermissionError):
        err = err.__cause__ or err.__context__
    if err is None:
        return None
    path = Path(str(err.filename)) if err.filename else None
    user = current_user()
    where = f" on {path}" if path is not None else ""
    owner = owner_of(*([path, *path.parents] if path is not None else []))
    if owner is None or owner.name == user:
        return f"permission denied{where} as user {user}: check its mode (ls -l {path or '.'})"
    cmd = shlex.join(["cutover-agent", *_ARGV])
    if _INVOKER and _INVOKER[0] != user:  # root, acting as the app's owner
        return (
            f"permission denied{where} as user {user}, who owns the app; it belongs to "
            f"{owner.name}: give it back with `sudo chown -R {user}: PATH` (e.g. the app root), "
            "then retry"
        )
    return (
        f"permission denied{where} as user {user}; it belongs to {owner.name}: run "
        f"`sudo -u {owner.name} {cmd}`"
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    _ARGV[:] = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    _actor()  # remember who ran it before any privilege drop
    out = _Out(bool(args.json))
    try:
        from cutover.agent._util.logsetup import configure_logging

        if args.command == "serve":
            configure_logging("auto", "info")
        else:  # the CLI's stdout is for results (--json); warnings go to stderr
            configure_logging("auto", "warning", stream=sys.stderr)
        code: int = args.fn(args, out)
        return code
    except CutoverError as exc:
        hint = _permission_hint(exc)
        return _error(out, exc.code, f"{exc}; {hint}" if hint else str(exc), exc.exit_code)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # no traceback reaches a user
        hint = _permission_hint(exc)
        if hint is not None:
            return _error(out, "permission_denied", hint, ExitCode.FAILED)
        return _error(
            out,
            "internal",
            f"internal error ({type(exc).__name__}: {exc}); this is a bug in cutover-agent, "
            "please report it with the command line",
            ExitCode.FAILED,
        )


def _error(out: _Out, code: str, message: str, exit_code: int) -> int:
    if out.json:
        print(json.dumps({"error": code, "message": message, "exit_code": exit_code}))
    else:
        print(f"error: {message}", file=sys.stderr)
    return exit_code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
