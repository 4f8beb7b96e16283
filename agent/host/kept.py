"""The signed manifest and its runtime spec, kept under ``.cutover/manifests/`` at staging.

Both are digest-checked against the release record every time they are read back: a kept copy
edited on the host (hooks or checks swapped in) is :class:`DriftError`, never used.

The **runtime spec** is what activation and rollback need from a manifest, without its file
list, so that switching releases costs the same for a 10 MB and a 1 GB release (no parsing of
20,000 file entries on the flip path).
"""

from __future__ import annotations

import hashlib

from pydantic import BaseModel, ConfigDict, ValidationError

from cutover.agent._util.fsutil import atomic_write
from cutover.agent.errors import DriftError, NotFoundError, StateError
from cutover.agent.host.layout import Layout
from cutover.agent.host.state import AppState, ReleaseRecord
from cutover.agent.package.manifest import (
    HealthSpec,
    Hooks,
    Manifest,
    SharedPaths,
    canonical_json,
    parse_manifest,
)

__all__ = ["RuntimeSpec", "keep_manifest", "load_manifest", "load_runtime"]


class RuntimeSpec(BaseModel):
    """Hooks, health checks, shared paths and ``requires_migration`` of one release."""

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


def keep_manifest(layout: Layout, manifest: Manifest, manifest_bytes: bytes) -> str:
    """Write the signed manifest bytes and its runtime spec; returns the spec's SHA-256."""
    atomic_write(layout.kept_manifest(manifest.version), manifest_bytes, 0o640)
    runtime = canonical_json(RuntimeSpec.of(manifest).model_dump(mode="json"))
    atomic_write(layout.runtime_spec(manifest.version), runtime, 0o640)
    return hashlib.sha256(runtime).hexdigest()


def _installed(state: AppState, version: str) -> ReleaseRecord:
    rec = state.releases.get(version)
    if rec is None or not rec.installed:
        raise NotFoundError(f"{state.app} {version} is not installed on this host")
    return rec


def load_manifest(layout: Layout, state: AppState, version: str) -> Manifest:
    """The kept manifest of an installed release (digest-checked).

    Raises:
        NotFoundError: not installed. DriftError: missing or not what was recorded.
    """
    rec = _installed(state, version)
    if rec.adopted:
        raise StateError(
            f"{state.app} {version} was adopted from an earlier deploy tool: it has no signed "
            "manifest to verify against"
        )
    path = layout.kept_manifest(version)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DriftError(f"stored manifest {path} is missing: {exc.strerror}") from exc
    if hashlib.sha256(data).hexdigest() != rec.manifest_digest:
        raise DriftError(f"stored manifest {path} does not match the digest recorded at staging")
    return parse_manifest(data)


def load_runtime(layout: Layout, state: AppState, version: str) -> RuntimeSpec:
    """The runtime spec recorded at staging (digest-checked), without the file list.

    Raises:
        NotFoundError: not installed. DriftError: missing, invalid or not what was recorded.
    """
    rec = _installed(state, version)
    if rec.adopted:  # no manifest: no hooks or checks of its own (host hooks still run)
        return RuntimeSpec(
            app=state.app,
            version=version,
            requires_migration=False,
            hooks=Hooks(),
            health=HealthSpec(),
            shared=SharedPaths(),
        )
    path = layout.runtime_spec(version)
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
