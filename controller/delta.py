"""Delta push: per host, ship only the file contents that host lacks (docs/controller.md).

For each host a push asks ``POST /v1/apps/{app}/releases/{version}/missing`` with the SHA-256 of
every regular file of the package's manifest, then uploads a **delta container**: the package's
own ``manifest.json`` and ``signatures.json``, a ``delta.json`` describing the thin payload
(:mod:`agent.package.delta`), and a thin payload re-tarred from the package's payload with only
the missing files (:func:`agent.extract.thin.write_thin_payload`, the one ustar codec and the
package writer; streamed through a temporary file, never held in memory). The agent still checks
every file against the signed manifest, so a delta is trusted exactly as the full package is.

Hosts that lack the same contents share one container (built once, off the event loop). The full
package is uploaded instead when the agent predates the endpoint (``404``/``405``), when it holds
none of the contents, when the package holds more than :data:`MAX_DIGESTS` files, or when the
agent refused the thin payload as lacking a base file (a release pruned in between); a thin
package (``cutover build --base``) is always uploaded as it is.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import tempfile
from collections.abc import AsyncIterator, Collection
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import quote

from cutover.agent.api_models import MissingAnswer
from cutover.agent.errors import MethodNotAllowedError, NotFoundError
from cutover.agent.extract.thin import write_thin_payload
from cutover.agent.package.container import open_package, write_package
from cutover.agent.package.delta import DeltaPayload, DeltaSpec, render_delta
from cutover.agent.package.manifest import FileEntry, parse_manifest

if TYPE_CHECKING:
    from cutover.controller.client import AgentClient

__all__ = ["MAX_DIGESTS", "DeltaPlanner", "DeltaUpload", "ask_missing", "make_delta_container"]

MAX_DIGESTS = 200_000  # the agent's cap per `missing` request (agent/daemon/bodies.py)
_CHUNK = 1 << 20


@dataclass(frozen=True)
class DeltaUpload:
    """A delta container on disk: what to upload, its size and SHA-256, what it carries."""

    path: Path
    size: int
    sha256: bytes
    files: int
    file_bytes: int


async def ask_missing(
    client: AgentClient, app: str, version: str, digests: list[str]
) -> list[str] | None:
    """The digests the agent's host lacks, or None if the agent has no ``missing`` endpoint.

    Raises:
        UnreachableError, TransportError, or the registry's class of the agent's answer.
    """
    path = f"/v1/apps/{quote(app, safe='')}/releases/{quote(version, safe='')}/missing"
    body = json.dumps({"digests": digests}, separators=(",", ":")).encode()
    try:
        resp = await client.request(
            "POST",
            path,
            content=_chunks(body),  # up to 13 MiB: streamed, not one write on the loop
            content_type="application/json",
            content_sha256=hashlib.sha256(body).digest(),
            content_length=len(body),
        )
    except (NotFoundError, MethodNotAllowedError):
        # An agent predating the endpoint (or an unknown app: the full upload then says so).
        return None
    from cutover.controller.client import MAX_RESPONSE_BYTES  # the client imports aiohttp

    try:
        raw = await resp.aread(MAX_RESPONSE_BYTES)
    finally:
        await resp.aclose()
    return MissingAnswer.model_validate_json(raw).missing


async def _chunks(body: bytes) -> AsyncIterator[bytes]:
    view = memoryview(body)
    for start in range(0, len(body), _CHUNK):
        yield bytes(view[start : start + _CHUNK])


def make_delta_container(package: Path, wanted: Collection[str], out: Path) -> DeltaUpload:
    """Write the delta container of ``package`` holding the files whose SHA-256 is ``wanted``.

    Raises:
        PackageFormatError, DigestMismatchError: the package is not what its manifest says.
    """
    parts, fh = open_package(package)
    with fh, tempfile.TemporaryFile(dir=out.parent) as thin:
        manifest = parse_manifest(parts.manifest_bytes)
        made = write_thin_payload(fh, parts, manifest, set(wanted), thin)
        payload = made.payload
        spec = DeltaSpec(
            format=1,
            payload=DeltaPayload(
                sha256=payload.sha256, size=payload.size, compression=payload.compression
            ),
        )
        thin.seek(0)
        with out.open("xb") as dst:
            write_package(
                dst,
                parts.manifest_bytes,
                parts.signatures_bytes,
                thin,
                payload.size,
                payload.compression,
                delta_bytes=render_delta(spec),
            )
    with out.open("rb") as src:
        digest = hashlib.file_digest(src, "sha256").digest()
    return DeltaUpload(out, out.stat().st_size, digest, made.files, made.bytes)


class DeltaPlanner:
    """One push's delta state: the package's file digests, and the containers made so far.

    Args:
        package: the full, signed package.
        workdir: a private directory for the containers (the caller removes it).
    """

    def __init__(self, package: Path, workdir: Path) -> None:
        self.package = package
        self.package_size = package.stat().st_size
        self._workdir = workdir
        self._lock = asyncio.Lock()
        self._digests: list[str] | None = None
        self.thin_package = False  # already thin (built with --base): uploaded as it is
        self._built: dict[frozenset[str], asyncio.Task[DeltaUpload]] = {}

    async def digests(self) -> list[str]:
        """The unique SHA-256 of the package's regular files (empty for a thin package)."""
        async with self._lock:
            if self._digests is None:
                self._digests = await asyncio.to_thread(self._read_digests)
            return self._digests

    def _read_digests(self) -> list[str]:
        parts, fh = open_package(self.package)
        fh.close()
        manifest = parse_manifest(parts.manifest_bytes)
        if manifest.payload.base is not None:
            self.thin_package = True
            return []
        return sorted({e.sha256 for e in manifest.files if isinstance(e, FileEntry)})

    async def container(self, missing: list[str]) -> DeltaUpload:
        """The delta container for hosts lacking ``missing`` (made once per distinct set)."""
        key = frozenset(missing)
        async with self._lock:
            task = self._built.get(key)
            if task is None:
                out = self._workdir / f"delta-{len(self._built)}.cutover"
                task = asyncio.create_task(
                    asyncio.to_thread(make_delta_container, self.package, key, out)
                )
                self._built[key] = task
        return await asyncio.shield(task)
