"""Connection limits in front of aiohttp: a protocol wrapper around its ``RequestHandler``.

aiohttp has no header-read timeout, no body-progress timeout and no connection caps, and its idle
timeout starts only once a whole request was read. Each accepted socket is therefore wrapped in a
:class:`GuardedProtocol` that forwards every protocol callback to aiohttp's handler unchanged and
keeps, per connection, the phase (``fresh``, ``active``, ``idle``), the peer address and the time
of the last byte received. One :class:`ConnectionGuard` per server enforces:

* **header-read timeout** (``agent.header_timeout_s``): a connection that has not delivered a
  complete request head this long after it opened, or after the first byte of its next request,
  is closed;
* **idle keep-alive timeout** (``agent.keepalive_timeout_s``): a connection with no request in
  flight and no byte received this long after its last response is closed;
* **body-progress timeout** (``agent.body_timeout_s``): a request whose body is still incomplete,
  whose socket is being read, and that received no byte this long, is closed (the handler's own
  ``upload_idle_timeout_s`` normally answers ``408`` first; this is the backstop for every route);
* **caps**: at most ``agent.max_connections`` connections (clamped below the process's file
  limit at start), and at most ``agent.max_unauthenticated_per_peer`` connections per peer address
  (an IPv6 peer counts by its /64) that have not yet carried a fully authenticated request. A new connection over the per-peer cap
  is closed at once; at the total cap the oldest unauthenticated connection without a request in
  flight is evicted to make room, so a fresh signed request from the controller is still served
  while hostile sockets fill the cap;
* **bounded logs**: accept errors (``EMFILE``) are logged without a traceback at most once per
  :data:`LOG_INTERVAL_S`; closes and refusals are counted in metrics and summarised in one
  ``connections_closed`` line per interval.

Why a wrapper and not our own HTTP server: the wrapper is ~300 lines that never parse HTTP; the
request parser, keep-alive, pipelining and TLS stay aiohttp's, already fuzzed and maintained. It
only needs two public-ish aiohttp seams (the ``RequestHandler`` constructor and ``handle_error``).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import resource
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import structlog
from aiohttp import web
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_server import Server as AiohttpServer

from cutover.agent.daemon.metrics import Metrics
from cutover.agent.daemon.operations import error_body
from cutover.agent.errors import CutoverError, InternalError, RequestError, kind_of

__all__ = [
    "GUARD_KEY",
    "LOG_INTERVAL_S",
    "SERVER_HEADER",
    "ConnectionGuard",
    "GuardedProtocol",
    "Limits",
    "effective_max_connections",
    "peer_key",
]

log = structlog.get_logger(__name__)

LOG_INTERVAL_S = 10.0
SERVER_HEADER = "cutover-agent"  # no version banner
FD_RESERVE = 256  # files, pipes and sockets the agent needs besides client connections
_ACCEPT_ERROR = "socket.accept() out of system resource"

GUARD_KEY: web.AppKey[ConnectionGuard] = web.AppKey("cutover_connection_guard")


@dataclass(frozen=True)
class Limits:
    """The connection limits (``[agent]`` settings, docs/agent.md)."""

    header_timeout_s: float
    keepalive_timeout_s: float
    body_timeout_s: float
    max_connections: int
    max_unauthenticated_per_peer: int


def effective_max_connections(configured: int) -> int:
    """``configured``, lowered so that connections leave :data:`FD_RESERVE` files free."""
    try:
        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    except (OSError, ValueError):  # pragma: no cover - a seccomp filter refusing getrlimit
        return configured
    if soft == resource.RLIM_INFINITY:
        return configured
    return max(16, min(configured, soft - FD_RESERVE))


def peer_key(peername: object) -> str:
    """What the per-peer cap counts by: the IPv4 address, or the IPv6 /64 (one host's share)."""
    if not isinstance(peername, tuple) or not peername:
        return "?"
    try:
        ip = ipaddress.ip_address(str(peername[0]))
    except ValueError:
        return str(peername[0])
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.ip_network(f"{ip}/64", strict=False))
    return str(ip)


