"""``cutover``: the controller CLI (release engineer and automation side).

Commands: ``keygen``, ``build``, ``sign``, ``inspect``, ``notes`` (here), and the fleet commands ``push``,
``activate``, ``rollback``, ``deploy``, ``status``, ``log`` (controller/commands/, registered
below; docs/controller.md). Exit codes follow agent.errors.ExitCode (docs/operations.md).
``--json`` prints one JSON document on stdout (the long fleet commands: an NDJSON stream).
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import tomllib
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel

from cutover.agent import __version__
from cutover.agent._util import stdout
from cutover.agent.errors import ConfigError, CutoverError, ExitCode
from cutover.agent.keys import PublicKey, generate_keypair, load_private_key, load_public_key
from cutover.agent.package.manifest import (
    CommandCheck,
    DirEntry,
    FileEntry,
    HealthCheck,
    HttpCheck,
    ReleaseType,
    TcpCheck,
)
from cutover.agent.trust.approvals import ApprovalMatrix, evaluate_approvals
from cutover.agent.trust.policy import SignatureVerdict
from cutover.agent.trust.requirements import Requirements
from cutover.controller.build import build_package, inspect_package, sign_package
from cutover.controller.commands import register as register_fleet_commands
from cutover.controller.notes import changes_from_git, notes_json, notes_markdown

__all__ = ["main"]


def _emit(as_json: bool, data: dict[str, Any], human: Callable[[], None]) -> None:
    if as_json:
        print(json.dumps(data, indent=2, default=str))
    else:
        human()


def _parse_time(value: str) -> datetime:
    try:
        dt = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError as exc:
        raise ConfigError(
            f"--created-at {value!r} is not an ISO 8601 time (e.g. 2026-03-07T12:00:00Z)"
        ) from exc
    if dt.utcoffset() is None:
        raise ConfigError(f"--created-at {value!r} needs a timezone (append Z for UTC)")
    return dt


def cmd_keygen(args: argparse.Namespace) -> int:
    key = generate_keypair(args.path)
    data = {"private": str(args.path), "public": f"{args.path}.pub", "keyid": key.keyid}
    _emit(
        args.json,
        data,
        lambda: print(f"wrote {args.path} (0600) and {args.path}.pub\nkeyid {key.keyid}"),
    )
    return ExitCode.OK


def human_size(n: int) -> str:
    """``1.5 MiB``: binary units, one decimal from KiB up; plain bytes below."""
    if n < 1024:
        return f"{n} B"
    size = float(n)
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        size /= 1024
        if size < 1024 or unit == "TiB":
            break
    return f"{size:.1f} {unit}"


def cmd_build(args: argparse.Namespace) -> int:
    notes = args.notes or ""
    if args.notes_file:
        notes = Path(args.notes_file).read_text(encoding="utf-8")
    if args.expires_days is not None and args.expires_days < 1:
        raise ConfigError("--expires-days must be at least 1 (omit it for no expiry)")
    expires = timedelta(days=args.expires_days) if args.expires_days else None
    bar = None
    progress = None
    if sys.stderr.isatty() and not args.json:
        from rich.progress import BarColumn, DownloadColumn, Progress

        bar = Progress("building", BarColumn(), DownloadColumn(), transient=True)
        task = bar.add_task("build", total=None)
        bar.start()

        def progress(n: int) -> None:
            bar.advance(task, n)

        def on_total(n: int) -> None:
            bar.update(task, total=n)

    try:
        res = build_package(
            Path(args.app_dir),
            Path(args.output),
            version=args.version,
            commit=args.commit,
            branch=args.branch,
            build=args.build_id,
            release_type=ReleaseType(args.release_type) if args.release_type else None,
            notes=notes,
            created_at=_parse_time(args.created_at) if args.created_at else None,
            expires_after=expires,
            compression=args.compression,
            chunks=not args.no_chunks,
            progress=progress,
            on_total=on_total if bar is not None else None,
            requirements=_load_toml_model(args.require, "require", Requirements)
            if args.require
            else None,
            changes=changes_from_git(Path(args.app_dir), args.changes_from_git)
            if args.changes_from_git
            else None,
            base=Path(args.base) if args.base else None,
        )
    finally:
        if bar is not None:
            bar.stop()
    data = {
        "package": str(res.path),
        "app": res.manifest.app,
        "version": res.manifest.version,
        "entries": res.files,
        "bytes": res.total_bytes,
        "payload_bytes": res.payload_size,
        "payload_sha256": res.manifest.payload.sha256,
        "base": res.manifest.payload.base,
    }
    _emit(
        args.json,
        data,
        lambda: print(
            f"built {res.path}: {res.manifest.app} {res.manifest.version}, {res.files} entries, "
            f"{human_size(res.total_bytes)} -> {human_size(res.payload_size)} payload"
            + (f" (thin: base {res.manifest.payload.base})" if res.manifest.payload.base else "")
            + " (unsigned: run `cutover sign`)"
        ),
    )
    return ExitCode.OK


def cmd_sign(args: argparse.Namespace) -> int:
    key = load_private_key(args.key)
    signers = sign_package(Path(args.package), key)
    data = {"package": args.package, "keyid": key.keyid, "signers": signers}
    _emit(
        args.json,
        data,
        lambda: print(f"signed {args.package} with {key.keyid[:16]}; {len(signers)} signature(s)"),
    )
    return ExitCode.OK


# How inspect shows the agent's signature verdicts.
_SHOWN = {
    SignatureVerdict.VALID: "valid",
    SignatureVerdict.INVALID: "INVALID",
    SignatureVerdict.MALFORMED: "INVALID",
    SignatureVerdict.UNTRUSTED: "unknown",
}


def _trusted_with_roles(
    specs: list[str],
) -> tuple[dict[str, PublicKey], dict[str, frozenset[str]]]:
    """``--trust KEY.pub[=ROLE,ROLE]`` values: the keys by key id, and their roles."""
    keys: dict[str, PublicKey] = {}
    roles: dict[str, frozenset[str]] = {}
    for spec in specs:
        path, sep, role_list = spec.partition("=")
        key = load_public_key(Path(path))
        keys[key.keyid] = key
        if sep:
            roles[key.keyid] = frozenset(r.strip() for r in role_list.split(",") if r.strip())
    return keys, roles


_M = TypeVar("_M", bound=BaseModel)


def _load_toml_model(path: str, table: str, model: type[_M]) -> _M:
    """A governance file for CI: the body of an agent config's ``[apps.NAME.<table>]`` (at the
    top level, or under ``[<table>]``), validated by the agent's own model."""
    try:
        data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        return model.model_validate(data.get(table, data))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError, ValueError) as exc:
        raise ConfigError(
            f"{path}: {exc}; write it like the agent config's [apps.NAME.{table}] "
            "(docs/governance.md)"
        ) from exc


