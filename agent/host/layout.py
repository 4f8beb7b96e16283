"""Where everything of one app root lives (docs/operations.md, "Host layout")::

    <root>/releases/<version>/   immutable once staged (read-only files and directories)
    <root>/shared/               persistent data linked into every release
    <root>/current               relative symlink -> releases/<version>
    <root>/.cutover/             state.json, journal.jsonl, lock, incoming/, manifests/, trash/,
                                 worker.lock, stream-worker.lock

Only paths: the modules that read and write them are ``current`` (the link), ``installer``
(incoming/ and releases/), ``kept`` (manifests/), ``trash``, ``ledger`` (state and journal),
``lock`` and ``workerlock``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from cutover.agent.errors import ConfigError, StorageError

__all__ = ["Layout"]


@dataclass(frozen=True)
class Layout:
    """The paths of one app root."""

    root: Path
    # ``incoming/<version>.installing``: made before a staging renames into ``releases/`` and
    # removed once the release is recorded; recovery removes an unrecorded ``releases/<version>``
    # only with it (a directory Cutover did not create is never removed)
    INSTALLING: ClassVar[str] = ".installing"

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

    @property
    def state_file(self) -> Path:
        return self.meta / "state.json"

    @property
    def journal_file(self) -> Path:
        return self.meta / "journal.jsonl"

    @property
    def lock_file(self) -> Path:
        return self.meta / "lock"

    @property
    def worker_lock(self) -> Path:
        """Stage workers hold it shared while they may write ``incoming/`` (agent/host/workerlock.py)."""
        return self.meta / "worker.lock"

    @property
    def stream_worker_lock(self) -> Path:
        """Streaming workers hold it shared while they may write ``streaming/``."""
        return self.meta / "stream-worker.lock"

    def install_marker(self, version: str) -> Path:
        return self.incoming / f"{version}{self.INSTALLING}"

    def release(self, version: str) -> Path:
        return self.releases / version

    def kept_manifest(self, version: str) -> Path:
        """The signed manifest bytes kept at staging."""
        return self.manifests / f"{version}.json"

    def runtime_spec(self, version: str) -> Path:
        """The manifest without its file list (what activation and rollback read)."""
        return self.manifests / f"{version}.runtime.json"

    def inventory(self, version: str) -> Path:
        """Files stage hooks added to the release (drift detection tells them from tampering)."""
        return self.manifests / f"{version}.inventory.json"

    def seal(self, version: str) -> Path:
        """The files' identities when the release was sealed (a cache: :mod:`agent.host.seal`)."""
        return self.manifests / f"{version}.seal.json"

    def dirs(self) -> tuple[Path, ...]:
        return (self.releases, self.shared, self.meta, self.incoming, self.manifests, self.trash)

    def create(self) -> None:
        """Create the layout (idempotent); agent state under .cutover/ is not world-readable.

        Raises:
            StorageError: a directory cannot be created.
        """
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            for d in self.dirs():
                d.mkdir(mode=0o750 if d.is_relative_to(self.meta) else 0o755, exist_ok=True)
        except OSError as exc:
            raise StorageError(f"cannot create {exc.filename}: {exc.strerror}") from exc

    def check(self, app: str) -> None:
        """Raise ConfigError naming the missing directories (the app was never initialised).

        Raises:
            ConfigError: a directory of the layout is missing.
        """
        missing = [str(d) for d in self.dirs() if not d.is_dir()]
        if missing:
            raise ConfigError(
                f"app {app!r}: {', '.join(missing)} missing; run `cutover-agent init --app "
                f"{app} --root {self.root} ...` first"
            )
