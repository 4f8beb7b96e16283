"""``cutover-agent``: the on-host CLI. Works with the daemon stopped: this is the emergency path.

Every command takes the same per-app lock, reads the same state and journal, and runs the same
crash recovery as the daemon (agent.lifecycle). Human output by default, ``--json`` for scripts.
Exit codes (agent.errors.ExitCode, docs/operations.md): 0 ok, 1 operation failed, 2 usage or
config, 3 input rejected, 4 conflict (locked), 5 not found, 6 verification failed (drift),
7 activation reverted.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from types import ModuleType

from cutover.agent import __version__
from cutover.agent._util import stdout
from cutover.agent._util.privileges import current_user, owner_of
from cutover.agent.cli._invocation import _ARGV, _INVOKER, _actor, _Out
from cutover.agent.config import DEFAULT_CONFIG
from cutover.agent.errors import (
    CutoverError,
    ExitCode,
)

__all__ = ["build_parser", "main"]


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

    def add(name: str, fn: str, help_: str) -> argparse.ArgumentParser:
        parents = [common] if name == "init" else [common, app_opt]
        usage = _INIT_USAGE if name == "init" else None
        sp = sub.add_parser(name, parents=parents, help=help_, description=help_, usage=usage)
        sp.set_defaults(fn=fn)
        return sp

    sp = add("init", "cmd_init", "create an app root and add the app to the config")
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
        "cmd_adopt",
        "record releases an earlier deploy tool (Capistrano, Deployer) left in the app root "
        "as unsigned rollback targets; convert an absolute current link",
    )
    add("serve", "cmd_serve", "run the agent daemon (HTTP API)")
    add("status", "cmd_status", "show current, previous and staged releases")
    add("releases", "cmd_releases", "list releases and their states")
    sp = add("stage", "cmd_stage", "verify a package and install it as a staged release")
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
        "cmd_activate",
        "switch current to a staged release (hooks, health checks, auto-revert)",
    )
    sp.add_argument("version")
    sp = add(
        "rollback", "cmd_rollback", "switch back to the previous good release, or --to VERSION"
    )
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
        "verify",
        "cmd_verify",
        "re-hash an installed release (default: current) against its manifest",
    )
    sp.add_argument("version", nargs="?", default=None)
    add(
        "prune",
        "cmd_prune",
        "delete releases beyond the retention count (never current, previous or pinned)",
    )
    for name, help_ in (
        ("pin", "protect a release from pruning"),
        ("unpin", "allow pruning again"),
    ):
        sp = add(name, "cmd_pin", help_)
        sp.add_argument("version")
    sp = add(
        "clear-bad",
        "cmd_clear_bad",
        "lift the bad mark of a release you know is fine (journaled, with who did it)",
    )
    sp.add_argument("version")
    sp = add("delete", "cmd_delete", "delete one release that is not current, previous or pinned")
    sp.add_argument("version")
    sp = add("journal", "cmd_journal", "show the audit journal, or --verify its hash chain")
    sp.add_argument(
        "--verify", action="store_true", help="check the hash chain; exit 6 if tampered"
    )
    sp.add_argument("--limit", type=_positive_int, default=50, help="entries to show (default 50)")
    add("keys", "cmd_keys", "list trusted release keys and controller keys")
    return p


def _command(name: str) -> Callable[[argparse.Namespace, _Out], int]:
    """The function of command ``name``, imported when it runs: a command imports only what it
    needs (``status`` no extraction, ``stage`` no daemon), not every command's modules."""
    module = _setup if name in ("cmd_init", "cmd_adopt") else _commands
    fn: Callable[[argparse.Namespace, _Out], int] = getattr(module(), name)
    return fn


def _commands() -> ModuleType:
    from cutover.agent.cli import _commands

    return _commands


def _setup() -> ModuleType:
    from cutover.agent.cli import _setup

    return _setup


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
    """Run one command; its exit code.

    Run as the ``cutover-agent`` script (``argv`` None), a command other than ``serve`` ends
    the process once its output is flushed, with ``os._exit``: no interpreter teardown, which
    frees a 20,000-entry manifest's objects one by one (~40 ms of a stage). Nothing is lost by
    it: every file a command writes is written (and synced where it must be) and closed through
    the OS before the command returns, and the agent registers no exit handlers."""
    served: list[str] = []
    code = _main(argv, served)
    if argv is None and not served:
        for stream in (sys.stdout, sys.stderr):
            if stream is None:  # started without that descriptor (`>&-`): nothing to flush
                continue
            try:
                stream.flush()
            except OSError:  # e.g. a closed pipe: as Python's own exit does, status 120
                code = code or stdout.CLOSED_STDOUT_EXIT
        os._exit(code)
    return code


def _main(argv: Sequence[str] | None, served: list[str]) -> int:
    parser = build_parser()
    _ARGV[:] = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    _actor()  # remember who ran it before any privilege drop
    out = _Out(bool(args.json))
    try:
        if args.command == "serve":
            served.append("serve")  # a daemon exits as Python does (its threads, its loop)
            from cutover.agent._util.logsetup import configure_logging

            configure_logging("auto", "info")
        else:  # the CLI's stdout is for results (--json); warnings go to stderr
            from cutover.agent._util.lazylog import configure_logging_lazily

            # structlog (and the rich it imports) only if a warning or an error is logged
            configure_logging_lazily("auto", "warning", stream=sys.stderr)
        code: int = _command(args.fn)(args, out)
        return code
    except CutoverError as exc:
        hint = _permission_hint(exc)
        return _error(out, exc.code, f"{exc}; {hint}" if hint else str(exc), exc.exit_code)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError as exc:
        if not stdout.reader_gone():
            return _internal(out, exc)
        stdout.silence()  # the reader of our output went away (`| head`): no bug of ours
        return stdout.CLOSED_STDOUT_EXIT
    except Exception as exc:  # no traceback reaches a user
        return _internal(out, exc)


def _internal(out: _Out, exc: Exception) -> int:
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
        stdout.print_last(json.dumps({"error": code, "message": message, "exit_code": exit_code}))
    else:
        print(f"error: {message}", file=sys.stderr)
    return exit_code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
