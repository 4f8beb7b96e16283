"""Build and sign release packages (``cutover build``, ``cutover sign``, ``cutover inspect``).

The build is deterministic: the same tree and the same metadata give byte-identical
``manifest.json`` and payload. Entries are sorted by path, modes are normalised to 0755/0644
(only the owner's execute bit is kept, as git does), tar headers carry uid/gid 0, no owner names and
mtime 0, and ``created_at`` comes from ``--created-at``, else ``SOURCE_DATE_EPOCH``, else the clock.
"""

from __future__ import annotations

import base64
import fnmatch
import hashlib
import io
import os
import stat
import tarfile
import tempfile
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, BinaryIO, cast

import zstandard
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from cutover.agent.errors import ConfigError, ManifestError
from cutover.agent.keys import PrivateKey
from cutover.agent.package.container import copy_payload, hash_payload, open_package, write_package
from cutover.agent.package.manifest import (
    FORMAT_VERSION,
    DirEntry,
    FileEntry,
    HealthSpec,
    Hooks,
    Manifest,
    ReleaseType,
    SharedPaths,
    SymlinkEntry,
    canonical_json,
    check_relpath,
    parse_manifest,
    parse_signatures,
)

__all__ = [
    "AppConfig",
    "BuildResult",
    "build_package",
    "load_app_config",
    "payload_matches",
    "sign_package",
]

ZSTD_LEVEL = 3
DEFAULT_EXCLUDES = (".git", ".hg", ".svn", ".cutover")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class BuildSection(_Strict):
    exclude: list[str] = []


class ReleaseSection(_Strict):
    release_type: ReleaseType = ReleaseType.MINOR
    requires_migration: bool = False


class AppConfig(_Strict):
    """``cutover.toml`` at the root of an app tree."""

    app: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,63}$")
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


def _excluded(rel: str, patterns: list[str]) -> bool:
    """gitignore-like: a pattern without ``/`` matches a name at any depth (``.git``,
    ``node_modules``, ``*.log``); a pattern with a ``/`` (leading or inner; a trailing one is
    ignored) matches the path from the tree root (``/vendor``, ``storage/*.log``)."""
    name = rel.rpartition("/")[2]
    for p in patterns:
        body = p.rstrip("/")
        anchored = "/" in body
        if fnmatch.fnmatchcase(rel if anchored else name, body.lstrip("/")):
            return True
    return False


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
    patterns = [*DEFAULT_EXCLUDES, *cfg.build.exclude]
    out: list[tuple[str, os.stat_result, str | None]] = []

    def visit(dir_rel: str) -> None:
        abs_dir = root / dir_rel if dir_rel else root
        with os.scandir(abs_dir) as it:
            names = sorted(e.name for e in it)
        for name in names:
            rel = f"{dir_rel}/{name}" if dir_rel else name
            if rel in shared or _excluded(rel, patterns):
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


class _HashingReader(io.RawIOBase):
    def __init__(self, fh: BinaryIO) -> None:
        self._fh = fh
        self.hash = hashlib.sha256()
        self.count = 0

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        data = self._fh.read(size)
        self.hash.update(data)
        self.count += len(data)
        return data


