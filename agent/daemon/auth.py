"""Request authentication, bounded body reading and error mapping for the agent API.

Security rules enforced here, in this order, for every route except ``GET /v1/health`` and
``GET /metrics``:

1. **Signature before anything.** :func:`agent.httpsig.verify_request` runs on the method, the
   raw path and query as received, and as ``@authority`` the agent's *configured* name (never the
   Host header). The keys are the controller keys of the config in force *at this request*
   (``ConfigHolder.current``): a key removed by a reload fails from the next request on. Release
   keys are never in that mapping, so a release key is an ``unknown_key``.
2. **Once.** The verified nonce is recorded durably (:class:`agent.nonces.NonceStore`) before
   anything acts on the request; a second use is ``replayed``, also after a restart.
3. **Role.** ``read`` keys may only ``GET``; ``deploy`` keys may do everything. Otherwise
   ``forbidden_role``.
4. **Shape before body.** :func:`check_request_shape`: no ``Content-Encoding`` but ``identity``
   (``415``), no body on ``GET``/``HEAD``/``DELETE`` (``400``), no ``Expect`` but
   ``100-continue`` (``417``). ``100 Continue`` is sent by :func:`stream_body`, i.e. only once
   steps 1-3 passed (the routes' ``expect_handler`` defers it).
5. **Body after signature, digest before use.** No body byte is read before steps 1-3 passed. A
   body is read in chunks with an idle timeout and an overall deadline (``408 body_timeout``) and a
   size cap checked against ``Content-Length`` up front and counted while reading
   (``413 payload_too_large``), hashed while read, and compared with the signed
   ``Content-Digest`` (``401 digest_mismatch``) before any handler sees it. Small bodies (JSON,
   at most :data:`MAX_JSON_BYTES`) are read here; the package upload route streams its body to a
   file with :func:`stream_body` and deletes the file on any failure.
6. **Rejections change nothing.** Every refusal answers ``{"error": code, "message": ...}``
   before any handler runs (nonce bookkeeping aside, which is the agent's, not an app's, state),
   and closes the connection when a body was left unread.

Each request also gets a request id, bound with the keyid into structlog's contextvars, and one
canonical ``request`` log line (method, path, route, status, duration_ms, keyid: also for a
``replayed`` or ``forbidden_role`` refusal, whose signature did verify).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import structlog
from aiohttp import HttpVersion11, web

from cutover.agent.daemon.connections import GUARD_KEY
from cutover.agent.daemon.operations import error_body
from cutover.agent.errors import (
    AuthError,
    BodyTimeoutError,
    ConfigError,
    CutoverError,
    ExpectationFailedError,
    InternalError,
    MethodNotAllowedError,
    NotFoundError,
    PayloadTooLargeError,
    RequestError,
    UnsupportedMediaTypeError,
    kind_of,
)
from cutover.agent.trust import httpsig

if TYPE_CHECKING:
    from cutover.agent.daemon.context import AgentContext

__all__ = [
    "CTX_KEY",
    "JSON_BODY_CAPS",
    "MAX_JSON_BYTES",
    "PUBLIC_ROUTES",
    "STREAMING_ROUTES",
    "UNMATCHED_ROUTE",
    "Caller",
    "auth_middleware",
    "check_request_shape",
    "error_response",
    "send_continue",
    "status_for",
    "stream_body",
]

log = structlog.get_logger(__name__)

CTX_KEY: web.AppKey[AgentContext] = web.AppKey("cutover_ctx")
MAX_JSON_BYTES = 64 * 1024
# Routes whose JSON body may be larger than MAX_JSON_BYTES, with their own cap (docs/protocol.md):
# ``missing`` carries up to MAX_DIGESTS SHA-256 digests (agent/daemon/content_routes.py).
JSON_BODY_CAPS = {"missing": 16 * 1024 * 1024}
PUBLIC_ROUTES = frozenset({"health", "metrics"})
UNMATCHED_ROUTE = "unmatched"  # the catch-all route's name (agent/daemon/routes.py)
STREAMING_ROUTES = frozenset({"upload"})


@dataclass(frozen=True)
class Caller:
    """The authenticated controller key behind a request."""

    keyid: str
    name: str
    role: str
    content_digest: bytes

    @property
    def actor(self) -> str:
        """How the journal names the caller: ``api:NAME/KEYID16``."""
        return f"api:{self.name}/{self.keyid[:16]}"


def status_for(exc: CutoverError) -> int:
    """The HTTP status of an error: its class's entry in the registry (agent/errors.py)."""
    return kind_of(type(exc)).http_status


