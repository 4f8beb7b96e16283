"""Build and sign release packages (``cutover build``, ``cutover sign``, ``cutover inspect``).

The build is deterministic: the same tree and the same metadata give byte-identical
``manifest.json`` and payload. This module walks the tree (sorted, excludes, safe links) and reads
``cutover.toml``; the format is the agent's: the payload and container are written by
:mod:`agent.package.writer` (modes normalised to 0755/0644, uid/gid 0, mtime 0), the manifest is
built as the :class:`~agent.package.manifest.Manifest` model, and ``inspect`` checks packages with
the agent's own verification code. ``created_at`` comes from ``--created-at``, else
``SOURCE_DATE_EPOCH``, else the clock.
"""

from __future__ import annotations

import hashlib
import io
import os
import stat
import tempfile
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pathspec
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from cutover.agent.errors import (
    ConfigError,
    DigestMismatchError,
    ManifestError,
    PackageFormatError,
)
from cutover.agent.extract import verify_payload_digest
from cutover.agent.keys import PrivateKey, PublicKey
from cutover.agent.package.container import open_package
from cutover.agent.package.manifest import (
    FORMAT_VERSION,
    Checklist,
    DirEntry,
    FileEntry,
    HealthSpec,
    Hooks,
    Manifest,
    ReleaseNotes,
    ReleaseType,
    RollbackPlan,
    SharedPaths,
    SymlinkEntry,
    check_relpath,
    explain_validation,
    parse_manifest,
    render_manifest,
)
from cutover.agent.package.signatures import SignatureEntry, parse_signatures
from cutover.agent.package.writer import (
    COMPRESSIONS,
    PayloadWriter,
    add_signature,
    file_mode,
    write_package_file,
)
from cutover.agent.trust.policy import SignatureVerdict, manifest_digest, signature_verdict
from cutover.agent.trust.requirements import Requirements, check_requirements

__all__ = [
    "AppConfig",
    "BuildResult",
    "Inspection",
    "build_package",
    "inspect_package",
    "load_app_config",
    "sign_package",
]

DEFAULT_EXCLUDES = (".git", ".hg", ".svn", ".cutover")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class BuildSection(_Strict):
    exclude: list[str] = []


class ReleaseSection(_Strict):
    release_type: ReleaseType = ReleaseType.MINOR
    requires_migration: bool = False
    destructive_migration: bool | None = None  # needs the matrix's destructive_migration row


class AppConfig(_Strict):
    """``cutover.toml`` at the root of an app tree."""

    app: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,63}$")
    # Governance (docs/governance.md): signed into the manifest as written.
    owner: str | None = None
    rollback: RollbackPlan | None = None
    notes: ReleaseNotes | None = None
    checklist: Checklist | None = None
    build: BuildSection = BuildSection()
    release: ReleaseSection = ReleaseSection()
    hooks: Hooks = Hooks()
    shared: SharedPaths = SharedPaths()
    health: HealthSpec = HealthSpec()


def load_app_config(app_dir: Path) -> AppConfig:
    """Read and validate ``APP_DIR/cutover.toml``.

    Raises:
        ConfigError: missing, not TOML, or not matching the schema (message names the key).
    """
    path = app_dir / "cutover.toml"
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ConfigError(
            f"{path} not found: every app tree declares its hooks, shared paths and health "
            "checks there (see docs/package-format.md)"
        ) from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from exc
    try:
        return AppConfig.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = ".".join(str(p) for p in err["loc"])
        raise ConfigError(
            f"{path}: {loc}: {err['msg']}"
            + (f" (+{exc.error_count() - 1} more problems)" if exc.error_count() > 1 else "")
        ) from exc


@dataclass(frozen=True)
class BuildResult:
    path: Path
    manifest: Manifest
    manifest_bytes: bytes
    files: int
    total_bytes: int
    payload_size: int


def _exclude_spec(cfg: AppConfig) -> pathspec.GitIgnoreSpec:
    """``[build] exclude`` with gitignore semantics (pathspec): a pattern without an inner ``/``
    matches a name at any depth, a leading or inner ``/`` anchors it to the tree root, a
    trailing ``/`` matches directories only, ``**`` spans directories and ``!`` re-includes."""
    return pathspec.GitIgnoreSpec.from_lines([*DEFAULT_EXCLUDES, *cfg.build.exclude])


