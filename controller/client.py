"""The signing HTTP client of the agent API: the only code that signs requests.

Why this lives in ``controller/`` and not next to the server in ``agent/``: the agent never imports
the controller (the layering: controller imports agent, never the reverse), and the agent never *sends* API requests — it only verifies
them. Signing belongs to whoever holds a controller key: the ``cutover`` CLI, the rollout engine,
automation, and the end-to-end tests. The wire contract both sides share (the RFC 9421 profile) is
:mod:`agent.trust.httpsig`, which this module imports, and the bodies are
:mod:`agent.api_models`; docs/protocol.md describes it for third parties.

Rules this client follows:

* every request is signed with :func:`agent.trust.httpsig.sign_request`: ``@method @authority @path
  @query content-type content-digest``, a fresh 256-bit nonce, a short lifetime (60 s); the
  ``@authority`` is the agent's configured name (default: ``host[:port]`` of ``base_url``);
* the path and query are built percent-encoded once and sent exactly as signed (``encoded=True``);
* a bodiless request signs an empty ``Content-Type`` and the SHA-256 of the empty body; an upload
  hashes the file first, then streams it with that digest and an exact ``Content-Length``;
* an upload of :data:`EXPECT_CONTINUE_MIN_BYTES` or more also sends ``Expect: 100-continue``
  (not signed: the profile does not cover it): the body waits for the agent's ``100 Continue``, so a
  refusal (``401``, ``409``, ``413``) costs no body bytes and is raised as its registry class;
  a peer silent for :data:`controller.transport.CONTINUE_TIMEOUT_S` gets the body anyway;
* bytes move through a :class:`controller.transport.Transport` (default: aiohttp), which
  tests and the rollout engine may replace (``AgentClient(..., transport=...)``);
* an error answer is raised as the class the agent's error registry names (agent/errors.py:
  ``DowngradeError``, ``SignatureError``, ``AuthError`` with its reason, ``LockedError`` with the
  holder, ...), with the same code, exactly as a local caller would see it; a failed operation
  raises the same way from :meth:`OperationRecord.raise_for_error`. A host that cannot be reached
  is :class:`UnreachableError`, a broken exchange :class:`TransportError`;
* answers are parsed into the typed models of :mod:`agent.api_models`; an answer that does not
  fit them is a :class:`TransportError` (the peer is not a compatible agent).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import ssl
from collections.abc import AsyncGenerator, AsyncIterable
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar
from urllib.parse import quote, urlencode

from pydantic import BaseModel, ValidationError
from yarl import URL

from cutover.agent.api_models import (
    Accepted,
    AppDetail,
    AppsList,
    ErrorBody,
    Event,
    Health,
    JournalEntry,
    JournalPage,
    LeaseInfo,
    LeaseReleased,
    OperationRecord,
    OperationResult,
)
from cutover.agent.errors import CutoverError, TransportError
from cutover.agent.keys import PrivateKey
from cutover.controller.signing import (
    DEFAULT_LIFETIME_S,
    EMPTY_SHA256,
    default_authority,
    signed_headers,
)
from cutover.controller.transport import (
    AiohttpTransport,
    Body,
    SignedRequest,
    Transport,
    TransportResponse,
)
from cutover.controller.upload import (
    EXPECT_CONTINUE_MIN_BYTES,
    UPLOAD_ATTEMPTS,
    Progress,
    Resumed,
    upload_package,
)

__all__ = [
    "EMPTY_SHA256",
    "EXPECT_CONTINUE_MIN_BYTES",
    "AgentClient",
    "default_authority",
    "signed_headers",
]

_M = TypeVar("_M", bound=BaseModel)

MAX_EVENT_LINE_BYTES = 4 << 20
MAX_ERROR_BODY_BYTES = 64 * 1024
MAX_RESPONSE_BYTES = 64 << 20  # a journal page of 10,000 entries fits


def _seg(value: str) -> str:
    return quote(value, safe="")


async def _error_from(resp: TransportResponse, where: str) -> CutoverError:
    """The registry's error for an error answer (agent/errors.py), with the agent's code."""
    try:
        raw = await resp.aread(MAX_ERROR_BODY_BYTES)
        body = ErrorBody.model_validate_json(raw)
    except (TransportError, ValueError):  # not the agent's error shape: the status decides
        detail = f"HTTP {resp.status} {resp.reason}".rstrip()
        body = ErrorBody(error=f"http_{resp.status}", message=detail)
    return body.to_error(where=where, status=resp.status)


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
            by the hex SHA-256 of its DER form (``sha256:AB:CD...`` accepted). Both configure
            the default transport only.
        transport: what moves the bytes (default :class:`AiohttpTransport`); the client closes
            it on :meth:`close`.
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
        transport: Transport | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.key = key
        self.authority = authority or default_authority(self.base_url)
        self.timeout_s = timeout_s
        self.upload_timeout_s = upload_timeout_s
        self.lifetime_s = lifetime_s
        if transport is not None and (ssl_context is not None or fingerprint is not None):
            raise ValueError("ssl_context and fingerprint configure the default transport only")
        self.transport: Transport = transport or AiohttpTransport(
            ssl_context=ssl_context, fingerprint=fingerprint
        )

    async def __aenter__(self) -> AgentClient:
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def close(self) -> None:
        await self.transport.aclose()

    # ------------------------------------------------------------------ plumbing
    def _prepare(
        self,
        method: str,
        path: str,
        query: str,
        content_type: str,
        body_sha256: bytes,
        body: Body = None,
        *,
        timeout_s: float | None,
        connect_timeout_s: float | None = None,
        read_timeout_s: float | None = None,
        extra_headers: dict[str, str] | None = None,
    ) -> SignedRequest:
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
        return SignedRequest(
            method,
            url,
            {**headers, **(extra_headers or {})},
            body,
            timeout_s=timeout_s,
            connect_timeout_s=connect_timeout_s,
            read_timeout_s=read_timeout_s,
        )

    async def _send(self, request: SignedRequest, where: str) -> TransportResponse:
        """Send; raise the registry's error for an error answer (4xx/5xx)."""
        resp = await self.transport.send(request)
        if resp.status >= 400:
            try:
                raise await _error_from(resp, f"{self.base_url} {where}")
            finally:
                await resp.aclose()
        return resp

    async def request(
        self,
        method: str,
        path: str,
        *,
        query: str = "",
        content: bytes | AsyncIterable[bytes] | None = None,
        content_type: str = "",
        content_sha256: bytes | None = None,
        content_length: int | None = None,
    ) -> TransportResponse:
        """The low-level call every method goes through (and the way to reach an endpoint
        this client has no method for): sign, send, raise on an error answer.

        Args:
            method: the HTTP method.
            path: the percent-encoded path (``/v1/...``); query: the raw query, without ``?``.
            content: the body: bytes, or chunks (then ``content_sha256`` is required).
            content_type: the Content-Type signed and sent (``""`` without a body).
            content_sha256: the SHA-256 of the whole body (computed for bytes).
            content_length: sent as Content-Length (default: the length of bytes content).

        Returns:
            The answer (a 2xx or 3xx); read it (``aread``, ``stream``), then ``aclose`` it.

        Raises:
            UnreachableError, TransportError, or the registry's class of an error answer.
        """
        if isinstance(content, bytes) or content is None:
            data = content or b""
            digest = hashlib.sha256(data).digest()
            if content_sha256 is not None and content_sha256 != digest:
                raise ValueError("content_sha256 is not the SHA-256 of content")
            body: Body = data or None
        elif content_sha256 is None:
            raise ValueError("streamed content needs its content_sha256 (it is signed first)")
        else:
            digest, body = content_sha256, content
        extra = {} if content_length is None else {"Content-Length": str(content_length)}
        prepared = self._prepare(
            method,
            path,
            query,
            content_type,
            digest,
            body,
            timeout_s=self.timeout_s,
            extra_headers=extra,
        )
        return await self._send(prepared, f"{method} {path}")

    async def _request(
        self, method: str, path: str, *, query: str = "", json_body: dict[str, Any] | None = None
    ) -> TransportResponse:
        if json_body is None:
            return await self.request(method, path, query=query)
        data = json.dumps(json_body).encode()
        return await self.request(
            method, path, query=query, content=data, content_type="application/json"
        )

    async def _parse(self, resp: TransportResponse, model: type[_M], where: str) -> _M:
        try:
            raw = await resp.aread(MAX_RESPONSE_BYTES)
        finally:
            await resp.aclose()
        try:
            return model.model_validate_json(raw)
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in e['loc']) or 'body'}: {e['msg']}"
                for e in exc.errors()[:3]
            )
            raise TransportError(
                f"{self.base_url} {where}: the answer is not a {model.__name__} ({problems}); "
                "is this a compatible cutover-agent?"
            ) from exc

    async def _call(self, method: str, path: str, model: type[_M], **kw: Any) -> _M:
        resp = await self._request(method, path, **kw)
        return await self._parse(resp, model, f"{method} {path}")

    # ------------------------------------------------------------------ reads
    async def health(self) -> Health:
        """``GET /v1/health`` (signed anyway; the agent ignores the signature there)."""
        return await self._call("GET", "/v1/health", Health)

    async def apps(self) -> AppsList:
        """``GET /v1/apps``: the agent and its apps with current/previous versions."""
        return await self._call("GET", "/v1/apps", AppsList)

    async def app(self, name: str) -> AppDetail:
        """``GET /v1/apps/{app}``: the app's summary and its release records, newest first."""
        return await self._call("GET", f"/v1/apps/{_seg(name)}", AppDetail)

    async def journal(self, app: str, limit: int = 100) -> list[JournalEntry]:
        """The last ``limit`` journal entries of ``app``, oldest first."""
        page = await self._call(
            "GET", f"/v1/apps/{_seg(app)}/journal", JournalPage, query=urlencode({"limit": limit})
        )
        return page.entries

    async def operation(self, op_id: str) -> OperationRecord:
        """``GET /v1/operations/{id}``: the record (``raise_for_error()`` raises its error)."""
        return await self._call("GET", f"/v1/operations/{_seg(op_id)}", OperationRecord)

    # ------------------------------------------------------------------ operations
    async def upload(
        self,
        app: str,
        version: str,
        path: Path,
        progress: Progress | None = None,
        *,
        sha256: bytes | None = None,
        on_resume: Resumed | None = None,
        attempts: int = UPLOAD_ATTEMPTS,
    ) -> Accepted:
        """Stream a package file to the agent; returns the ``202`` (the operation's id).

        The arguments and the protocol (the signed digest, ``Expect: 100-continue`` from
        :data:`EXPECT_CONTINUE_MIN_BYTES` on, resuming an interrupted upload at most
        ``attempts`` PUTs in all) are :func:`controller.upload.upload_package`'s.

        Raises:
            UnreachableError, TransportError, or the registry's class of the agent's answer
            (AuthError, LockedError, NotFoundError, PayloadTooLargeError, ...).
        """
        return await upload_package(
            self,
            app,
            version,
            path,
            progress,
            sha256=sha256,
            on_resume=on_resume,
            attempts=attempts,
        )

    def prepare_upload(
        self, path: str, query: str, body_sha256: bytes, body: Body, headers: dict[str, str]
    ) -> SignedRequest:
        """A signed package ``PUT`` (controller/upload.py builds its body and headers)."""
        return self._prepare(
            "PUT",
            path,
            query,
            "application/octet-stream",
            body_sha256,
            body,
            timeout_s=self.upload_timeout_s,
            read_timeout_s=60.0,
            extra_headers=headers,
        )

    async def send(self, request: SignedRequest, where: str) -> TransportResponse:
        """Send a prepared request; raise the registry's error for an error answer."""
        return await self._send(request, where)

    async def parse(self, resp: TransportResponse, model: type[_M], where: str) -> _M:
        """Read and close an answer, parsed as ``model`` (else :class:`TransportError`)."""
        return await self._parse(resp, model, where)

    async def fetch(self, app: str, version: str, url: str) -> Accepted:
        """Ask the agent to pull the package from ``url`` (it verifies it like an upload)."""
        path = f"/v1/apps/{_seg(app)}/releases/{_seg(version)}/fetch"
        return await self._call("POST", path, Accepted, json_body={"url": url})

    async def activate(
        self, app: str, version: str, *, lease: str | None = None, run_once: bool = True
    ) -> Accepted:
        """``POST /v1/apps/{app}/activate`` (``lease``: the rollout's lease on the app;
        ``run_once`` False: this host skips the checkpoint and the ``once`` hooks)."""
        body: dict[str, Any] = {"version": version}
        if lease is not None:
            body["lease"] = lease
        if not run_once:
            body["run_once"] = False
        path = f"/v1/apps/{_seg(app)}/activate"
        return await self._call("POST", path, Accepted, json_body=body)

    async def rollback(
        self,
        app: str,
        to: str | None = None,
        restore: bool = False,
        *,
        lease: str | None = None,
        accept_db_risk: bool = False,  # cross an ``unsafe`` database rollback (journaled)
    ) -> Accepted:
        body: dict[str, Any] = {"restore": restore, "accept_db_risk": accept_db_risk or None}
        body.update(to=to, lease=lease)
        body = {k: v for k, v in body.items() if v is not None}
        return await self._call("POST", f"/v1/apps/{_seg(app)}/rollback", Accepted, json_body=body)

    async def lease(
        self,
        app: str,
        rollout: str,
        owner: str,
        ttl_s: float,
        *,
        steal: bool = False,
        renew: str | None = None,
    ) -> LeaseInfo:
        """``POST /v1/apps/{app}/lease``: take, renew (``renew`` = its id) or ``steal`` the lease.

        Raises:
            LockedError: another rollout holds it (``holder`` names it), or it was lost.
        """
        body: dict[str, Any] = {"rollout": rollout, "owner": owner, "ttl_s": ttl_s}
        if steal:
            body["steal"] = True
        if renew is not None:
            body["lease"] = renew
        return await self._call("POST", f"/v1/apps/{_seg(app)}/lease", LeaseInfo, json_body=body)

    async def release_lease(self, app: str, lease_id: str) -> LeaseReleased:
        """``DELETE /v1/apps/{app}/lease/{id}`` (idempotent)."""
        path = f"/v1/apps/{_seg(app)}/lease/{_seg(lease_id)}"
        return await self._call("DELETE", path, LeaseReleased)

    async def delete(self, app: str, version: str) -> Accepted:
        path = f"/v1/apps/{_seg(app)}/releases/{_seg(version)}"
        return await self._call("DELETE", path, Accepted)

    async def pin(self, app: str, version: str) -> OperationResult:
        path = f"/v1/apps/{_seg(app)}/releases/{_seg(version)}/pin"
        return await self._call("POST", path, OperationResult)

    async def unpin(self, app: str, version: str) -> OperationResult:
        path = f"/v1/apps/{_seg(app)}/releases/{_seg(version)}/unpin"
        return await self._call("POST", path, OperationResult)

    async def clear_bad(self, app: str, version: str) -> OperationResult:
        """Lift a release's ``bad`` mark (journaled on the agent with this key as the actor)."""
        path = f"/v1/apps/{_seg(app)}/releases/{_seg(version)}/clear-bad"
        return await self._call("POST", path, OperationResult)

    # ------------------------------------------------------------------ following
    async def events(self, op_id: str) -> AsyncGenerator[Event, None]:
        """The operation's events: every past one, then live ones until ``operation.done``."""
        path = f"/v1/operations/{_seg(op_id)}/events"
        request = self._prepare(
            "GET", path, "", "", EMPTY_SHA256, timeout_s=None, connect_timeout_s=self.timeout_s
        )
        resp = await self._send(request, f"GET {path}")
        try:
            buf = b""
            async for chunk in resp.stream:
                buf += chunk
                if len(buf) > MAX_EVENT_LINE_BYTES and b"\n" not in buf:
                    raise TransportError(
                        f"{self.base_url}: event line over {MAX_EVENT_LINE_BYTES} bytes"
                    )
                *lines, buf = buf.split(b"\n")
                for line in lines:
                    if line.strip():
                        yield Event.model_validate_json(line)
        except ValidationError as exc:
            raise TransportError(f"{self.base_url}: events of {op_id}: {exc}") from exc
        finally:
            await resp.aclose()

    async def wait(self, op_id: str, *, poll_s: float = 0.5) -> OperationRecord:
        """Follow ``op_id`` to its end and return its final record (polls if streaming breaks).

        The record of a failed operation is returned, not raised: call
        :meth:`OperationRecord.raise_for_error` to raise its error as its registry class.
        """
        try:
            async with contextlib.aclosing(self.events(op_id)) as events:
                async for event in events:
                    if event.event == "operation.done":
                        break
        except TransportError:
            pass  # the record below tells the outcome; poll it
        while True:
            record = await self.operation(op_id)
            if not record.running:
                return record
            await asyncio.sleep(poll_s)
