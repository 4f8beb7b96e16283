"""The agent pulls a package from an HTTP(S) store (``POST .../fetch``), resuming after breaks.

The store is untrusted: what arrives is verified exactly like an upload (signatures, manifest,
payload digest) by :meth:`agent.lifecycle.AppManager.stage`. This module only moves bytes, with
these rules:

* the size is capped by ``agent.max_upload_bytes`` (declared ``Content-Length``/``Content-Range``
  checked first, bytes counted while receiving); the whole transfer by ``agent.fetch_timeout_s``;
  each read by ``agent.upload_idle_timeout_s``;
* an interrupted transfer resumes with ``Range: bytes=N-`` (and ``If-Range`` with the strong ETag
  or Last-Modified of the first response, so a replaced object restarts from zero instead of
  being spliced); a ``206`` must carry ``Content-Range: bytes N-.../TOTAL`` starting exactly at
  ``N``, a ``200`` restarts from zero; at most :data:`ATTEMPTS` attempts with backoff;
* ``Accept-Encoding: identity`` and no transparent decompression: ranges count stored bytes;
* where it may fetch from is :class:`agent.daemon.fetch_policy.FetchPolicy` (``fetch_allow``,
  no loopback/link-local/metadata addresses otherwise), checked on the first URL, on every
  redirect (followed here, at most :data:`MAX_REDIRECTS`) and on every address a name resolves to;
* the URL's query and userinfo (presigned URLs carry credentials there) never reach a log line
  or an operation record: :func:`redact` keeps scheme, host and path;
* a response is never echoed: errors name the status code and the exception class, not the
  body, the reason phrase or the peer's error text.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

import aiohttp
import structlog
from yarl import URL

from cutover.agent.daemon.fetch_policy import MAX_REDIRECTS, FetchPolicy, GuardedResolver
from cutover.agent.errors import PayloadTooLargeError, RequestError, TransportError

__all__ = ["ATTEMPTS", "MAX_REDIRECTS", "download", "redact", "validate_url"]

log = structlog.get_logger(__name__)

ATTEMPTS = 6
BATCH_BYTES = 1 << 20
_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")
_REDIRECTS = frozenset({301, 302, 303, 307, 308})

Progress = Callable[[int, int | None], None]


def validate_url(url: str) -> URL:
    """Parse a fetch URL: absolute ``http``/``https`` with a host.

    Raises:
        RequestError: anything else.
    """
    try:
        parsed = URL(url)
    except (ValueError, TypeError) as exc:
        raise RequestError(f"url is not a valid URL: {exc}") from exc
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise RequestError("url must be an absolute http:// or https:// URL with a host")
    return parsed


def redact(url: URL) -> str:
    """The URL without userinfo, query or fragment (they may hold credentials)."""
    return str(url.with_user(None).with_query(None).with_fragment(None))


def _too_large(limit: int) -> PayloadTooLargeError:
    return PayloadTooLargeError(
        f"the package at the URL is larger than agent.max_upload_bytes ({limit} bytes)"
    )


class _InterruptedError(Exception):
    """The transfer broke off; resume from what we have."""


async def download(
    url: URL,
    dest: Path,
    *,
    max_bytes: int,
    timeout_s: float,
    idle_timeout_s: float,
    policy: FetchPolicy,
    on_progress: Progress | None = None,
    on_bytes: Callable[[int], None] | None = None,
) -> int:
    """Download ``url`` into the new file ``dest``; return its size.

    Raises:
        TransportError: unreachable, an HTTP error status, a bad ``Content-Range``, too many
            interruptions or redirects, or ``timeout_s`` exceeded.
        RequestError: ``payload_too_large``; ``fetch_refused`` (``policy``).
    """
    policy.check_url(url)
    fh: BinaryIO = await asyncio.to_thread(dest.open, "xb")
    try:
        async with asyncio.timeout(timeout_s):
            return await _download(
                url, fh, max_bytes, idle_timeout_s, policy, on_progress, on_bytes
            )
    except TimeoutError:
        raise TransportError(
            f"fetching {redact(url)} took longer than agent.fetch_timeout_s ({timeout_s:g} s)"
        ) from None
    finally:
        await asyncio.to_thread(fh.close)


async def _download(
    url: URL,
    fh: BinaryIO,
    max_bytes: int,
    idle_timeout_s: float,
    policy: FetchPolicy,
    on_progress: Progress | None,
    on_bytes: Callable[[int], None] | None,
) -> int:
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=30, sock_read=idle_timeout_s)
    state = _Transfer(fh, max_bytes, policy, on_progress, on_bytes)
    connector = aiohttp.TCPConnector(resolver=GuardedResolver(policy))
    async with aiohttp.ClientSession(
        timeout=timeout, auto_decompress=False, trust_env=True, connector=connector
    ) as session:
        for attempt in range(1, ATTEMPTS + 1):
            try:
                if await state.attempt(session, url):
                    return state.received
            except _InterruptedError as exc:
                if attempt == ATTEMPTS:
                    raise TransportError(
                        f"fetching {redact(url)} failed {ATTEMPTS} times (last: {exc}); "
                        f"got {state.received} bytes. Check the store and retry"
                    ) from None
                delay = min(0.25 * 2**attempt, 8.0)
                log.warning(
                    "fetch_interrupted",
                    url=redact(url),
                    received=state.received,
                    attempt=attempt,
                    error=str(exc),  # our own text: exception class and byte counts only
                    retry_in_s=delay,
                )
                await asyncio.sleep(delay)
    raise AssertionError("unreachable")  # pragma: no cover


class _Transfer:
    def __init__(
        self,
        fh: BinaryIO,
        max_bytes: int,
        policy: FetchPolicy,
        on_progress: Progress | None,
        on_bytes: Callable[[int], None] | None,
    ) -> None:
        self.fh = fh
        self.max_bytes = max_bytes
        self.policy = policy
        self.on_progress = on_progress
        self.on_bytes = on_bytes
        self.received = 0
        self.total: int | None = None
        self.validator: str | None = None
        self._last_progress = 0.0

    async def attempt(self, session: aiohttp.ClientSession, url: URL) -> bool:
        headers = {"Accept-Encoding": "identity"}
        if self.received:
            headers["Range"] = f"bytes={self.received}-"
            if self.validator:
                headers["If-Range"] = self.validator
        current = url
        try:
            for _ in range(MAX_REDIRECTS + 1):
                async with session.get(current, headers=headers, allow_redirects=False) as resp:
                    if resp.status in _REDIRECTS:
                        current = self._redirect(current, resp)
                        continue
                    await self._check_response(resp, current)
                    await self._receive(resp)
                    break
            else:
                raise TransportError(
                    f"fetching {redact(url)}: more than {MAX_REDIRECTS} redirects; give the "
                    "package's final URL"
                )
        except (aiohttp.ClientPayloadError, aiohttp.ServerDisconnectedError) as exc:
            raise _InterruptedError(type(exc).__name__) from exc
        except (aiohttp.ClientConnectionError, TimeoutError, OSError) as exc:
            raise _InterruptedError(type(exc).__name__) from exc
        except aiohttp.ClientError as exc:  # the peer's text may quote what it sent: not echoed
            raise TransportError(
                f"fetching {redact(current)} failed ({type(exc).__name__})"
            ) from exc
        if self.total is not None and self.received < self.total:
            raise _InterruptedError(f"connection closed at {self.received} of {self.total} bytes")
        return True

    def _redirect(self, current: URL, resp: aiohttp.ClientResponse) -> URL:
        """The next URL of a redirect, checked against the policy like the first one."""
        location = resp.headers.get("Location", "")
        try:
            target = current.join(URL(location))
        except (ValueError, TypeError):
            target = None
        if not location or target is None:
            raise TransportError(
                f"{redact(current)} answered HTTP {resp.status} without a usable Location"
            )
        self.policy.check_url(target)
        log.info("fetch_redirected", url=redact(current), to=redact(target), status=resp.status)
        return target

    async def _check_response(self, resp: aiohttp.ClientResponse, url: URL) -> None:
        if resp.status == 206 and self.received:
            m = _CONTENT_RANGE.fullmatch(resp.headers.get("Content-Range", ""))
            if m is None or int(m[1]) != self.received:
                raise TransportError(
                    f"{redact(url)} answered a resume at byte {self.received} with Content-Range "
                    f"{resp.headers.get('Content-Range')!r}; the store does not support ranges "
                    "correctly"
                )
            if m[3] != "*":
                total = int(m[3])
                if self.total is not None and total != self.total:
                    raise TransportError(f"{redact(url)} changed size while being fetched")
                self.total = total
        elif resp.status == 200:
            if self.received:
                log.warning("fetch_restarted", url=redact(url), discarded=self.received)
                await asyncio.to_thread(self._truncate)
            self.total = resp.content_length
            etag = resp.headers.get("ETag")
            strong = etag if etag and not etag.startswith("W/") else None
            self.validator = strong or resp.headers.get("Last-Modified")
        else:
            raise TransportError(  # status only: the reason phrase and body are the peer's
                f"{redact(url)} answered HTTP {resp.status}; check the URL (presigned URLs expire)"
            )
        if self.total is not None and self.total > self.max_bytes:
            raise _too_large(self.max_bytes)

    def _truncate(self) -> None:
        self.fh.seek(0)
        self.fh.truncate()
        self.received = 0

    async def _receive(self, resp: aiohttp.ClientResponse) -> None:
        buf = bytearray()
        try:
            async for chunk in resp.content.iter_any():
                if self.received + len(buf) + len(chunk) > self.max_bytes:
                    raise _too_large(self.max_bytes)
                buf += chunk
                if len(buf) >= BATCH_BYTES:
                    await self._flush(buf)
        finally:
            if buf:  # keep what arrived before a break: the next attempt resumes after it
                await self._flush(buf)

    async def _flush(self, buf: bytearray) -> None:
        data = bytes(buf)
        buf.clear()
        await asyncio.to_thread(self.fh.write, data)
        self.received += len(data)
        if self.on_bytes is not None:
            self.on_bytes(len(data))
        now = time.monotonic()
        if self.on_progress is not None and now - self._last_progress >= 0.5:
            self._last_progress = now
            self.on_progress(self.received, self.total)