def error_response(exc: CutoverError) -> web.Response:
    """The error as the API answers it: status and body both from the registry."""
    return web.json_response(error_body(exc), status=status_for(exc))


def _too_large(limit: int) -> PayloadTooLargeError:
    return PayloadTooLargeError(
        f"request body exceeds the limit of {limit} bytes (agent.max_upload_bytes for packages)"
    )


async def stream_body(
    request: web.Request,
    *,
    max_bytes: int,
    idle_timeout_s: float,
    total_timeout_s: float,
    write: Callable[[list[bytes]], Awaitable[None]],
    batch_bytes: int = 1 << 20,
    idle_setting: str = "agent.upload_idle_timeout_s",
    total_setting: str = "agent.upload_timeout_s",
    flush_on_error: bool = False,
) -> tuple[int, bytes]:
    """Read the request body in bounded chunks, hand batches to ``write``, hash everything.

    Only called once the request is authenticated: a client that sent ``Expect: 100-continue``
    is told ``100 Continue`` here, so a refused request never costs it the body's bytes.

    Args:
        request: the request (its body not read yet).
        max_bytes: the largest body accepted.
        idle_timeout_s: the longest wait for the next chunk.
        total_timeout_s: the longest the whole body may take.
        write: awaited with batches of about ``batch_bytes`` (and the rest at the end): the
            chunks as received, in order (never joined: each byte is copied once less).
        idle_setting, total_setting: the config settings behind the two timeouts, named in the
            ``408`` message of the one that was hit.
        flush_on_error: when the body breaks off (or is refused), hand the bytes read so far to
            ``write`` before raising (a resumable upload keeps them: agent/daemon/uploads.py).

    Returns:
        The body length and its SHA-256.

    Raises:
        PayloadTooLargeError, BodyTimeoutError: the body is too large or too slow.
        TransportError-like ``aiohttp`` errors propagate if the client disconnects mid-body.
    """
    declared = request.content_length
    if declared is not None and declared > max_bytes:
        raise _too_large(max_bytes)
    await send_continue(request)
    digest = hashlib.sha256()
    size = 0
    # the chunks of the batch being gathered, handed over as they are (no joined copy)
    buf: list[bytes] = []
    buffered = 0
    deadline = time.monotonic() + total_timeout_s
    total_hit = BodyTimeoutError(
        f"request body took longer than {total_timeout_s:g} s ({total_setting})"
    )
    try:
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise total_hit
            try:
                # a timeout context, not wait_for: no task per chunk
                async with asyncio.timeout(min(idle_timeout_s, remaining)):
                    chunk = await request.content.readany()
            except TimeoutError:
                if remaining <= idle_timeout_s:
                    raise total_hit from None
                raise BodyTimeoutError(
                    f"request body stalled: no data for {idle_timeout_s:g} s ({idle_setting})"
                ) from None
            if not chunk:
                break
            size += len(chunk)
            if size > max_bytes:
                raise _too_large(max_bytes)
            buf.append(chunk)
            buffered += len(chunk)
            if buffered >= batch_bytes:
                batch, buf = buf, []
                await _hash_and_write(digest, batch, buffered, write)
                buffered = 0
    except BaseException:
        if flush_on_error and buf:
            await asyncio.shield(write(buf))
        raise
    if buf:
        await _hash_and_write(digest, buf, buffered, write)
    return size, digest.digest()


async def send_continue(request: web.Request) -> None:
    """Answer ``Expect: 100-continue`` (once, HTTP/1.1 only): the body may come now."""
    if (
        request.version == HttpVersion11
        and request.headers.get("Expect", "").strip().lower() == "100-continue"
        and not request.get("continued")
    ):
        request["continued"] = True
        await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        request.writer.output_size = 0  # the real response has not started


