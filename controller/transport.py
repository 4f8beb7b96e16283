"""The transport seam of the agent client: send one signed request, get status, headers, body.

:class:`controller.client.AgentClient` signs requests and interprets answers; a
:class:`Transport` only moves bytes (like httpx's ``Client(transport=...)``). The default,
:class:`AiohttpTransport`, speaks HTTP/1.1 (TLS, certificate pinning) with aiohttp. Tests and
the rollout engine inject their own (a fake remote peer, a recording or fault-injecting wrapper)
instead of patching.

The contract every transport keeps:

* the request is sent exactly as given: ``url`` is already percent-encoded and signed, headers
  are not added to or rewritten (beyond what HTTP/1.1 framing needs), redirects are not followed;
* a failure to reach the peer at all (refused, no route, DNS, TLS, certificate pin, connect
  timeout) raises :class:`agent.errors.UnreachableError`; any other network failure (the
  connection broke, a read timed out) raises :class:`agent.errors.TransportError`. No exception
  of the HTTP library crosses this module;
* any HTTP status is a :class:`TransportResponse`, errors included: the client maps them through
  the error registry. The caller closes the response (``aclose``) when done with its body;
* a request whose headers carry ``Expect: 100-continue`` (the client sends it on large uploads)
  holds its body until the peer answers ``100 Continue``. A final answer instead (``401``,
  ``409``, ``413``, ...) is returned and the body is never sent: not one byte of it, and the
  connection is closed rather than reused. A peer that says nothing for
  ``continue_timeout_s`` after the headers (an old server or proxy that ignores ``Expect``) gets
  the body anyway, as curl does (``--expect100-timeout``, also 1 s by default; RFC 9110 §10.1.1).
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Mapping
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Protocol

import aiohttp
from yarl import URL

from cutover.agent.errors import TransportError, UnreachableError

__all__ = [
    "CONTINUE_TIMEOUT_S",
    "AiohttpTransport",
    "SignedRequest",
    "Transport",
    "TransportResponse",
    "parse_fingerprint",
]

Body = bytes | AsyncIterable[bytes] | None

CONTINUE_TIMEOUT_S = 1.0
"""How long an ``Expect: 100-continue`` body waits, after the headers, for a silent peer."""


@dataclass(frozen=True)
class SignedRequest:
    """One request, signed and ready: the transport sends it as is.

    Args:
        method: the HTTP method.
        url: the absolute URL, already percent-encoded (``URL(..., encoded=True)``).
        headers: every header to send (signature headers included).
        body: ``None``, the bytes, or an async iterable of chunks (uploads).
        timeout_s: the limit for the whole exchange (``None``: unlimited, for event streams).
        connect_timeout_s: the limit for connecting.
        read_timeout_s: the longest wait for the next chunk of the answer (``None``: unlimited).
        continue_timeout_s: with an ``Expect: 100-continue`` header, the longest wait after the
            headers for the peer's ``100 Continue`` (or a final answer) before the body is sent
            anyway.
    """

    method: str
    url: URL
    headers: Mapping[str, str]
    body: Body = None
    timeout_s: float | None = 30.0
    connect_timeout_s: float | None = None
    read_timeout_s: float | None = None
    continue_timeout_s: float = CONTINUE_TIMEOUT_S


async def _nothing() -> None:
    return None


@dataclass
class TransportResponse:
    """An answer: status, headers and the body as a stream of chunks.

    Args:
        status: the HTTP status.
        headers: the response headers (lower-case names).
        stream: the body, in chunks; reading it may raise :class:`TransportError`.
        reason: the status line's reason phrase.
        close: releases the connection (called by :meth:`aclose`).
    """

    status: int
    headers: Mapping[str, str]
    stream: AsyncIterator[bytes]
    reason: str = ""
    close: Callable[[], Awaitable[None]] = field(default=_nothing)

    async def aread(self, max_bytes: int) -> bytes:
        """The body, at most ``max_bytes`` (longer bodies raise :class:`TransportError`)."""
        buf = bytearray()
        async for chunk in self.stream:
            buf += chunk
            if len(buf) > max_bytes:
                raise TransportError(f"response body over {max_bytes} bytes")
        return bytes(buf)

    async def aclose(self) -> None:
        await self.close()


class Transport(Protocol):
    """Sends signed requests to one agent (see the module docstring for the contract)."""

    async def send(self, request: SignedRequest) -> TransportResponse:
        """Send ``request``; return the answer, whatever its status.

        Raises:
            UnreachableError: the peer could not be reached at all.
            TransportError: the exchange failed after connecting.
        """
        ...

    async def aclose(self) -> None:
        """Release connections (idempotent)."""
        ...


def parse_fingerprint(value: str) -> bytes:
    """The 32 bytes of a certificate pin: hex SHA-256 of the DER, ``sha256:AB:CD...`` accepted.

    Raises:
        ValueError: not 32 bytes of hex.
    """
    hexdigits = value.lower().removeprefix("sha256:").replace(":", "")
    try:
        raw = bytes.fromhex(hexdigits)
    except ValueError as exc:
        raise ValueError(f"TLS fingerprint {value!r} is not hex") from exc
    if len(raw) != 32:
        raise ValueError("TLS fingerprint must be the SHA-256 of the certificate (32 bytes)")
    return raw


# Failures before any byte of the answer: the peer was never reached.
_UNREACHABLE = (
    aiohttp.ClientConnectorError,
    aiohttp.ServerFingerprintMismatch,
    aiohttp.ConnectionTimeoutError,
    aiohttp.InvalidURL,
)
_FAILED = (aiohttp.ClientError, OSError, TimeoutError)


def _what(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__


# The continue timeout of the request being sent: aiohttp builds its ClientRequest inside
# ClientSession.request, in the caller's task, so a context variable reaches it per request.
_continue_timeout_s: ContextVar[float] = ContextVar("continue_timeout_s")


class _ContinueRequest(aiohttp.ClientRequest):
    """aiohttp's request, plus the deadline its ``Expect: 100-continue`` lacks.

    aiohttp already does the rest (aiohttp/client_reqrep.py): with the header it sends the
    headers alone and its body writer awaits a future that only a ``1xx`` answer resolves; a
    final answer that comes first is returned, and releasing it cancels the writer and closes
    the connection, so the body is never sent. But a peer that never answers ``100`` would hold
    the upload until the total timeout (an hour). Here, once the headers are on their way, a
    timer resolves that future after ``continue_timeout_s``, unless an answer came first.
    """

    async def send(self, conn: aiohttp.connector.Connection) -> aiohttp.ClientResponse:
        resp = await super().send(conn)
        # aiohttp's private waiter, read defensively: were it renamed, no timer is armed and
        # aiohttp's own behaviour (wait for the 100) remains; the silent-peer tests of
        # tests/controller/test_expect_continue.py would then fail.
        waiter: asyncio.Future[bool] | None = getattr(self, "_continue", None)
        if waiter is not None and not waiter.done():

            def send_body_anyway() -> None:
                # ``version`` is set when the final status line has been read (a 1xx never
                # sets it): once a final answer arrived, the body stays unsent.
                if not waiter.done() and resp.version is None:
                    waiter.set_result(True)

            # A closure, not call_later(f, resp): asyncio's debug mode formats a handle's
            # arguments, and repr() of a response not yet started caches its headers as None.
            timer = self.loop.call_later(
                _continue_timeout_s.get(CONTINUE_TIMEOUT_S), send_body_anyway
            )
            waiter.add_done_callback(lambda _: timer.cancel())
        return resp


class AiohttpTransport:
    """The default transport: aiohttp, one connection pool, TLS or a pinned certificate.

    Args:
        ssl_context: a custom TLS context (CA bundle).
        fingerprint: pin the agent's certificate by the hex SHA-256 of its DER form.
    """

    def __init__(
        self, *, ssl_context: ssl.SSLContext | None = None, fingerprint: str | None = None
    ) -> None:
        self._ssl: ssl.SSLContext | aiohttp.Fingerprint | bool = True
        if fingerprint is not None:
            self._ssl = aiohttp.Fingerprint(parse_fingerprint(fingerprint))
        elif ssl_context is not None:
            self._ssl = ssl_context
        self._session: aiohttp.ClientSession | None = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                auto_decompress=False, trust_env=False, request_class=_ContinueRequest
            )
        return self._session

    async def send(self, request: SignedRequest) -> TransportResponse:
        where = f"{request.method} {request.url.with_query(None)}"
        token = _continue_timeout_s.set(request.continue_timeout_s)
        try:
            resp = await self._client().request(
                request.method,
                request.url,
                data=request.body,
                headers=dict(request.headers),
                timeout=aiohttp.ClientTimeout(
                    total=request.timeout_s,
                    sock_connect=request.connect_timeout_s,
                    sock_read=request.read_timeout_s,
                ),
                ssl=self._ssl,
                allow_redirects=False,
            )
        except _UNREACHABLE as exc:
            raise UnreachableError(f"{where}: cannot reach the agent: {_what(exc)}") from exc
        except _FAILED as exc:
            raise TransportError(f"{where}: {_what(exc)}") from exc
        finally:
            _continue_timeout_s.reset(token)

        async def chunks() -> AsyncIterator[bytes]:
            try:
                async for chunk in resp.content.iter_any():
                    yield chunk
            except _FAILED as exc:
                raise TransportError(f"{where}: reading the answer: {_what(exc)}") from exc

        async def close() -> None:
            resp.release()

        return TransportResponse(
            status=resp.status,
            headers={k.lower(): v for k, v in resp.headers.items()},
            stream=chunks(),
            reason=resp.reason or "",
            close=close,
        )

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