def _excluded(spec: pathspec.GitIgnoreSpec, rel: str, is_dir: bool) -> bool:
    return spec.match_file(f"{rel}/" if is_dir else rel)


def _refuse_output_in_tree(root: Path, output: Path, spec: pathspec.GitIgnoreSpec) -> None:
    """An output inside the tree would be packed by the next build (with every package before
    it), unless an exclude pattern covers it or one of its directories."""
    try:
        rel = output.resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        return
    parts = rel.split("/")
    dirs = ["/".join(parts[: n + 1]) for n in range(len(parts) - 1)]
    if any(_excluded(spec, d, True) for d in dirs) or _excluded(spec, rel, False):
        return
    hint = f"/{dirs[0]}/" if dirs else f"/{rel}"
    raise ConfigError(
        f"{output} is inside the app tree {root} and not excluded: this package (and any "
        f"earlier one there) would be packed into the next release; write it outside the app "
        f"tree, or add {hint!r} to [build] exclude in {root / 'cutover.toml'}"
    )


def _normalise_link(rel: str, target: str, root: Path) -> str:
    """Rewrite a symlink target to the canonical ``../``*-then-names form, or refuse it."""
    if os.path.isabs(target):
        raise ManifestError(
            f"{root / rel}: symlink to absolute path {target!r}; only relative links that stay "
            "inside the tree can be shipped (exclude it, or make it relative)"
        )
    parent = os.path.dirname(rel)
    resolved = os.path.normpath(os.path.join(parent, target))
    if resolved == ".." or resolved.startswith("../") or resolved == ".":
        raise ManifestError(
            f"{root / rel}: symlink {target!r} points outside the app tree (or at its root); "
            "exclude it in cutover.toml [build] exclude"
        )
    return os.path.relpath(resolved, parent or ".")


def _walk(root: Path, cfg: AppConfig) -> list[tuple[str, os.stat_result, str | None]]:
    """Sorted (relative path, lstat, link target) for everything to ship."""
    shared = set(cfg.shared.dirs) | set(cfg.shared.files)
    spec = _exclude_spec(cfg)
    out: list[tuple[str, os.stat_result, str | None]] = []

    def visit(dir_rel: str) -> None:
        abs_dir = root / dir_rel if dir_rel else root
        with os.scandir(abs_dir) as it:
            entries = sorted((e.name, e.is_dir(follow_symlinks=False)) for e in it)
        for name, is_dir in entries:
            rel = f"{dir_rel}/{name}" if dir_rel else name
            if rel in shared or _excluded(spec, rel, is_dir):
                continue
            check_relpath(rel)
            st = os.lstat(root / rel)
            if stat.S_ISLNK(st.st_mode):
                out.append((rel, st, _normalise_link(rel, os.readlink(root / rel), root)))
            elif stat.S_ISDIR(st.st_mode):
                out.append((rel, st, None))
                visit(rel)
            elif stat.S_ISREG(st.st_mode):
                out.append((rel, st, None))
            else:
                raise ManifestError(
                    f"{root / rel}: not a regular file, directory or symlink; exclude it in "
                    "cutover.toml [build] exclude"
                )

    visit("")
    out.sort(key=lambda item: item[0])
    return out


def _created_at(explicit: datetime | None) -> datetime:
    if explicit is not None:
        return explicit
    sde = os.environ.get("SOURCE_DATE_EPOCH")
    if sde:
        try:
            return datetime.fromtimestamp(int(sde), UTC)
        except ValueError as exc:
            raise ConfigError(
                f"SOURCE_DATE_EPOCH={sde!r} is not a whole number of seconds"
            ) from exc
    return datetime.now(UTC).replace(microsecond=0)


