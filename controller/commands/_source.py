"""Where a push or deploy takes its release from: a local package file or ``--package-url``.

A local package names its own app and version (read from its manifest, not its file name). With
``--package-url`` the controller never sees the bytes: ``--version`` (and ``--app``) say what the
agents must find there, defaulting to the URL's file name ``<app>-<version>.cutover``. The agents
verify signatures and digests themselves and refuse a package that is not what was asked.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit

from cutover.agent.errors import ConfigError
from cutover.agent.package.container import open_package
from cutover.agent.package.manifest import parse_manifest
from cutover.agent.versions import VERSION_RE
from cutover.controller.commands._context import resolve_app
from cutover.controller.fleet.inventory import Fleet

__all__ = ["Source", "add_source_options", "resolve_source"]

SUFFIX = ".cutover"


@dataclass(frozen=True)
class Source:
    app: str
    version: str
    package: Path | None = None
    url: str | None = None
    delta: bool = True  # upload to each host only what it lacks (controller/delta.py)


def add_source_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "package", nargs="?", type=Path, help="a signed package file (uploaded to each agent)"
    )
    p.add_argument(
        "--package-url",
        metavar="URL",
        help="agents fetch the package from this http(s) URL instead",
    )
    p.add_argument(
        "--version",
        dest="release_version",
        metavar="V",
        help="with --package-url: the version at the URL (default: from its file name)",
    )
    p.add_argument(
        "--no-delta",
        dest="delta",
        action="store_false",
        help="upload the full package to every host (default: ask each host which files it "
        "lacks and send only those)",
    )


def _from_url_name(url: str, app: str | None) -> tuple[str | None, str | None]:
    name = unquote(urlsplit(url).path.rsplit("/", 1)[-1])
    if not name.endswith(SUFFIX):
        return None, None
    stem = name[: -len(SUFFIX)]
    if app and stem.startswith(f"{app}-"):
        return app, stem[len(app) + 1 :]
    head, sep, tail = stem.partition("-")
    return (head, tail) if sep else (None, None)


def resolve_source(args: argparse.Namespace, fleet: Fleet) -> Source:
    """The release to push, checked before any host is contacted.

    Raises:
        ConfigError: neither or both of PACKAGE and --package-url, an unreadable package, no
            version for a URL.
    """
    if (args.package is None) == (args.package_url is None):
        raise ConfigError("give a PACKAGE file or --package-url URL (one of them)")
    if args.package is not None:
        if args.release_version:
            raise ConfigError("--version is only for --package-url (a package names its version)")
        parts, fh = open_package(args.package)  # NotFoundError (exit 5) when missing
        fh.close()
        manifest = parse_manifest(parts.manifest_bytes)
        app = resolve_app(args, fleet, manifest.app)
        delta = getattr(args, "delta", True)
        return Source(app=app, version=manifest.version, package=args.package, delta=delta)
    url = str(args.package_url)
    if urlsplit(url).scheme not in ("http", "https"):
        raise ConfigError(f"--package-url {url!r}: use an http:// or https:// URL")
    known_app = getattr(args, "app", None) or fleet.app
    guessed_app, guessed_version = _from_url_name(url, known_app)
    app = resolve_app(args, fleet, None if known_app else guessed_app)
    version = args.release_version or guessed_version
    if not version:
        raise ConfigError(f"--package-url: cannot tell the version from {url!r}; pass --version V")
    if not VERSION_RE.fullmatch(version):
        raise ConfigError(f"version {version!r}: use [A-Za-z0-9._+-], at most 128 characters")
    return Source(app=app, version=version, url=url)
