"""The signing HTTP client of the agent API: the only code that signs requests.

Why this lives in ``controller/`` and not next to the server in ``agent/``: the agent never imports
the controller (DESIGN.md layering), and the agent never *sends* API requests — it only verifies
them. Signing belongs to whoever holds a controller key: the ``cutover`` CLI, the rollout engine,
automation, and the end-to-end tests. The wire contract both sides share (the RFC 9421 profile) is
:mod:`agent.httpsig`, which this module imports; docs/protocol.md describes it for third parties.

Rules this client follows:

* every request is signed with :func:`agent.httpsig.sign_request`: ``@method @authority @path
  @query content-type content-digest``, a fresh 256-bit nonce, a short lifetime (60 s); the
  ``@authority`` is the agent's configured name (default: ``host[:port]`` of ``base_url``);
* the path and query are built percent-encoded once and sent exactly as signed (``encoded=True``);
* a bodiless request signs an empty ``Content-Type`` and the SHA-256 of the empty body; an upload
  hashes the file first, then streams it with that digest and an exact ``Content-Length``;
* HTTP and transport failures are translated into :mod:`agent.errors` (``TransportError``,
  ``AuthError``, ``LockedError`` with the holder, ``NotFoundError``, ``RequestError``/
  ``RejectedError``, ``OperationalError``); aiohttp exceptions never escape.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import ssl
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import quote, urlencode

import aiohttp
from yarl import URL

from cutover.agent.errors import (
    AuthError,
    CutoverError,
    LockedError,
    NotFoundError,
    OperationalError,
    RejectedError,
    RequestError,
    TransportError,
)
from cutover.agent.keys import PrivateKey
from cutover.agent.trust import httpsig

__all__ = ["EMPTY_SHA256", "AgentClient", "default_authority", "signed_headers"]

EMPTY_SHA256 = hashlib.sha256(b"").digest()
DEFAULT_LIFETIME_S = 60
CHUNK_BYTES = 1 << 20
MAX_EVENT_LINE_BYTES = 4 << 20
MAX_ERROR_BODY_BYTES = 64 * 1024

Progress = Callable[[int, int], None]


def default_authority(base_url: str) -> str:
    """``host[:port]`` of ``base_url`` as the agent's name: lowercase, default port omitted."""
    url = URL(base_url)
    host = (url.host or "").lower()
    if ":" in host:
        host = f"[{host}]"
    port = url.explicit_port
    default = {"http": 80, "https": 443}.get(url.scheme)
    return host if port is None or port == default else f"{host}:{port}"


def signed_headers(
    key: PrivateKey,
    method: str,
    authority: str,
    path: str,
    query: str = "",
    *,
    content_type: str = "",
    body_sha256: bytes = EMPTY_SHA256,
    created: int | None = None,
    lifetime_s: int = DEFAULT_LIFETIME_S,
    nonce: str | None = None,
) -> dict[str, str]:
    """The four headers of a signed request (low level: tests craft variants from it).

    Args:
        key: the controller key.
        method: the HTTP method as sent.
        authority: the agent's configured name.
        path: the raw, percent-encoded path as sent.
        query: the raw query as sent, without ``?``.
        content_type: the exact Content-Type sent (``""`` without a body).
        body_sha256: SHA-256 of the exact body bytes (default: the empty body).
        created: Unix seconds (default: now); lifetime_s: ``expires - created`` (1-300).
        nonce: default a fresh :func:`agent.httpsig.new_nonce`.

    Returns:
        ``Content-Type``, ``Content-Digest``, ``Signature-Input`` and ``Signature``.

    Raises:
        ValueError: the arguments would make a request every agent refuses.
    """
    created = int(time.time()) if created is None else created
    digest = httpsig.content_digest(body_sha256)
    signed = httpsig.sign_request(
        key,
        httpsig.RequestTarget(method=method, authority=authority, path=path, query=query),
        content_type=content_type,
        content_digest=digest,
        created=created,
        expires=created + lifetime_s,
        nonce=nonce or httpsig.new_nonce(),
    )
    return {
        "Content-Type": content_type,
        "Content-Digest": digest,
        "Signature-Input": signed.signature_input,
        "Signature": signed.signature,
    }


def _seg(value: str) -> str:
    return quote(value, safe="")


def _fingerprint(value: str) -> aiohttp.Fingerprint:
    hexdigits = value.lower().removeprefix("sha256:").replace(":", "")
    try:
        raw = bytes.fromhex(hexdigits)
    except ValueError as exc:
        raise ValueError(f"TLS fingerprint {value!r} is not hex") from exc
    if len(raw) != 32:
        raise ValueError("TLS fingerprint must be the SHA-256 of the certificate (32 bytes)")
    return aiohttp.Fingerprint(raw)