def _load_matrix(path: str) -> ApprovalMatrix:
    return _load_toml_model(path, "approvals", ApprovalMatrix)


def cmd_inspect(args: argparse.Namespace) -> int:
    trusted, key_roles = _trusted_with_roles(args.trust)
    found = inspect_package(Path(args.package), trusted)
    manifest, signers, ok = found.manifest, found.signers, found.payload_matches
    verdicts = {keyid: _SHOWN[v] for keyid, v in found.verdicts.items()}
    kinds = {"files": 0, "dirs": 0, "symlinks": 0}
    for e in manifest.files:
        kinds[
            "files"
            if isinstance(e, FileEntry)
            else "dirs"
            if isinstance(e, DirEntry)
            else "symlinks"
        ] += 1
    hooks = {
        name: [h.model_dump(mode="json") for h in getattr(manifest.hooks, name)]
        for name in ("stage", "pre_activate", "post_activate", "post_rollback")
    }
    # A countersigner must see what will run: a --trust key that signed nothing is a failure.
    unsigned = sorted(set(trusted) - set(signers))
    data: dict[str, Any] = {
        "app": manifest.app,
        "version": manifest.version,
        "build": manifest.build,
        "commit": manifest.commit,
        "branch": manifest.branch,
        "created_at": manifest.created_at.isoformat(),
        "expires_at": manifest.expires_at.isoformat() if manifest.expires_at else None,
        "release_type": manifest.release_type.value,
        "requires_migration": manifest.requires_migration,
        "entries": kinds,
        "bytes": manifest.total_file_bytes(),
        "manifest_sha256": found.manifest_digest,
        "payload": manifest.payload.model_dump(),
        "payload_matches": ok,
        "payload_problem": found.payload_problem,
        "signers": signers,
        "signature_check": verdicts or None,
        "trusted_unsigned": unsigned,
        "hooks": hooks,
        "health": manifest.health.model_dump(mode="json"),
        "shared": manifest.shared.model_dump(),
        "notes": manifest.notes,
    }
    report = None
    if args.matrix is not None:
        valid = tuple(k for k, v in found.verdicts.items() if v is SignatureVerdict.VALID)
        report = evaluate_approvals(manifest, valid, key_roles, _load_matrix(args.matrix))
        data["approvals"] = report.to_json()

    def human() -> None:
        print(
            f"{manifest.app} {manifest.version}  ({manifest.release_type.value}"
            f"{', requires migration' if manifest.requires_migration else ''})"
        )
        print(
            f"  commit {manifest.commit or '-'}  branch {manifest.branch or '-'}  build {manifest.build or '-'}"
        )
        print(f"  created {data['created_at']}  expires {data['expires_at'] or 'never'}")
        print(
            f"  manifest sha256 {found.manifest_digest}  payload sha256 {manifest.payload.sha256}"
        )
        print(
            f"  {kinds['files']} files, {kinds['dirs']} dirs, {kinds['symlinks']} symlinks, {data['bytes']} bytes"
        )
        print(
            f"  payload {manifest.payload.compression} {manifest.payload.size} bytes: "
            f"{'matches its digest' if ok else 'DOES NOT MATCH its digest'}"
        )
        if found.payload_problem:
            print(f"    {found.payload_problem}")
        for stage in hooks:
            for h in getattr(manifest.hooks, stage):
                print(
                    f"  hooks.{stage}: {h.name}: {shlex.join(h.argv)}  (timeout {h.timeout_s:g}s)"
                )
        for phase in ("staged", "live"):
            for c in getattr(manifest.health, phase).checks:
                print(f"  health.{phase}: {_describe_check(c)}")
        if manifest.health.version_probe is not None:
            print(f"  health.version_probe: {manifest.health.version_probe.url}")
        print(
            f"  signatures: {len(signers)}"
            + ("" if verdicts or not signers else " (not checked: pass --trust KEY.pub to verify)")
            + "".join(f"\n    {s}  {verdicts.get(s, '')}" for s in signers)
            + "".join(f"\n    {k}  MISSING (trusted with --trust, did not sign)" for k in unsigned)
        )
        if report is not None:
            verdict = "would pass" if report.passed else "would be REFUSED"
            print(f"  approvals ({report.rule or 'no matrix row: threshold only'}): {verdict}")
            print(f"    {report.describe()}")

    _emit(args.json, data, human)
    bad = any(v == "INVALID" for v in verdicts.values())
    refused = report is not None and not report.passed
    return ExitCode.REJECTED if not ok or bad or unsigned or refused else ExitCode.OK


