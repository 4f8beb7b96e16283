"""Uploading a package to one agent, resuming after an interruption (docs/controller.md).

Before the first attempt it asks the agent what it holds of this package (``GET
.../upload/{sha256}``): bytes an earlier, interrupted upload left (even one by a controller
process that was killed) are resumed instead of sent again, a complete package the agent kept is
staged by an empty-body resume, and an upload an operation already took (its ``202`` was lost)
is followed while it runs (one that has finished is not: a new upload then starts a new
operation, e.g. ``already staged``). An agent without the query (``404``/``405``: an older one) gets
a plain signed ``PUT /v1/apps/{app}/releases/{version}`` of the whole file. When the exchange
breaks (the connection is cut, the agent restarts, a proxy times out), the agent keeps what it
received (agent/daemon/uploads.py); this module then asks again and sends only the rest with
``?sha256=HEX&offset=N``, which the signature covers, or returns the operation that took the
upload when the body had arrived whole and only the answer was lost (the agent names the
operation that took the latest upload of the package by this key; one it already named before
the first attempt is not this call's). It retries at most ``attempts`` times in
all, with backoff (:func:`backoff_s`), and says so through ``on_resume``. A ``409 upload_offset``
answer carries the offset the agent holds and is resumed from there (an offset outside the
package's size is not trusted: the upload starts once more from offset 0); a ``422 package_digest``
(the held bytes were not the package's) starts once more from offset 0; an agent without the
resume query (``404``/``405``: an older one) gets the whole file again; any other refusal is
raised at once, as the registry's class (agent/errors.py), as is a first attempt that could not
connect at all (the host is down: there is nothing to resume).

The agent verifies the completed file against the SHA-256 named in the signed request, then the
package as always: a resume is never trusted further than a whole upload.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import os
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO
from urllib.parse import quote, urlencode

import structlog

from cutover.agent.api_models import Accepted, UploadStatus
from cutover.agent.errors import (
    DigestMismatchError,
    LockedError,
    MethodNotAllowedError,
    NotFoundError,
    TransportError,
    UnreachableError,
    UploadOffsetError,
)

if TYPE_CHECKING:
    from cutover.controller.client import AgentClient

__all__ = [
    "CHUNK_BYTES",
    "EXPECT_CONTINUE_MIN_BYTES",
    "UPLOAD_ATTEMPTS",
    "Progress",
    "Resumed",
    "backoff_s",
    "upload_package",
]

log = structlog.get_logger(__name__)

CHUNK_BYTES = 1 << 20
# Uploads this large ask before sending (Expect: 100-continue): a refusal then costs one round
# trip instead of the whole package; below it the round trip costs more than the bytes saved.
EXPECT_CONTINUE_MIN_BYTES = 1 << 20
UPLOAD_ATTEMPTS = 5
BUSY_POLLS, BUSY_POLL_S = 40, 0.25  # how long a resume waits for the agent to see the break

Progress = Callable[[int, int], None]  # (bytes the agent has or was sent, total)
Resumed = Callable[[int, int, str], None]  # (attempt, offset, why the previous one ended)


def backoff_s(attempt: int) -> float:
    """The wait before attempt ``attempt`` (2, 3, ...): 0.5 s doubling, at most 8 s."""
    return float(min(0.5 * 2 ** (attempt - 2), 8.0))


def _seg(value: str) -> str:
    return quote(value, safe="")


async def upload_package(
    client: AgentClient,
    app: str,
    version: str,
    path: Path,
    progress: Progress | None = None,
    *,
    sha256: bytes | None = None,
    on_resume: Resumed | None = None,
    attempts: int = UPLOAD_ATTEMPTS,
) -> Accepted:
    """Upload ``path``; resume it after an interruption. Returns the agent's ``202``.

    Args:
        client: the signing client of the agent.
        progress: called with the bytes the agent has so far (resumed ones included) and the
            file's size.
        sha256: the file's digest when the caller already has it (a fleet push hashes once).
        on_resume: called before each resumed attempt with its number, the offset it resumes
            at and why the previous attempt ended.
        attempts: at most this many PUTs in all (1: never resume).

    Raises:
        UnreachableError, TransportError: still failing after ``attempts``.
        The registry's class of any refusal (AuthError, LockedError, DowngradeError, ...).
    """
    # This call owns the file, not the body generator: aiohttp stops pulling it at
    # Content-Length or cancels it mid-body, and a generator's ``finally`` runs late or never.
    fh: io.BufferedReader = await asyncio.to_thread(path.open, "rb")
    try:
        size, digest = await asyncio.to_thread(_size_and_sha256, fh, sha256)
        offset, attempt, restarted = 0, 1, False
        held, earlier = await _held(client, app, version, digest, fallback=0, first=True)
        if earlier is not None and earlier.status == "running":
            return earlier  # an earlier run's upload is being staged now: follow it
        if 0 < held <= size:  # bytes (or the whole package) an earlier upload left
            offset = held
            if on_resume is not None:
                on_resume(1, offset, f"the agent holds {held} bytes from an earlier upload")
        while True:
            try:
                return await _put(client, fh, app, version, size, digest, offset, progress)
            except UploadOffsetError as exc:  # the agent says where it stands: resume there
                if attempt >= attempts:
                    raise
                why, offset = "offset", exc.offset
                if not 0 <= offset <= size:  # not bytes of this package: start afresh, once
                    if restarted:
                        raise
                    why, offset, restarted = f"held offset {exc.offset} out of range", 0, True
            except DigestMismatchError as exc:
                if exc.code != "package_digest" or restarted or not offset or attempt >= attempts:
                    raise
                why, offset, restarted = "held bytes discarded", 0, True
            except (TransportError, LockedError) as exc:
                if isinstance(exc, LockedError) and exc.code != "upload_busy":
                    raise  # the app is busy: not ours to wait for
                if isinstance(exc, UnreachableError) and attempt == 1:
                    raise  # never connected: nothing to resume, the host is down
                if attempt >= attempts:
                    raise
                why = str(exc)
                await asyncio.sleep(backoff_s(attempt + 1))
                offset, taken = await _held(client, app, version, digest, fallback=offset)
                if taken is not None and (earlier is None or taken.operation != earlier.operation):
                    return taken  # this call's body arrived whole, only the answer was lost
                if not 0 <= offset <= size:  # not bytes of this package: a plain upload
                    offset = 0
            attempt += 1
            log.info(
                "upload_resuming", app=app, version=version, attempt=attempt, offset=offset, why=why
            )
            if on_resume is not None:
                on_resume(attempt, offset, why)
    finally:
        # Shielded: a cancelled upload still closes it (after a read in flight: its lock).
        await asyncio.shield(asyncio.to_thread(fh.close))


async def _held(
    client: AgentClient,
    app: str,
    version: str,
    digest: bytes,
    fallback: int,
    *,
    first: bool = False,
) -> tuple[int, Accepted | None]:
    """The bytes the agent holds of this package (``fallback`` if it cannot say now: the next
    PUT then learns it from a ``409 upload_offset``), and the operation that took this key's
    completed upload of it, if one did.

    Raises:
        UnreachableError: ``first`` and the agent could not be reached (the host is down).
    """
    path = f"/v1/apps/{_seg(app)}/releases/{_seg(version)}/upload/{digest.hex()}"
    for _ in range(BUSY_POLLS):
        try:
            resp = await client.request("GET", path)
            status = await client.parse(resp, UploadStatus, f"GET {path}")
        except UnreachableError:
            if first:
                raise  # never connected: the PUT would not either
            return fallback, None
        except TransportError:
            return fallback, None
        except (NotFoundError, MethodNotAllowedError):  # an agent without resumable uploads
            return 0, None
        if not status.busy:
            return status.offset, status.operation
        # the agent still reads the broken-off body: its bytes are final once it notices
        await asyncio.sleep(BUSY_POLL_S)
    return fallback, None


async def _put(
    client: AgentClient,
    fh: BinaryIO,
    app: str,
    version: str,
    size: int,
    digest: bytes,
    offset: int,
    progress: Progress | None,
) -> Accepted:
    """One PUT of the file from ``offset`` (a plain upload at 0, a resume after)."""
    # a resume's body is only the tail, and the body's own digest is signed: hash it first
    body_digest = await asyncio.to_thread(_tail_sha256, fh, offset) if offset else digest
    await asyncio.to_thread(fh.seek, offset)

    async def chunks() -> AsyncIterator[bytes]:
        sent = offset
        while chunk := await asyncio.to_thread(fh.read, CHUNK_BYTES):
            sent += len(chunk)
            if progress is not None:
                progress(sent, size)
            yield chunk

    api_path = f"/v1/apps/{_seg(app)}/releases/{_seg(version)}"
    query = urlencode({"sha256": digest.hex(), "offset": offset}) if offset else ""
    headers = {"Content-Length": str(size - offset)}
    if size - offset >= EXPECT_CONTINUE_MIN_BYTES:
        headers["Expect"] = "100-continue"
    request = client.prepare_upload(api_path, query, body_digest, chunks(), headers)
    where = f"upload {app} {version}" + (f" from byte {offset}" if offset else "")
    resp = await client.send(request, where)
    return await client.parse(resp, Accepted, where)


def _tail_sha256(fh: BinaryIO, offset: int) -> bytes:
    fh.seek(offset)
    tail = hashlib.sha256()
    while chunk := fh.read(CHUNK_BYTES):
        tail.update(chunk)
    return tail.digest()


def _size_and_sha256(fh: io.BufferedReader, sha256: bytes | None) -> tuple[int, bytes]:
    """Size and SHA-256 of an open file (the bytes hashed, exactly; ``sha256`` if the caller
    has it), positioned at its start for sending."""
    if sha256 is not None:
        return os.fstat(fh.fileno()).st_size, sha256
    digest = hashlib.file_digest(fh, "sha256").digest()
    size = fh.tell()
    fh.seek(0)
    return size, digest