def build_package(
    app_dir: Path,
    output: Path,
    *,
    version: str,
    commit: str = "",
    branch: str = "",
    build: str = "",
    release_type: ReleaseType | None = None,
    notes: str = "",
    created_at: datetime | None = None,
    expires_after: timedelta | None = None,
    compression: str = "zstd",
    chunks: bool = True,
    progress: Callable[[int], None] | None = None,
    on_total: Callable[[int], None] | None = None,
    requirements: Requirements | None = None,
    changes: list[str] | None = None,
    base: Path | None = None,
) -> BuildResult:
    """Build an unsigned package of ``app_dir`` at ``output``.

    With ``base`` (the previous release's package), a *thin package*: the manifest lists the
    whole tree as always, but its payload holds only the regular files whose SHA-256 the base
    package's manifest does not list, and ``payload.base`` names the base version
    (docs/package-format.md, "Thin packages"). Hosts must hold the base files to stage it.
    ``chunks=False`` leaves ``payload.chunks`` out of the manifest (agents older than it refuse
    the field; docs/package-format.md).

    ``on_total`` is told the bytes of regular files to pack once the tree is walked, before any
    ``progress`` call (so a progress bar knows its total).

    Raises:
        ConfigError: cutover.toml is missing or invalid.
        ManifestError: the tree holds something that cannot be shipped safely, or the
            manifest lacks a field ``requirements`` asks for (code ``missing_field``), or its
            notes or metadata hold a secret (code ``secret_in_notes``).
    """
    cfg = load_app_config(app_dir)
    created = _created_at(created_at)
    if compression not in COMPRESSIONS:
        raise ConfigError(
            f"unknown compression {compression!r}: use one of {', '.join(COMPRESSIONS)}"
        )
    if output.exists():
        raise ConfigError(f"{output} exists already; choose another -o path or remove it")
    _refuse_output_in_tree(app_dir, output, _exclude_spec(cfg))
    walked = _walk(app_dir, cfg)
    base_version, base_digests = _base_contents(base, cfg.app) if base is not None else (None, None)
    if on_total is not None:
        on_total(
            sum(st.st_size for _, st, link in walked if link is None and stat.S_ISREG(st.st_mode))
        )
    output.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryFile(dir=output.parent) as payload_file:
        writer = PayloadWriter(payload_file, compression, chunks=chunks)
        files: list[FileEntry | SymlinkEntry | DirEntry] = []
        total = 0
        for rel, st, link in walked:
            if base_digests is not None and (link is not None or stat.S_ISDIR(st.st_mode)):
                files.append(_entry_only(rel, link))  # a thin payload holds regular files only
            elif link is not None:
                files.append(writer.add_symlink(rel, link))
            elif stat.S_ISDIR(st.st_mode):
                files.append(writer.add_dir(rel))
            else:
                executable = bool(st.st_mode & stat.S_IXUSR)
                with (app_dir / rel).open("rb") as fh:
                    known = None if base_digests is None else _known(fh, rel, st, base_digests)
                    if known is not None:
                        files.append(known)
                    else:
                        files.append(writer.add_file(rel, fh, st.st_size, executable=executable))
                total += st.st_size
                if progress is not None:
                    progress(st.st_size)
        payload = writer.finish()
        if base_version is not None:
            payload = payload.model_copy(update={"base": base_version})
        try:
            manifest = Manifest(
                format=FORMAT_VERSION,
                app=cfg.app,
                version=version,
                build=build,
                commit=commit,
                branch=branch,
                created_at=created,
                expires_at=None if expires_after is None else created + expires_after,
                release_type=release_type or cfg.release.release_type,
                requires_migration=cfg.release.requires_migration,
                destructive_migration=cfg.release.destructive_migration,
                owner=cfg.owner,
                rollback=cfg.rollback,
                release_notes=(
                    ReleaseNotes.model_validate(
                        {**(cfg.notes or ReleaseNotes()).model_dump(), "changes": changes}
                    )
                    if changes is not None
                    else cfg.notes
                ),
                checklist=cfg.checklist,
                notes=notes,
                hooks=cfg.hooks,
                shared=cfg.shared,
                health=cfg.health,
                payload=payload,
                files=files,
            )
        except ValidationError as exc:
            raise ManifestError(explain_validation(exc, f"the manifest of {app_dir}")) from exc
        if requirements is not None:
            check_requirements(manifest, requirements)
        # Imported here: detect-secrets pulls in requests and yaml, which only build needs.
        from cutover.controller.secret_scan import check_no_secrets

        check_no_secrets(manifest)
        # The builder holds itself to the agent's rules (strict JSON, size cap) before writing.
        if parse_manifest(render_manifest(manifest)) != manifest:
            raise ManifestError(
                f"the manifest of {app_dir} does not read back as built; report a bug"
            )
        payload_file.seek(0)
        manifest_bytes = write_package_file(output, manifest, [], payload_file)
    return BuildResult(output, manifest, manifest_bytes, len(files), total, payload.size)