async def _error_from(resp: aiohttp.ClientResponse, where: str) -> CutoverError:
    try:
        raw = await resp.content.read(MAX_ERROR_BODY_BYTES)
        body = json.loads(raw) if raw else {}
    except (ValueError, aiohttp.ClientError, OSError):
        body = {}
    if not isinstance(body, dict):
        body = {}
    code = str(body.get("error") or f"http_{resp.status}")
    detail = body.get("message") or f"HTTP {resp.status} {resp.reason or ''}".rstrip()
    message = f"{where}: {detail}"
    if resp.status == 401:
        return AuthError(message, code=code)
    if resp.status == 409:
        holder = body.get("holder")
        return LockedError(message, holder=holder if isinstance(holder, dict) else None)
    if resp.status == 404:
        return NotFoundError(message, code=code)
    if resp.status in (400, 408, 413, 415):
        return RequestError(message, code=code)
    if 400 <= resp.status < 500:
        return RejectedError(message, code=code)
    return OperationalError(message, code=code)


class AgentClient:
    """An async client for one agent. Use ``async with AgentClient(...) as client:``.

    Args:
        base_url: ``http(s)://host:port`` of the agent.
        key: the controller key that signs every request.
        authority: the agent's configured name (default: ``host[:port]`` of ``base_url``).
        timeout_s: limit for ordinary requests.
        upload_timeout_s: limit for an upload.
        lifetime_s: signature lifetime (``expires - created``), at most 300.
        ssl_context: a custom TLS context (CA bundle); fingerprint: pin the agent's certificate
            by the hex SHA-256 of its DER form (``sha256:AB:CD...`` accepted).
    """

    def __init__(
        self,
        base_url: str,
        key: PrivateKey,
        *,
        authority: str | None = None,
        timeout_s: float = 30.0,
        upload_timeout_s: float = 3600.0,
        lifetime_s: int = DEFAULT_LIFETIME_S,
        ssl_context: ssl.SSLContext | None = None,
        fingerprint: str | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.key = key
        self.authority = authority or default_authority(self.base_url)
        self.timeout_s = timeout_s
        self.upload_timeout_s = upload_timeout_s
        self.lifetime_s = lifetime_s
        self._ssl: ssl.SSLContext | aiohttp.Fingerprint | bool = True
        if fingerprint is not None:
            self._ssl = _fingerprint(fingerprint)
        elif ssl_context is not None:
            self._ssl = ssl_context
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> AgentClient:
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(auto_decompress=False, trust_env=False)
        return self._session

    # ------------------------------------------------------------------ plumbing
    def _prepare(
        self, method: str, path: str, query: str, content_type: str, body_sha256: bytes
    ) -> tuple[URL, dict[str, str]]:
        url = URL(f"{self.base_url}{path}{'?' + query if query else ''}", encoded=True)
        headers = signed_headers(
            self.key,
            method,
            self.authority,
            url.raw_path,
            url.raw_query_string,
            content_type=content_type,
            body_sha256=body_sha256,
            lifetime_s=self.lifetime_s,
        )
        return url, headers

    async def _send(
        self,
        method: str,
        path: str,
        *,
        query: str = "",
        json_body: dict[str, Any] | None = None,
        client_timeout: aiohttp.ClientTimeout | None = None,
    ) -> aiohttp.ClientResponse:
        data = b"" if json_body is None else json.dumps(json_body).encode()
        ctype = "" if json_body is None else "application/json"
        url, headers = self._prepare(method, path, query, ctype, hashlib.sha256(data).digest())
        try:
            resp = await self._client().request(
                method,
                url,
                data=data or None,
                headers=headers,
                timeout=client_timeout or aiohttp.ClientTimeout(total=self.timeout_s),
                ssl=self._ssl,
                allow_redirects=False,
            )
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise TransportError(
                f"{self.base_url}: {method} {path}: {exc or type(exc).__name__}"
            ) from exc
        if resp.status >= 400:
            err = await _error_from(resp, f"{self.base_url} {method} {path}")
            resp.release()
            raise err
        return resp

    async def _json(self, method: str, path: str, **kw: Any) -> dict[str, Any]:
        resp = await self._send(method, path, **kw)
        try:
            body = await resp.json(content_type=None)
        except (ValueError, aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise TransportError(f"{self.base_url}: {method} {path}: bad response: {exc}") from exc
        finally:
            resp.release()
        if not isinstance(body, dict):
            raise TransportError(f"{self.base_url}: {method} {path}: response is not an object")
        return body

    # ------------------------------------------------------------------ reads
    async def health(self) -> dict[str, Any]:
        """``GET /v1/health`` (signed anyway; the agent ignores the signature there)."""
        return await self._json("GET", "/v1/health")

    async def apps(self) -> dict[str, Any]:
        return await self._json("GET", "/v1/apps")

    async def app(self, name: str) -> dict[str, Any]:
        return await self._json("GET", f"/v1/apps/{_seg(name)}")

    async def journal(self, app: str, limit: int = 100) -> list[dict[str, Any]]:
        body = await self._json(
            "GET", f"/v1/apps/{_seg(app)}/journal", query=urlencode({"limit": limit})
        )
        entries: list[dict[str, Any]] = body.get("entries", [])
        return entries

    async def operation(self, op_id: str) -> dict[str, Any]:
        return await self._json("GET", f"/v1/operations/{_seg(op_id)}")

    # ------------------------------------------------------------------ operations
    async def upload(
        self, app: str, version: str, path: Path, progress: Progress | None = None
    ) -> dict[str, Any]:
        """Stream a package file to the agent; returns the ``202`` body (``operation`` id).

        Raises:
            TransportError, AuthError, LockedError, NotFoundError, RequestError, OperationalError.
        """
        size = (await asyncio.to_thread(path.stat)).st_size
        digest = await asyncio.to_thread(_file_sha256, path)
        api_path = f"/v1/apps/{_seg(app)}/releases/{_seg(version)}"
        url, headers = self._prepare("PUT", api_path, "", "application/octet-stream", digest)
        headers["Content-Length"] = str(size)

        async def chunks() -> AsyncIterator[bytes]:
            sent = 0
            fh = await asyncio.to_thread(path.open, "rb")
            try:
                while chunk := await asyncio.to_thread(fh.read, CHUNK_BYTES):
                    sent += len(chunk)
                    if progress is not None:
                        progress(sent, size)
                    yield chunk
            finally:
                await asyncio.to_thread(fh.close)

        try:
            resp = await self._client().put(
                url,
                data=chunks(),
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=self.upload_timeout_s, sock_read=60),
                ssl=self._ssl,
                allow_redirects=False,
            )
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise TransportError(f"{self.base_url}: upload {app} {version}: {exc}") from exc
        try:
            if resp.status >= 400:
                raise await _error_from(resp, f"{self.base_url} upload {app} {version}")
            body: dict[str, Any] = await resp.json(content_type=None)
        finally:
            resp.release()
        return body

    async def fetch(self, app: str, version: str, url: str) -> dict[str, Any]:
        """Ask the agent to pull the package from ``url`` (it verifies it like an upload)."""
        return await self._json(
            "POST", f"/v1/apps/{_seg(app)}/releases/{_seg(version)}/fetch", json_body={"url": url}
        )

    async def activate(self, app: str, version: str) -> dict[str, Any]:
        return await self._json(
            "POST", f"/v1/apps/{_seg(app)}/activate", json_body={"version": version}
        )

    async def rollback(
        self, app: str, to: str | None = None, restore: bool = False
    ) -> dict[str, Any]:
        body: dict[str, Any] = {"restore": restore}
        if to is not None:
            body["to"] = to
        return await self._json("POST", f"/v1/apps/{_seg(app)}/rollback", json_body=body)

    async def delete(self, app: str, version: str) -> dict[str, Any]:
        return await self._json("DELETE", f"/v1/apps/{_seg(app)}/releases/{_seg(version)}")

    async def pin(self, app: str, version: str) -> dict[str, Any]:
        return await self._json("POST", f"/v1/apps/{_seg(app)}/releases/{_seg(version)}/pin")

    async def unpin(self, app: str, version: str) -> dict[str, Any]:
        return await self._json("POST", f"/v1/apps/{_seg(app)}/releases/{_seg(version)}/unpin")

    # ------------------------------------------------------------------ following
    async def events(self, op_id: str) -> AsyncGenerator[dict[str, Any], None]:
        """The operation's events: every past one, then live ones until ``operation.done``."""
        resp = await self._send(
            "GET",
            f"/v1/operations/{_seg(op_id)}/events",
            client_timeout=aiohttp.ClientTimeout(total=None, sock_connect=self.timeout_s),
        )
        try:
            buf = b""
            async for chunk in resp.content.iter_any():
                buf += chunk
                if len(buf) > MAX_EVENT_LINE_BYTES and b"\n" not in buf:
                    raise TransportError(
                        f"{self.base_url}: event line over {MAX_EVENT_LINE_BYTES} bytes"
                    )
                *lines, buf = buf.split(b"\n")
                for line in lines:
                    if line.strip():
                        yield json.loads(line)
        except (aiohttp.ClientError, OSError, TimeoutError, ValueError) as exc:
            raise TransportError(f"{self.base_url}: events of {op_id}: {exc}") from exc
        finally:
            resp.release()

    async def wait(self, op_id: str, *, poll_s: float = 0.5) -> dict[str, Any]:
        """Follow ``op_id`` to its end and return its final record (polls if streaming breaks)."""
        try:
            async with contextlib.aclosing(self.events(op_id)) as events:
                async for event in events:
                    if event.get("event") == "operation.done":
                        break
        except TransportError:
            pass  # the record below tells the outcome; poll it
        while True:
            record = await self.operation(op_id)
            if record.get("status") != "running":
                return record
            await asyncio.sleep(poll_s)


def _file_sha256(path: Path) -> bytes:
    with path.open("rb") as fh:
        return hashlib.file_digest(fh, "sha256").digest()