class _JsonErrorHandler(RequestHandler):
    """aiohttp's handler with one hook replaced: malformed HTTP gets our JSON error.

    aiohttp answers a request it cannot parse with a text body that quotes the offending bytes and
    logs it with a traceback; ours answers ``{"error": "bad_request", ...}`` without echoing
    anything, counts it and logs one line (rate limited) without a traceback.
    """

    guard: ConnectionGuard | None = None

    def handle_error(
        self,
        request: Any,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if request.writer.output_size > 0:
            raise ConnectionError("response already started; cannot send an error")
        if self.guard is not None:
            self.guard.malformed(status, exc, request.remote)
        error: CutoverError = (
            RequestError("malformed HTTP request; see docs/protocol.md (Transport)")
            if status < 500
            else InternalError("internal error; see the agent log")
        )
        resp = web.json_response(
            error_body(error),
            status=kind_of(type(error)).http_status,
            headers={"Server": SERVER_HEADER},
        )
        resp.force_close()
        return resp


class GuardedProtocol(asyncio.Protocol):
    """One client connection: forwards to aiohttp's handler, tracks what the guard needs."""

    def __init__(self, guard: ConnectionGuard, inner: RequestHandler) -> None:
        self.guard = guard
        self.inner = inner
        self.transport: asyncio.Transport | None = None
        self.peer = "?"
        self.admitted = False
        self.authenticated = False
        self.phase = "fresh"  # fresh -> active -> idle -> active ...
        self.request: web.Request | None = None
        now = time.monotonic()
        self.opened_at = now
        self.phase_since = now
        self.last_rx = now
        self.first_byte_at: float | None = None  # first byte of the next request (fresh/idle)
        self.unsent = 0  # response bytes still buffered at the last sweep

    # ------------------------------------------------------------------ asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if not isinstance(transport, asyncio.Transport):  # pragma: no cover - TCP/TLS only
            raise TypeError(f"unexpected transport {transport!r}")
        self.transport = transport
        self.peer = peer_key(transport.get_extra_info("peername"))
        if not self.guard.admit(self):
            transport.abort()
            return
        self.admitted = True
        self.inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        now = time.monotonic()
        self.last_rx = now
        if self.phase != "active" and self.first_byte_at is None:
            self.first_byte_at = now
        self.inner.data_received(data)

    def eof_received(self) -> None:
        if self.admitted:
            self.inner.eof_received()  # aiohttp ignores a half-close; the transport closes

    def connection_lost(self, exc: BaseException | None) -> None:
        self.guard.forget(self)
        if self.admitted:
            self.inner.connection_lost(exc)

    def pause_writing(self) -> None:
        self.inner.pause_writing()

    def resume_writing(self) -> None:
        self.inner.resume_writing()

    # ------------------------------------------------------------------ guard side
    def deadline_reason(self, now: float, limits: Limits) -> str | None:
        """Why this connection must close now, or None."""
        if self.phase == "active":
            req = self.request
            if (
                req is not None
                and not req.content.is_eof()
                and self.transport is not None
                and self.transport.is_reading()
                and now - self.last_rx > limits.body_timeout_s
            ):
                return "body_timeout"
            return None
        if self.first_byte_at is not None or self.phase == "fresh":
            started = self.first_byte_at if self.first_byte_at is not None else self.phase_since
            if now - started > limits.header_timeout_s:
                return "header_timeout"
            return None
        pending = self.transport.get_write_buffer_size() if self.transport is not None else 0
        if pending and pending != self.unsent:
            self.phase_since = now  # a slow reader still taking the last response: progress
        self.unsent = pending
        if now - self.phase_since > limits.keepalive_timeout_s:
            return "idle_timeout"
        return None

    def close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.abort()


class _RateLimited:
    """Counts events; logs them at most once per interval."""

    def __init__(
        self, event: str, level: str = "warning", interval_s: float = LOG_INTERVAL_S
    ) -> None:
        self.event = event
        self.level = level
        self.interval_s = interval_s
        self.counts: Counter[str] = Counter()
        self.last = -interval_s
        self.fields: dict[str, Any] = {}

    def add(self, reason: str, **fields: Any) -> None:
        self.counts[reason] += 1
        self.fields = fields
        self.flush()

    def flush(self, force: bool = False) -> None:
        now = time.monotonic()
        if not self.counts or (not force and now - self.last < self.interval_s):
            return
        self.last = now
        getattr(log, self.level)(
            self.event, counts=dict(sorted(self.counts.items())), **self.fields
        )
        self.counts.clear()


class ConnectionGuard:
    """Admits, watches and closes the server's connections (module docstring)."""

    def __init__(self, limits: Limits, metrics: Metrics) -> None:
        self.limits = limits
        self.metrics = metrics
        self._conns: dict[GuardedProtocol, None] = {}  # insertion order: oldest first
        self._unauth: Counter[str] = Counter()
        self._by_transport: dict[asyncio.BaseTransport, GuardedProtocol] = {}
        self._closed = _RateLimited("connections_closed", "info")  # idle clients time out daily
        self._accept_errors = _RateLimited("accept_failed", "error")
        self._malformed = _RateLimited("malformed_requests")
        self._sweeper: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    # ------------------------------------------------------------------ wiring
    def factory(
        self, server: AiohttpServer, **handler_kwargs: Any
    ) -> Callable[[], GuardedProtocol]:
        """The protocol factory for ``loop.create_server``."""
        loop = asyncio.get_running_loop()

        def make() -> GuardedProtocol:
            inner = _JsonErrorHandler(server, loop=loop, **handler_kwargs)
            inner.guard = self
            return GuardedProtocol(self, inner)

        return make

    def start(self) -> None:
        """Start the sweeper and take over the loop's exception handler (accept errors)."""
        self._loop = loop = asyncio.get_running_loop()
        loop.set_exception_handler(self._loop_exception)
        self._sweeper = asyncio.create_task(self._sweep(), name="connection-sweeper")

    async def stop(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
        if self._loop is not None:
            self._loop.set_exception_handler(None)
        for limiter in (self._closed, self._accept_errors, self._malformed):
            limiter.flush(force=True)

    @property
    def open_connections(self) -> int:
        return len(self._conns)

    # ------------------------------------------------------------------ admission
    def admit(self, conn: GuardedProtocol) -> bool:
        limits = self.limits
        if self._unauth[conn.peer] >= limits.max_unauthenticated_per_peer:
            self._count_close("peer_cap", conn.peer)
            return False
        if len(self._conns) >= limits.max_connections:
            victim = next(
                (c for c in self._conns if not c.authenticated and c.phase != "active"), None
            )
            if victim is None:
                self._count_close("total_cap", conn.peer)
                return False
            self._drop(victim, "evicted")
        self._conns[conn] = None
        self._unauth[conn.peer] += 1
        if conn.transport is not None:
            self._by_transport[conn.transport] = conn
        self.metrics.connections_open.set(len(self._conns))
        return True

    def forget(self, conn: GuardedProtocol) -> None:
        if conn not in self._conns:
            return
        del self._conns[conn]
        if conn.transport is not None:
            self._by_transport.pop(conn.transport, None)
        if not conn.authenticated:
            self._unauth[conn.peer] -= 1
            if self._unauth[conn.peer] <= 0:
                del self._unauth[conn.peer]
        self.metrics.connections_open.set(len(self._conns))

    def _drop(self, conn: GuardedProtocol, reason: str) -> None:
        self.forget(conn)
        conn.close()
        self._count_close(reason, conn.peer)

    def _count_close(self, reason: str, peer: str) -> None:
        self.metrics.connections_closed.labels(reason).inc()
        self._closed.add(reason, last_peer=peer)

    # ------------------------------------------------------------------ request phases
    def _conn(self, request: web.BaseRequest) -> GuardedProtocol | None:
        transport = request.transport
        return self._by_transport.get(transport) if transport is not None else None

    def request_started(self, request: web.Request) -> None:
        conn = self._conn(request)
        if conn is not None:
            conn.phase = "active"
            conn.request = request
            conn.first_byte_at = None
            conn.phase_since = conn.last_rx = time.monotonic()

    def authenticated(self, request: web.Request) -> None:
        """The connection carried a fully authenticated request: no longer counts per peer."""
        conn = self._conn(request)
        if conn is not None and not conn.authenticated:
            conn.authenticated = True
            self._unauth[conn.peer] -= 1
            if self._unauth[conn.peer] <= 0:
                del self._unauth[conn.peer]

    def request_finished(self, request: web.Request) -> None:
        conn = self._conn(request)
        if conn is not None and conn.request is request:
            conn.phase = "idle"
            conn.request = None
            conn.phase_since = time.monotonic()

    def malformed(self, status: int, exc: BaseException | None, remote: str | None) -> None:
        self.metrics.request("OTHER", "malformed", status, 0.0)
        self._malformed.add(type(exc).__name__ if exc else "unknown", last_peer=remote)

    # ------------------------------------------------------------------ timers, loop errors
    async def _sweep(self) -> None:
        limits = self.limits
        interval = min(limits.header_timeout_s, limits.keepalive_timeout_s, limits.body_timeout_s)
        interval = min(max(interval / 4, 0.05), 1.0)
        while True:
            await asyncio.sleep(interval)
            now = time.monotonic()
            expired = [(c, r) for c in list(self._conns) if (r := c.deadline_reason(now, limits))]
            for conn, reason in expired:
                self._drop(conn, reason)
            for limiter in (self._closed, self._accept_errors, self._malformed):
                limiter.flush()

    def _loop_exception(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        if str(context.get("message", "")).startswith(_ACCEPT_ERROR):
            exc = context.get("exception")
            self.metrics.connections_closed.labels("accept_failed").inc()
            self._accept_errors.add(
                "accept_failed",
                error=str(exc) if exc else "unknown",
                action="raise LimitNOFILE or lower agent.max_connections",
            )
            return
        loop.default_exception_handler(context)