def _base_contents(base: Path, app: str) -> tuple[str, set[str]]:
    """The version and file digests of the base package of a thin build.

    Raises:
        ConfigError: the base package is for another app.
    """
    parts, fh = open_package(base)
    fh.close()
    manifest = parse_manifest(parts.manifest_bytes)
    if manifest.app != app:
        raise ConfigError(
            f"--base {base} is a package of {manifest.app!r}, not {app!r}; give a previous "
            f"release of {app}"
        )
    return manifest.version, {e.sha256 for e in manifest.files if isinstance(e, FileEntry)}


def _entry_only(rel: str, link: str | None) -> SymlinkEntry | DirEntry:
    if link is not None:
        return SymlinkEntry(path=rel, symlink=link)
    return DirEntry(path=rel, dir=True, mode=0o755)


def _known(
    fh: io.BufferedReader, rel: str, st: os.stat_result, digests: set[str]
) -> FileEntry | None:
    """The entry of a file whose content the base holds (then left out of the payload), or
    None (``fh`` rewound: the writer packs it)."""
    digest = hashlib.file_digest(fh, "sha256").hexdigest()
    fh.seek(0)
    if digest not in digests or fh.seek(0, os.SEEK_END) != st.st_size:
        fh.seek(0)
        return None
    return FileEntry(
        path=rel, size=st.st_size, sha256=digest, mode=file_mode(bool(st.st_mode & stat.S_IXUSR))
    )


def sign_package(path: Path, key: PrivateKey) -> list[str]:
    """Add ``key``'s signature to the package at ``path`` (rewritten atomically).

    Returns:
        The key ids that have signed, after this signature.
    """
    entries = add_signature(path, lambda data: SignatureEntry.of(key.keyid, key.sign(data)))
    return [e.keyid for e in entries]


@dataclass(frozen=True)
class Inspection:
    """What ``cutover inspect`` found, by the agent's own checks.

    Attributes:
        manifest: the manifest, parsed under the agent's strict rules.
        signers: key ids in ``signatures.json``, in file order.
        verdicts: each signer's verdict against the keys given (empty when none were).
        payload_problem: why the payload does not match its digest, or None when it does.
        manifest_digest: SHA-256 of ``manifest.json``, as the agents record it.
    """

    manifest: Manifest
    signers: list[str]
    verdicts: dict[str, SignatureVerdict]
    payload_problem: str | None
    manifest_digest: str = ""

    @property
    def payload_matches(self) -> bool:
        return self.payload_problem is None


def inspect_package(path: Path, trusted: Mapping[str, PublicKey] | None = None) -> Inspection:
    """Check a package as the agent would, without a host: container, manifest schema, payload
    size, codec and SHA-256 (:func:`agent.extract.verify_payload_digest`), and, against
    ``trusted`` keys, each signature (:func:`agent.trust.policy.signature_verdict`).

    Raises:
        NotFoundError, PackageFormatError, ManifestError: the package cannot be read at all.
    """
    parts, fh = open_package(path)
    with fh:
        manifest = parse_manifest(parts.manifest_bytes)
        entries = parse_signatures(parts.signatures_bytes)
        verdicts = (
            {e.keyid: signature_verdict(parts.manifest_bytes, e, trusted) for e in entries}
            if trusted
            else {}
        )
        problem = None
        try:
            verify_payload_digest(fh, parts, manifest)
        except (DigestMismatchError, PackageFormatError) as exc:
            problem = str(exc)
    digest = manifest_digest(parts.manifest_bytes)
    return Inspection(manifest, [e.keyid for e in entries], verdicts, problem, digest)