def _tarinfo(name: str, kind: bytes, mode: int, size: int = 0, link: str = "") -> tarfile.TarInfo:
    ti = tarfile.TarInfo(name)
    ti.type = kind
    ti.mode = mode
    ti.size = size
    ti.linkname = link
    ti.mtime = 0
    ti.uid = ti.gid = 0
    ti.uname = ti.gname = ""
    return ti


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
    progress: Callable[[int], None] | None = None,
) -> BuildResult:
    """Build an unsigned package of ``app_dir`` at ``output``.

    Raises:
        ConfigError: cutover.toml is missing or invalid.
        ManifestError: the tree holds something that cannot be shipped safely.
    """
    cfg = load_app_config(app_dir)
    created = _created_at(created_at)
    if output.exists():
        raise ConfigError(f"{output} exists already; choose another -o path or remove it")
    entries = _walk(app_dir, cfg)
    files: list[FileEntry | SymlinkEntry | DirEntry] = []
    output.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryFile(dir=output.parent) as payload:
        payload_hash = hashlib.sha256()

        class _Sink(io.RawIOBase):
            def writable(self) -> bool:
                return True

            def write(self, b: Any) -> int:
                payload_hash.update(b)
                return payload.write(b)

        sink = _Sink()
        if compression == "zstd":
            cctx = zstandard.ZstdCompressor(level=ZSTD_LEVEL, write_checksum=True)
            raw: Any = cctx.stream_writer(cast(BinaryIO, sink), closefd=False)
        elif compression == "gzip":
            import gzip

            raw = gzip.GzipFile(fileobj=sink, mode="wb", mtime=0, compresslevel=6)
        elif compression == "none":
            raw = sink
        else:
            raise ConfigError(f"unknown compression {compression!r}: use zstd, gzip or none")
        total = 0
        with tarfile.open(fileobj=raw, mode="w|", format=tarfile.PAX_FORMAT) as tar:
            for rel, st, link in entries:
                if link is not None:
                    files.append(SymlinkEntry(path=rel, symlink=link))
                    tar.addfile(_tarinfo(rel, tarfile.SYMTYPE, 0o777, link=link))
                elif stat.S_ISDIR(st.st_mode):
                    files.append(DirEntry(path=rel, dir=True, mode=0o755))
                    tar.addfile(_tarinfo(rel, tarfile.DIRTYPE, 0o755))
                else:
                    mode = 0o755 if st.st_mode & stat.S_IXUSR else 0o644
                    with (app_dir / rel).open("rb") as fh:
                        reader = _HashingReader(fh)
                        tar.addfile(_tarinfo(rel, tarfile.REGTYPE, mode, st.st_size), reader)
                    if reader.count != st.st_size:
                        raise ManifestError(f"{app_dir / rel} changed size while building; retry")
                    files.append(
                        FileEntry(
                            path=rel, size=st.st_size, sha256=reader.hash.hexdigest(), mode=mode
                        )
                    )
                    total += st.st_size
                    if progress is not None:
                        progress(st.st_size)
        if raw is not sink:
            raw.close()
        payload_size = payload.tell()
        doc: dict[str, Any] = {
            "format": FORMAT_VERSION,
            "app": cfg.app,
            "version": version,
            "build": build,
            "commit": commit,
            "branch": branch,
            "created_at": created.isoformat().replace("+00:00", "Z"),
            "release_type": (release_type or cfg.release.release_type).value,
            "requires_migration": cfg.release.requires_migration,
            "notes": notes,
            "hooks": cfg.hooks.model_dump(mode="json"),
            "shared": cfg.shared.model_dump(mode="json"),
            "health": cfg.health.model_dump(mode="json", exclude_none=True),
            "payload": {
                "sha256": payload_hash.hexdigest(),
                "size": payload_size,
                "compression": compression,
            },
            "files": [f.model_dump(mode="json") for f in files],
        }
        if expires_after is not None:
            doc["expires_at"] = (created + expires_after).isoformat().replace("+00:00", "Z")
        manifest_bytes = canonical_json(doc)
        manifest = parse_manifest(manifest_bytes)  # the builder holds itself to the agent's rules
        payload.seek(0)
        tmp = output.with_name(f".{output.name}.tmp")
        try:
            with tmp.open("xb") as out:
                write_package(out, manifest_bytes, b"[]\n", payload, payload_size, compression)
            tmp.replace(output)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
    return BuildResult(output, manifest, manifest_bytes, len(files), total, payload_size)


def sign_package(path: Path, key: PrivateKey) -> list[str]:
    """Add ``key``'s signature to the package at ``path`` (rewritten atomically).

    Returns:
        The key ids that have signed, after this signature.
    """
    parts, fh = open_package(path)
    with fh:
        sigs = [s.model_dump() for s in parse_signatures(parts.signatures_bytes)]
        sigs = [s for s in sigs if s["keyid"] != key.keyid]
        sigs.append(
            {"keyid": key.keyid, "sig": base64.b64encode(key.sign(parts.manifest_bytes)).decode()}
        )
        sigs.sort(key=lambda s: s["keyid"])
        sig_bytes = canonical_json(sigs)
        tmp = path.with_name(f".{path.name}.sign.tmp")
        try:
            with tmp.open("xb") as out, tempfile.TemporaryFile(dir=path.parent) as payload:
                copy_payload(fh, parts, payload)
                payload.seek(0)
                write_package(
                    out,
                    parts.manifest_bytes,
                    sig_bytes,
                    payload,
                    parts.payload_size,
                    parts.payload_compression,
                )
                out.flush()
                os.fsync(out.fileno())
            tmp.replace(path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
    return [s["keyid"] for s in sigs]


def payload_matches(path: Path) -> tuple[Manifest, list[str], bool]:
    """For ``inspect``: the manifest, the signer key ids, and whether the payload matches."""
    parts, fh = open_package(path)
    with fh:
        manifest = parse_manifest(parts.manifest_bytes)
        signers = [s.keyid for s in parse_signatures(parts.signatures_bytes)]
        ok = (
            parts.payload_size == manifest.payload.size
            and hash_payload(fh, parts) == manifest.payload.sha256
        )
    return manifest, signers, ok
