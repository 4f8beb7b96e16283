"""The release store of one app root: the disk side of every operation.

Layout (DESIGN.md, "On the host")::

    <root>/releases/<version>/   immutable once staged (read-only files and directories)
    <root>/shared/               persistent data linked into every release
    <root>/current               relative symlink -> releases/<version>
    <root>/.cutover/             state.json, journal.jsonl, lock, incoming/, manifests/, trash/

Rules this module enforces:

* ``current`` only ever changes by ``rename(2)`` of a freshly made temp symlink over it, followed
  by an fsync of the root directory; it always resolves to a complete release.
* Nothing is extracted under ``releases/``: payloads go to ``.cutover/incoming/<random>/`` and
  are renamed in whole.
* Deletion is a rename into ``.cutover/trash/`` (instant, atomic) followed by removal that can run
  in the background; a crash mid-removal leaves garbage only in ``trash/``.
* Which release to delete or roll back to comes from the state file, never from ``ls``/mtimes.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import stat
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO

from pydantic import BaseModel, ConfigDict, ValidationError

from cutover.agent._util.faults import checkpoint
from cutover.agent._util.fsutil import atomic_write, fsync_dir, random_suffix, syncfs
from cutover.agent.config import AppSection
from cutover.agent.errors import (
    ConfigError,
    DriftError,
    NotFoundError,
    StorageError,
)
from cutover.agent.extract import extractor as archive
from cutover.agent.host.drift import compare, expected_entries, inventory
from cutover.agent.host.journal import Journal, JournalHead
from cutover.agent.host.lock import AppLock
from cutover.agent.host.state import AppState, ReleaseStatus, StateFile
from cutover.agent.package.container import PackageParts
from cutover.agent.package.manifest import (
    HealthSpec,
    Hooks,
    Manifest,
    SharedPaths,
    canonical_json,
    parse_manifest,
)
from cutover.agent.trust.policy import HostHistory, TrustPolicy, VerifiedRelease, verify_release

__all__ = ["Layout", "ReleaseStore", "RuntimeSpec", "remove_tree"]

Progress = Callable[[str, int, int], None]  # (step, done, total)


@dataclass(frozen=True)
class Layout:
    root: Path

    @property
    def releases(self) -> Path:
        return self.root / "releases"

    @property
    def shared(self) -> Path:
        return self.root / "shared"

    @property
    def current(self) -> Path:
        return self.root / "current"

    @property
    def meta(self) -> Path:
        return self.root / ".cutover"

    @property
    def incoming(self) -> Path:
        return self.meta / "incoming"

    @property
    def manifests(self) -> Path:
        return self.meta / "manifests"

    @property
    def trash(self) -> Path:
        return self.meta / "trash"

    def release(self, version: str) -> Path:
        return self.releases / version

    def dirs(self) -> tuple[Path, ...]:
        return (self.releases, self.shared, self.meta, self.incoming, self.manifests, self.trash)

    def create(self) -> None:
        """Create the layout (idempotent); agent state under .cutover/ is not world-readable."""
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            for d in self.dirs():
                d.mkdir(mode=0o750 if d.is_relative_to(self.meta) else 0o755, exist_ok=True)
        except OSError as exc:
            raise StorageError(f"cannot create {exc.filename}: {exc.strerror}") from exc


class RuntimeSpec(BaseModel):
    """What activation and rollback need from a manifest, without its file list.

    Written next to the signed manifest at staging, its digest recorded in the state, so that
    switching releases costs the same for a 10 MB and a 1 GB release (no parsing of 20,000 file
    entries on the flip path).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    app: str
    version: str
    requires_migration: bool
    hooks: Hooks
    health: HealthSpec
    shared: SharedPaths

    @classmethod
    def of(cls, manifest: Manifest) -> RuntimeSpec:
        return cls(
            app=manifest.app,
            version=manifest.version,
            requires_migration=manifest.requires_migration,
            hooks=manifest.hooks,
            health=manifest.health,
            shared=manifest.shared,
        )


def remove_tree(path: Path) -> None:
    """Remove a tree we own, making read-only directories writable first.

    Never follows a symlink, even one swapped in while it runs: directories are opened with
    ``O_NOFOLLOW`` and made writable through their fds (``os.fwalk``); ``shutil.rmtree`` is the
    fd-based, symlink-attack-safe variant on Linux.
    """
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISDIR(st.st_mode):
        path.unlink()
        return
    for _, _, _, dirfd in os.fwalk(path, follow_symlinks=False):
        os.fchmod(dirfd, 0o700)
    shutil.rmtree(path)