def _describe_check(c: HealthCheck) -> str:
    """One health check as a countersigner reads it: type, name, what it runs or probes."""
    head = f"{c.type} {c.name}".rstrip()
    if isinstance(c, HttpCheck):
        what = f"{c.method} {c.url} expects {c.expect_status}"
        if c.body_contains is not None:
            what += f", body contains {c.body_contains!r}"
        if c.body_regex is not None:
            what += f", body matches {c.body_regex!r}"
    elif isinstance(c, TcpCheck):
        what = f"{c.host}:{c.port}"
    elif isinstance(c, CommandCheck):
        what = shlex.join(c.argv)
    else:
        what = f"{c.path} must not match {c.pattern!r}"
    return f"{head}: {what}"


def cmd_notes(args: argparse.Namespace) -> int:
    manifest = inspect_package(Path(args.package)).manifest
    if args.format == "json" or args.json:
        print(json.dumps(notes_json(manifest), indent=2))
    else:
        print(notes_markdown(manifest), end="")
    return ExitCode.OK


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--json", action="store_true", help="machine-readable JSON on stdout")
    p = argparse.ArgumentParser(
        prog="cutover",
        description="Cutover controller: build, sign and inspect signed release packages; "
        "push, activate, roll back and watch them across the fleet in fleet.toml.",
        epilog="Exit codes: 0 ok, 1 failed, 2 usage/config, 3 rejected (e.g. payload mismatch), "
        "8 partial (some hosts failed), 9 unreachable; fleet rules in docs/controller.md.",
    )
    p.add_argument("--version", action="version", version=f"cutover {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    sp = sub.add_parser(
        "keygen", parents=[common], help="write an Ed25519 key pair (PATH, PATH.pub)"
    )
    sp.add_argument("path", type=Path)
    sp.set_defaults(fn=cmd_keygen)

    sp = sub.add_parser(
        "build", parents=[common], help="build an unsigned package from an app tree"
    )
    sp.add_argument("app_dir", help="app tree with cutover.toml at its root")
    sp.add_argument(
        "--version", required=True, dest="version", help="release version, e.g. 2026.03.7"
    )
    sp.add_argument("-o", "--output", required=True, help="package file to write")
    sp.add_argument("--commit", default="")
    sp.add_argument("--branch", default="")
    sp.add_argument("--build-id", default="", help="CI build identifier")
    sp.add_argument("--release-type", choices=[t.value for t in ReleaseType], default=None)
    g = sp.add_mutually_exclusive_group()
    g.add_argument("--notes", default=None)
    g.add_argument("--notes-file", default=None)
    sp.add_argument(
        "--created-at", default=None, help="ISO time (default $SOURCE_DATE_EPOCH, else now)"
    )
    sp.add_argument(
        "--expires-days", type=int, default=None, help="manifest expires N days after created_at"
    )
    sp.add_argument("--compression", choices=["zstd", "gzip", "none"], default="zstd")
    sp.add_argument(
        "--no-chunks",
        action="store_true",
        help="leave payload.chunks out of the manifest: for agents that predate it, or to "
        "reproduce the bytes of a build made before it (docs/package-format.md)",
    )
    sp.add_argument(
        "--changes-from-git",
        default=None,
        metavar="RANGE",
        help="fill the notes' changes with the commit subjects of RANGE (e.g. v1.3.0..HEAD)",
    )
    sp.add_argument(
        "--require",
        default=None,
        metavar="FILE.toml",
        help="fields the hosts require (as in the agent config's [apps.NAME.require]): refuse "
        "to build a package that lacks one",
    )
    sp.add_argument(
        "--base",
        default=None,
        metavar="PREVIOUS.cutover",
        help="build a thin package: its payload holds only the files PREVIOUS's manifest does "
        "not list (hosts must hold PREVIOUS's files; for fleets that pull from a store)",
    )
    sp.set_defaults(fn=cmd_build)

    sp = sub.add_parser("sign", parents=[common], help="add a signature to a package")
    sp.add_argument("package")
    sp.add_argument("--key", required=True, help="private key (PEM PKCS#8)")
    sp.set_defaults(fn=cmd_sign)

    sp = sub.add_parser(
        "inspect", parents=[common], help="show a package's manifest, signers and payload check"
    )
    sp.add_argument("package")
    sp.add_argument(
        "--trust",
        action="append",
        default=[],
        metavar="KEY.pub[=ROLE,...]",
        help="verify signatures against this public key (repeatable); exit 3 if any is invalid; "
        "=ROLE,... gives the key the roles the agent config gives it (for --matrix)",
    )
    sp.add_argument(
        "--matrix",
        default=None,
        metavar="FILE.toml",
        help="approval matrix (as in the agent config's [apps.NAME.approvals]): show whether "
        "the valid signatures would pass it and which roles are missing; exit 3 if not",
    )
    sp.set_defaults(fn=cmd_inspect)
    sp = sub.add_parser(
        "notes", parents=[common], help="print a package's release notes in the process template"
    )
    sp.add_argument("package")
    sp.add_argument("--format", choices=["md", "json"], default="md")
    sp.set_defaults(fn=cmd_notes)
    register_fleet_commands(sub, common)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code: int = args.fn(args)
        return code
    except CutoverError as exc:
        if args.json:
            error = {"error": exc.code, "message": str(exc), "exit_code": exc.exit_code}
            stdout.print_last(json.dumps(error))
        else:
            print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except BrokenPipeError as exc:
        if not stdout.reader_gone():
            print(f"error: {exc.strerror}", file=sys.stderr)
            return ExitCode.FAILED
        stdout.silence()  # the reader of our output went away (`| head`): no bug of ours
        return stdout.CLOSED_STDOUT_EXIT
    except OSError as exc:
        print(f"error: {exc.filename or ''}: {exc.strerror}", file=sys.stderr)
        return ExitCode.FAILED


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