async def _hash_and_write(
    digest: Any, chunks: list[bytes], size: int, write: Callable[[list[bytes]], Awaitable[None]]
) -> None:
    if size >= 256 * 1024:
        await asyncio.to_thread(_update, digest, chunks)  # hashlib releases the GIL on these
    else:
        _update(digest, chunks)
    await write(chunks)


def _update(digest: Any, chunks: list[bytes]) -> None:
    for chunk in chunks:
        digest.update(chunk)


def check_digest(caller: Caller, actual: bytes) -> None:
    """Raise ``digest_mismatch`` unless the body's SHA-256 is the signed Content-Digest."""
    if not hmac.compare_digest(actual, caller.content_digest):
        raise AuthError(
            "the body does not match the signed Content-Digest (altered in transit?)",
            code="digest_mismatch",
        )


def _route_name(request: web.Request) -> str:
    info = request.match_info
    return info.route.name or "" if info.http_exception is None else ""


def _route_label(request: web.Request, authenticated: bool) -> str:
    """The metrics label: the route template, but ``unmatched`` for every unauthenticated
    request to a non-public path, so the unauthenticated /metrics cannot reveal the route table."""
    resource = request.match_info.route.resource
    name = _route_name(request)
    if resource is None or name == UNMATCHED_ROUTE:
        return "unmatched"
    if not authenticated and name not in PUBLIC_ROUTES:
        return "unmatched"
    return resource.canonical


def check_request_shape(request: web.Request) -> None:
    """What every request must satisfy before its body is read (docs/protocol.md, Transport).

    Raises:
        RequestError: a ``Content-Encoding`` other than ``identity`` (``415``: the signed digest
            is over the bytes on the wire, and decompressing first would make it cover other
            bytes, RFC 9530); a body on ``GET``/``HEAD``/``DELETE`` (``400``); an ``Expect``
            other than ``100-continue`` (``417``).
    """
    encodings = [
        token.strip().lower()
        for value in request.headers.getall("Content-Encoding", [])
        for token in value.split(",")
    ]
    if any(token not in ("", "identity") for token in encodings):
        raise UnsupportedMediaTypeError(
            "Content-Encoding is not accepted: send the body unencoded (identity); the signed "
            "Content-Digest covers the bytes as sent"
        )
    if request.method in ("GET", "HEAD", "DELETE") and (
        request.body_exists or request.content_length
    ):
        raise RequestError(f"{request.method} takes no body; send none (Content-Length: 0)")
    expect = request.headers.get("Expect")
    if expect is not None and expect.strip().lower() != "100-continue":
        raise ExpectationFailedError(f"Expect: {expect[:64]!r} is not supported; only 100-continue")


async def _authenticate(ctx: AgentContext, request: web.Request) -> Caller:
    cfg = ctx.holder.current
    path, _, query = request.raw_path.partition("?")
    target = httpsig.RequestTarget(
        method=request.method, authority=cfg.agent.name, path=path, query=query
    )
    now = time.time()
    keys = {kid: lk.key for kid, lk in cfg.controller_keys.items()}
    try:
        verified = httpsig.verify_request(
            target,
            request.headers,
            keys=keys,
            now=now,
            max_lifetime_s=cfg.agent.max_request_lifetime_s,
            max_skew_s=cfg.agent.clock_skew_s,
        )
    except ValueError as exc:  # the agent's name is not a valid authority: our config is wrong
        raise ConfigError(
            f"agent.name {cfg.agent.name!r} is unusable as @authority ({exc}); fix the config"
        ) from exc
    request["keyid"] = verified.keyid  # the audit trail names it even if refused below
    try:
        await asyncio.to_thread(
            ctx.nonces.use, verified.nonce, verified.expires, now, verified.created
        )
    except ValueError as exc:
        # NonceStore bounds ``expires`` by the profile's default 30 s skew; a config allowing
        # more (a skew allowance beyond httpsig.MAX_SKEW_S) must still refuse, never fail with a 500.
        raise AuthError(
            f"signature expires too far ahead for the nonce store ({exc}); sync the clocks",
            code="not_yet_valid",
        ) from exc
    key = cfg.controller_keys[verified.keyid]
    if key.role != "deploy" and request.method != "GET":
        raise AuthError(
            f"key {key.name!r} has role {key.role!r}, which may only read (GET)",
            code="forbidden_role",
        )
    return Caller(verified.keyid, key.name, key.role, verified.content_digest)