class ReleaseStore:
    """Disk operations of one app. Synchronous: the daemon calls them in threads."""

    def __init__(self, app: str, section: AppSection, policy: TrustPolicy) -> None:
        self.app = app
        self.section = section
        self.policy = policy
        self.layout = Layout(section.root)
        self.state_file = StateFile(self.layout.meta / "state.json", app)
        self.journal = Journal(self.layout.meta / "journal.jsonl")

    # ---------------------------------------------------------------- layout, lock, state
    def init_layout(self) -> None:
        """Create the layout (idempotent)."""
        self.layout.create()

    def check_layout(self) -> None:
        missing = [str(d) for d in self.layout.dirs() if not d.is_dir()]
        if missing:
            raise ConfigError(
                f"app {self.app!r}: {', '.join(missing)} missing; run `cutover-agent init --app "
                f"{self.app} --root {self.layout.root} ...` first"
            )

    def lock(self, operation: str) -> AppLock:
        self.check_layout()
        return AppLock(self.layout.meta / "lock", self.app, operation)

    def load(self) -> AppState:
        return self.state_file.load()

    def save(self, state: AppState) -> None:
        head = self.journal.head
        state.journal_seq, state.journal_hash = head.seq, head.hash
        normalise(state)
        self.state_file.save(state)

    def log(self, event: str, **fields: Any) -> dict[str, Any]:
        return self.journal.append(event, app=self.app, **fields)

    # ---------------------------------------------------------------- current
    def read_current(self) -> str | None:
        try:
            target = os.readlink(self.layout.current)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise StorageError(f"cannot read {self.layout.current}: {exc.strerror}") from exc
        prefix = "releases/"
        if not target.startswith(prefix) or "/" in target[len(prefix) :]:
            raise DriftError(f"{self.layout.current} -> {target!r} is not a Cutover release link")
        return target[len(prefix) :]

    def flip(self, version: str | None) -> None:
        """Point ``current`` at ``version`` atomically (None removes it: first-deploy revert)."""
        cur = self.layout.current
        if version is None:
            cur.unlink(missing_ok=True)
            fsync_dir(self.layout.root)
            return
        if not self.layout.release(version).is_dir():
            raise StorageError(
                f"cannot flip to {version}: {self.layout.release(version)} is missing"
            )
        tmp = self.layout.root / f"current.{random_suffix()}"
        try:
            os.symlink(f"releases/{version}", tmp)
            os.replace(tmp, cur)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise StorageError(f"cannot switch {cur}: {exc.strerror}") from exc
        fsync_dir(self.layout.root)

    # ---------------------------------------------------------------- staging
    def history(self, state: AppState, allow_downgrade: bool) -> HostHistory:
        return HostHistory(
            known_digests=dict(state.known_digests),
            highest_version=state.highest_version,
            allow_downgrade=allow_downgrade or self.section.allow_downgrade,
        )

    def verify(
        self,
        parts: PackageParts,
        state: AppState,
        *,
        expected_version: str | None,
        allow_downgrade: bool,
    ) -> VerifiedRelease:
        return verify_release(
            parts.manifest_bytes,
            parts.signatures_bytes,
            self.policy,
            expected_version=expected_version,
            history=self.history(state, allow_downgrade),
            now=datetime.now(UTC),
        )

    def extract(
        self,
        fh: BinaryIO,
        parts: PackageParts,
        verified: VerifiedRelease,
        progress: Callable[[int], None] | None = None,
    ) -> Path:
        """Verify the payload digest, then extract it into a fresh ``incoming/`` directory."""
        dest = self.layout.incoming / f"{verified.manifest.version}.{random_suffix()}"
        archive.verify_payload_digest(fh, parts, verified.manifest)
        archive.extract_payload(
            fh, parts, verified.manifest, dest, progress=progress, already_verified=True
        )
        return dest

    def install(self, staging: Path, verified: VerifiedRelease) -> tuple[Path, str]:
        """Link shared paths, keep the signed manifest (and its runtime spec), rename the tree
        into ``releases/``. Returns the release dir and the runtime spec's digest."""
        manifest = verified.manifest
        self.link_shared(staging, manifest)
        mdir = self.layout.manifests
        atomic_write(mdir / f"{manifest.version}.json", verified.manifest_bytes, 0o640)
        runtime = canonical_json(RuntimeSpec.of(manifest).model_dump(mode="json"))
        atomic_write(mdir / f"{manifest.version}.runtime.json", runtime, 0o640)
        target = self.layout.release(manifest.version)
        if target.exists() or target.is_symlink():
            raise StorageError(
                f"{target} exists but is not a recorded release; run any cutover-agent command to "
                "let recovery clean it up, then retry"
            )
        checkpoint("stage.before_rename")
        os.rename(staging, target)
        fsync_dir(self.layout.releases)
        checkpoint("stage.renamed")
        return target, hashlib.sha256(runtime).hexdigest()

    def link_shared(self, release_dir: Path, manifest: Manifest) -> None:
        shared = self.layout.shared
        for rel in manifest.shared.dirs:
            _make_shared_dir(shared, rel)
        for rel in manifest.shared.files:
            if not (shared / rel).exists():
                raise StorageError(
                    f"shared file {shared / rel} does not exist; the release {manifest.version} "
                    "links it. Create it on the host (it holds host-specific data), then stage again"
                )
        for rel in [*manifest.shared.dirs, *manifest.shared.files]:
            link = release_dir / rel
            depth = rel.count("/") + 2  # up from releases/<v>/<parent...>
            os.symlink("../" * depth + f"shared/{rel}", link)

    def shared_link_targets(self, manifest: Manifest) -> dict[str, str]:
        return {
            rel: "../" * (rel.count("/") + 2) + f"shared/{rel}"
            for rel in [*manifest.shared.dirs, *manifest.shared.files]
        }

    def make_readonly(self, release_dir: Path) -> None:
        for dirpath, dirnames, filenames in os.walk(release_dir, topdown=False):
            for name in filenames:
                p = os.path.join(dirpath, name)
                st = os.lstat(p)
                if stat.S_ISREG(st.st_mode):
                    os.chmod(p, stat.S_IMODE(st.st_mode) & ~0o222)
            for name in dirnames:
                p = os.path.join(dirpath, name)
                st = os.lstat(p)
                if stat.S_ISDIR(st.st_mode):
                    os.chmod(p, stat.S_IMODE(st.st_mode) & ~0o222)
        os.chmod(release_dir, stat.S_IMODE(os.lstat(release_dir).st_mode) & ~0o222)

    def record_inventory(self, release_dir: Path, manifest: Manifest) -> int:
        """Record files that stage hooks added, so ``verify`` can tell them from tampering."""
        listed = {e.path for e in manifest.files} | set(self.shared_link_targets(manifest))
        extra = inventory(release_dir, listed)
        atomic_write(
            self.layout.manifests / f"{manifest.version}.inventory.json",
            json.dumps(extra, sort_keys=True).encode(),
            0o640,
        )
        return len(extra)

    def make_durable(self) -> None:
        syncfs(self.layout.releases)

    # ---------------------------------------------------------------- verify installed
    def load_manifest(self, state: AppState, version: str) -> Manifest:
        rec = state.releases.get(version)
        if rec is None or not rec.installed:
            raise NotFoundError(f"{self.app} {version} is not installed on this host")
        path = self.layout.manifests / f"{version}.json"
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise DriftError(f"stored manifest {path} is missing: {exc.strerror}") from exc
        if hashlib.sha256(data).hexdigest() != rec.manifest_digest:
            raise DriftError(
                f"stored manifest {path} does not match the digest recorded at staging"
            )
        return parse_manifest(data)

    def load_runtime(self, state: AppState, version: str) -> RuntimeSpec:
        """The runtime spec recorded at staging (digest-checked), without the file list."""
        rec = state.releases.get(version)
        if rec is None or not rec.installed:
            raise NotFoundError(f"{self.app} {version} is not installed on this host")
        if not rec.runtime_digest:  # staged before runtime specs existed
            return RuntimeSpec.of(self.load_manifest(state, version))
        path = self.layout.manifests / f"{version}.runtime.json"
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise DriftError(f"runtime spec {path} is missing: {exc.strerror}") from exc
        if hashlib.sha256(data).hexdigest() != rec.runtime_digest:
            raise DriftError(f"runtime spec {path} does not match the digest recorded at staging")
        try:
            return RuntimeSpec.model_validate_json(data)
        except ValidationError as exc:
            raise DriftError(f"runtime spec {path} is invalid: {exc.errors()[0]['msg']}") from exc

    def drift(self, state: AppState, version: str) -> list[str]:
        """Re-hash an installed release against its manifest; return the differences."""
        manifest = self.load_manifest(state, version)
        root = self.layout.release(version)
        if not root.is_dir():
            return [f"{root}: release directory is missing"]
        inv_path = self.layout.manifests / f"{version}.inventory.json"
        extra: dict[str, dict[str, Any]] = (
            json.loads(inv_path.read_bytes()) if inv_path.exists() else {}
        )
        return compare(root, expected_entries(manifest, self.shared_link_targets(manifest), extra))

    # ---------------------------------------------------------------- deletion
    def trash_release(self, version: str) -> Path | None:
        src = self.layout.release(version)
        try:
            st = os.lstat(src)
        except FileNotFoundError:
            return None
        dst = self.layout.trash / f"{version}.{random_suffix()}"
        if stat.S_ISDIR(st.st_mode):
            # Renaming a directory updates its '..': it needs write permission. fchmod through an
            # O_NOFOLLOW fd, so a symlink planted in releases/ never redirects the chmod.
            fd = os.open(src, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
            try:
                os.fchmod(fd, 0o700)
            finally:
                os.close(fd)
        os.rename(src, dst)
        fsync_dir(self.layout.releases)
        for suffix in (".json", ".runtime.json", ".inventory.json"):
            (self.layout.manifests / f"{version}{suffix}").unlink(missing_ok=True)
        return dst

    def empty_trash(self) -> int:
        n = 0
        for entry in sorted(self.layout.trash.iterdir()) if self.layout.trash.is_dir() else []:
            remove_tree(entry)
            n += 1
        return n

    # ---------------------------------------------------------------- recovery
    def recover(self, state: AppState) -> list[str]:
        """Clean up after a crash. Caller holds the lock. Returns what was done (journaled).

        The activation *revert* (flip back) for a crash after the flip is done by the caller
        (lifecycle), which also runs post_rollback hooks; here we only fix disk leftovers.
        """
        actions: list[str] = []
        _ = self.journal.head  # loading the head drops a torn final line
        if self.journal.dropped_torn_line:
            actions.append("journal: dropped a torn final line left by a crash")
            self.journal.dropped_torn_line = False
        for entry in sorted(self.layout.incoming.iterdir()):
            remove_tree(entry)
            actions.append(f"removed partial staging {entry.name} from incoming/")
        installed = {r.version for r in state.releases.values() if r.installed}
        current = self.read_current()
        for entry in sorted(self.layout.releases.iterdir()):
            if entry.name not in installed and entry.name != current:
                dst = self.trash_release(entry.name)
                actions.append(f"removed unrecorded release directory releases/{entry.name}")
                if dst is not None:
                    remove_tree(dst)
        for entry in sorted(self.layout.root.iterdir()):
            if entry.name.startswith("current.") and entry.is_symlink():
                entry.unlink()
                actions.append(f"removed stray temp symlink {entry.name}")
        if self.empty_trash():
            actions.append("finished deleting releases left in trash/")
        head = self.journal.head
        if head.seq < state.journal_seq or (
            head.seq == state.journal_seq and head.hash != state.journal_hash
        ):
            actions.append(
                f"journal integrity: the journal ends at seq {head.seq}, but the state recorded "
                f"seq {state.journal_seq} when it was last saved: entries were removed or "
                "rewritten outside Cutover; inspect the journal and its backups"
            )
        for rec in state.releases.values():
            if (
                rec.installed
                and rec.version != current
                and not self.layout.release(rec.version).is_dir()
            ):
                rec.installed = False
                actions.append(
                    f"release {rec.version} was being deleted when the agent stopped; recorded it "
                    "as removed"
                )
        return actions

    def journal_head(self, state: AppState) -> JournalHead:
        return JournalHead(state.journal_seq, state.journal_hash)


def _make_shared_dir(shared: Path, rel: str) -> None:
    """Create ``shared/<rel>`` without ever creating anything through a symlink.

    A link under shared/ may be the operator's (storage on another disk): it is used as it is if
    its target exists. But nothing is created through one: the app user could plant
    ``shared/x -> /etc`` and have the agent (or root running the CLI) create directories there.
    """
    fd = os.open(shared, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for part in rel.split("/"):
            with contextlib.suppress(FileExistsError):
                os.mkdir(part, 0o755, dir_fd=fd)
            try:
                nfd = os.open(
                    part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd
                )
            except OSError as exc:  # ELOOP: a symlink; ENOTDIR: a file
                if (shared / rel).is_dir():
                    return  # an existing link to an existing directory: the operator's choice
                raise StorageError(
                    f"shared dir {shared / rel}: component {part!r} is a symlink to nothing or not "
                    f"a directory ({exc.strerror}), and the agent never creates "
                    "directories through links; create the target directory by hand"
                ) from exc
            os.close(fd)
            fd = nfd
    finally:
        os.close(fd)


def normalise(state: AppState) -> None:
    """Derive every record's status from current/previous (the only inputs), in one place."""
    state.history = [
        v for v in state.history if (r := state.releases.get(v)) is not None and r.installed
    ]
    state.previous = state.rollback_target()
    for rec in state.releases.values():
        if rec.status in (ReleaseStatus.BAD, ReleaseStatus.FAILED) or not rec.installed:
            continue
        if rec.version == state.current:
            rec.status = ReleaseStatus.ACTIVE
        elif rec.version == state.previous:
            rec.status = ReleaseStatus.PREVIOUS
        else:
            rec.status = ReleaseStatus.STAGED