async def _read_small_body(
    ctx: AgentContext, request: web.Request, caller: Caller, name: str | None
) -> bytes:
    parts: list[bytes] = []

    async def keep(chunks: list[bytes]) -> None:
        parts.extend(chunks)

    _, actual = await stream_body(
        request,
        max_bytes=JSON_BODY_CAPS.get(name or "", MAX_JSON_BYTES),
        idle_timeout_s=ctx.holder.current.agent.upload_idle_timeout_s,
        total_timeout_s=ctx.holder.current.agent.json_body_timeout_s,
        write=keep,
        total_setting="agent.json_body_timeout_s",
    )
    check_digest(caller, actual)
    body = b"".join(parts)
    if not body and request.headers.get("Content-Type", "").strip():
        raise RequestError(
            "a request without a body must send an empty Content-Type (docs/protocol.md)"
        )
    return body


def _http_error(exc: web.HTTPException) -> CutoverError:
    if exc.status == 404:
        return NotFoundError("no such endpoint; see docs/protocol.md")
    if exc.status == 405:
        return MethodNotAllowedError(f"method {exc.reason} not allowed here")
    return RequestError(exc.reason or "bad request")


@web.middleware
async def auth_middleware(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Authenticate, read the body, run the handler, map errors, log one line per request."""
    ctx = request.app[CTX_KEY]
    guard = request.app.get(GUARD_KEY)
    if guard is not None:
        guard.request_started(request)
    started = time.monotonic()
    request_id = secrets.token_hex(8)
    structlog.contextvars.clear_contextvars()
    structlog.contextvars.bind_contextvars(request_id=request_id)
    caller: Caller | None = None
    error: CutoverError | None = None
    response: web.StreamResponse
    try:
        name = _route_name(request)
        if name not in PUBLIC_ROUTES:
            caller = await _authenticate(ctx, request)
            structlog.contextvars.bind_contextvars(keyid=caller.keyid[:16], key=caller.name)
            request["caller"] = caller
            if guard is not None:
                guard.authenticated(request)
        check_request_shape(request)
        if caller is not None and name not in STREAMING_ROUTES:
            request["body"] = await _read_small_body(ctx, request, caller, name)
        response = await handler(request)
    except web.HTTPException as exc:
        error = _http_error(exc)
        response = error_response(error)
    except CutoverError as exc:
        error = exc
        response = error_response(exc)
    except (ConnectionError, asyncio.IncompleteReadError) as exc:
        error = RequestError(f"client went away: {exc}", code="client_disconnected")
        response = error_response(error)
    except Exception as exc:  # a bug: answer in the API's shape, keep the traceback in the log
        log.exception("request_crashed", method=request.method, path=request.raw_path[:256])
        error = InternalError(f"internal error ({type(exc).__name__}); see the agent log")
        response = error_response(error)
    if error is not None:
        if isinstance(error, AuthError):
            ctx.metrics.auth_failure(error.code)
        if not request.content.at_eof():
            response.force_close()  # never read an unauthenticated or refused body to the end
    duration = time.monotonic() - started
    label = _route_label(request, caller is not None)
    ctx.metrics.request(request.method, label, response.status, duration)
    keyid: str | None = caller.keyid if caller else request.get("keyid")
    if keyid is None and isinstance(error, AuthError):  # refused before the key was known
        keyid = httpsig.claimed_keyid(request.headers)
    level = "info" if response.status < 400 else "warning" if response.status < 500 else "error"
    getattr(log, level)(
        "request",
        method=request.method,
        path=request.raw_path[:256],
        route=label if caller is not None else _route_label(request, True),
        status=response.status,
        duration_ms=round(duration * 1000, 2),
        keyid=keyid[:16] if keyid else None,
        error=error.code if error else None,
        message=error.message if error and response.status >= 500 else None,
        remote=request.remote,
    )
    if guard is not None:
        guard.request_finished(request)
    return response
