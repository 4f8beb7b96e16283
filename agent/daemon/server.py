"""``cutover-agent serve``: the agent daemon (aiohttp), shaped like uvicorn's ``server.py``.

Lifecycle:

1. load the config (a :class:`~agent.config.ConfigError` aborts the start: the CLI maps it to
   exit code 2), prepare ``<state_dir>`` (``uploads/`` emptied of stale files, ``nonces.log``,
   ``resume/`` swept of expired partial uploads: agent/daemon/uploads.py);
2. run crash recovery for every configured app (:meth:`AppManager.recover_only`) and log what it
   did; an app that cannot be recovered (layout missing, lock held, drift) is logged and skipped;
3. bind the listen socket (TLS when ``tls_cert``/``tls_key`` are set) with every connection
   wrapped by :mod:`agent.daemon.connections` (timeouts, caps, bounded logs), then tell systemd
   ``READY=1`` and keep its watchdog fed; watch the config files (:mod:`agent.reload`); SIGHUP
   reloads;
4. on SIGTERM or SIGINT: ``STOPPING=1``, stop accepting connections, refuse new operations
   (``503 shutting_down``), abort uploads and downloads in flight (an upload's bytes are kept
   for a resume, a download's file is removed), let
   running operations finish for up to ``drain_timeout_s``, then cancel them once (an activation
   cancelled after its flip reverts; a cancelled staging cleans up), close the remaining
   connections and return 0. A second signal skips the wait. Signal handlers are restored on exit.

Security rules of the API (what :mod:`agent.daemon.auth` enforces for every route but ``/v1/health``
and ``/metrics``): RFC 9421 signature checked against the controller keys of the config in force
before any body byte is read; single-use nonces remembered across restarts; roles (``read`` may
only GET); body size, idle and total time bounded; body digest checked before use; every refusal
is a ``401``/``408``/``413`` with a reason code and changes no app state. ``/v1/health`` answers
``{"status": "ok"}`` only; ``/metrics`` is unauthenticated and exports nothing secret (see
docs/agent.md for why, and how to firewall it).
"""

from __future__ import annotations

import asyncio
import functools
import os
import signal
import ssl
from pathlib import Path
from types import FrameType
from typing import Any

import structlog
from aiohttp import web

from cutover.agent import __version__
from cutover.agent._util.logsetup import configure_logging
from cutover.agent.config import LoadedConfig, load_config
from cutover.agent.daemon import sdnotify
from cutover.agent.daemon.auth import CTX_KEY, MAX_JSON_BYTES, auth_middleware
from cutover.agent.daemon.connections import (
    GUARD_KEY,
    SERVER_HEADER,
    ConnectionGuard,
    Limits,
    effective_max_connections,
)
from cutover.agent.daemon.content_routes import content_routes
from cutover.agent.daemon.context import AgentContext
from cutover.agent.daemon.lease_routes import lease_routes
from cutover.agent.daemon.leases import LeaseTable
from cutover.agent.daemon.mark_routes import mark_routes
from cutover.agent.daemon.metrics import Metrics
from cutover.agent.daemon.nonces import NonceStore
from cutover.agent.daemon.operations import OperationRegistry
from cutover.agent.daemon.package_routes import package_routes
from cutover.agent.daemon.reload import ConfigHolder, ConfigReloader
from cutover.agent.daemon.routes import routes
from cutover.agent.daemon.streaming import clear_stale
from cutover.agent.daemon.upload_routes import upload_routes
from cutover.agent.daemon.uploads import ResumeLimits, UploadSpool
from cutover.agent.errors import (
    ConfigError,
    CutoverError,
    LockedError,
    OperationalError,
    StorageError,
)
from cutover.agent.host import workerlock
from cutover.agent.lifecycle.manager import AppManager
from cutover.agent.worker.process import WorkerPool

__all__ = ["Server", "build_app", "serve"]

log = structlog.get_logger(__name__)

HANDLED_SIGNALS = (signal.SIGTERM, signal.SIGINT)
CONNECTION_CLOSE_TIMEOUT_S = 5.0

_SignalHandler = int | signal.Handlers | Any | None  # what signal.getsignal returns


def serve(config_path: Path) -> int:
    """Run the agent daemon until SIGTERM/SIGINT.

    Args:
        config_path: the agent config (``agent.toml``).

    Returns:
        0 after a graceful shutdown.

    Raises:
        ConfigError: the config, a key file or the TLS files cannot be loaded (nothing started).
        StorageError: the state directory cannot be prepared.
        OperationalError: the listen address cannot be bound (``listen_failed``).
    """
    return asyncio.run(Server(config_path).run())


def build_app(ctx: AgentContext, guard: ConnectionGuard) -> web.Application:
    """The aiohttp application: routes, the authentication middleware, the shared context.

    ``client_max_size`` stays small: handlers never call ``request.read()``; bodies are read by
    :func:`agent.daemon.auth.stream_body` from ``request.content`` with their own caps (the
    upload's is ``agent.max_upload_bytes``). Every response says ``Server: cutover-agent``,
    without a version.
    """
    app = web.Application(middlewares=[auth_middleware], client_max_size=MAX_JSON_BYTES)
    app[CTX_KEY] = ctx
    app[GUARD_KEY] = guard
    app.add_routes(lease_routes)  # before routes: its last route is the catch-all
    app.add_routes(upload_routes)
    app.add_routes(package_routes)
    app.add_routes(mark_routes)
    app.add_routes(content_routes)
    app.add_routes(routes)
    app.on_response_prepare.append(_server_header)
    return app


async def _server_header(request: web.Request, response: web.StreamResponse) -> None:
    response.headers["Server"] = SERVER_HEADER


def _limits(cfg: LoadedConfig) -> Limits:
    agent = cfg.agent
    cap = effective_max_connections(agent.max_connections)
    if cap < agent.max_connections:
        log.warning(
            "connection_cap_lowered",
            configured=agent.max_connections,
            effective=cap,
            reason="agent.max_connections must stay below the file limit (LimitNOFILE)",
        )
    return Limits(
        header_timeout_s=agent.header_timeout_s,
        keepalive_timeout_s=agent.keepalive_timeout_s,
        body_timeout_s=agent.body_timeout_s,
        max_connections=cap,
        max_unauthenticated_per_peer=min(agent.max_unauthenticated_per_peer, cap),
    )


def _ssl_context(cfg: LoadedConfig) -> ssl.SSLContext | None:
    cert, key = cfg.agent.tls_cert, cfg.agent.tls_key
    if cert is None and key is None:
        return None
    if cert is None or key is None:
        raise ConfigError(
            f"config {cfg.path}: set both agent.tls_cert and agent.tls_key, or neither"
        )
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(
            f"config {cfg.path}: cannot load TLS cert {cert} / key {key}: {exc}"
        ) from exc
    return ctx


def _host_port(listen: str) -> tuple[str, int]:
    host, _, port = listen.rpartition(":")
    return host.strip("[]"), int(port)


def _prepare_state_dir(state_dir: Path) -> Path:
    uploads = state_dir / "uploads"
    try:
        state_dir.mkdir(mode=0o750, parents=True, exist_ok=True)
        uploads.mkdir(mode=0o700, exist_ok=True)
        stale = sorted(uploads.iterdir())
        for entry in stale:
            entry.unlink()
    except OSError as exc:
        raise StorageError(
            f"cannot prepare state directory {state_dir}: {exc.strerror or exc}; it must be "
            "writable by the agent (systemd: StateDirectory=cutover)"
        ) from exc
    if stale:
        log.info("stale_uploads_removed", count=len(stale))
    return uploads


class Server:
    """One agent daemon run: start, serve, drain, stop."""

    def __init__(self, config_path: Path) -> None:
        self.config_path = config_path
        self.should_exit = asyncio.Event()
        self.force_exit = False
        self._forced = asyncio.Event()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._original_handlers: dict[int, _SignalHandler] = {}
        self.ctx: AgentContext | None = None

    # ------------------------------------------------------------------ signals
    def _install_signal_handlers(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (*HANDLED_SIGNALS, signal.SIGHUP):
            self._original_handlers[sig] = signal.getsignal(sig)
        for sig in HANDLED_SIGNALS:
            loop.add_signal_handler(sig, self._handle_exit, sig, None)
        loop.add_signal_handler(signal.SIGHUP, self._handle_hup)

    def _restore_signal_handlers(self) -> None:
        loop = asyncio.get_running_loop()
        for sig, handler in self._original_handlers.items():
            loop.remove_signal_handler(sig)
            signal.signal(sig, handler)
        self._original_handlers.clear()

    def _handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self.should_exit.is_set():
            self.force_exit = True
            self._forced.set()
            log.warning("force_exit", signal=signal.Signals(sig).name)
        else:
            log.info("shutdown_requested", signal=signal.Signals(sig).name)
        self.should_exit.set()

    def _handle_hup(self) -> None:
        self._spawn(self._reload("sighup"), "reload-sighup")

    def _spawn(self, coro: Any, name: str) -> asyncio.Task[Any]:
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # ------------------------------------------------------------------ startup
    async def _recover_all(self, cfg: LoadedConfig, apps: list[str] | None = None) -> None:
        for app in sorted(apps if apps is not None else cfg.apps):
            mgr = AppManager(app, cfg.apps[app], cfg.policies[app], actor="agent")
            try:
                result = await mgr.recover_only()
            except LockedError as exc:
                log.warning("startup_recovery_skipped", app=app, reason=str(exc))
                continue
            except CutoverError as exc:
                log.error("app_unavailable", app=app, error=exc.code, message=str(exc))
                continue
            log.info(
                "startup_recovery",
                app=app,
                current=result.current,
                recovered=result.recovered,
                clean=not result.recovered,
            )

    async def _on_reload(self, old: LoadedConfig, new: LoadedConfig) -> None:
        if self.ctx is None:  # pragma: no cover - reloads start after the context exists
            return
        added = sorted(new.apps.keys() - old.apps.keys())
        if added:
            await self._recover_all(new, added)
        for app in old.apps.keys() | new.apps.keys():
            await self.ctx.refresh_app(app)

    async def _reload(self, trigger: str) -> None:
        sdnotify.notify("RELOADING=1")
        try:
            await self.reloader.reload(trigger)
        finally:
            sdnotify.notify("READY=1")

    # ------------------------------------------------------------------ run
    async def run(self) -> int:
        """Start, serve until a signal, drain and stop. Returns the exit code (0)."""
        cfg = await asyncio.to_thread(load_config, self.config_path)
        configure_logging(cfg.agent.log_format, os.environ.get("CUTOVER_LOG_LEVEL", "info"))
        ssl_context = _ssl_context(cfg)
        uploads = await asyncio.to_thread(_prepare_state_dir, cfg.agent.state_dir)
        holder = ConfigHolder(cfg)
        metrics = Metrics()
        spool = UploadSpool(
            cfg.agent.state_dir, lambda: ResumeLimits.of(holder.current.agent), metrics
        )
        await asyncio.to_thread(spool.prepare)
        nonces = await asyncio.to_thread(NonceStore, cfg.agent.state_dir / "nonces.log")
        metrics.config_loaded.set_to_current_time()
        workers = WorkerPool(cfg.agent.log_format)
        self.ctx = ctx = AgentContext(
            holder=holder,
            registry=OperationRegistry(metrics),
            metrics=metrics,
            nonces=nonces,
            uploads_dir=uploads,
            spool=spool,
            leases=await asyncio.to_thread(LeaseTable, cfg.agent.state_dir),
            workers=workers,
        )
        workers.start()  # a stage worker ready ahead (agent/worker/process.py)
        self.reloader = ConfigReloader(holder, metrics, on_reload=self._on_reload)
        await self._recover_all(cfg)
        for app in cfg.apps:
            try:
                # a crashed daemon's uploads (a cancellable wait for its workers)
                await workerlock.run_stoppable(functools.partial(clear_stale, ctx.layout(app)))
            except LockedError as exc:  # a worker outlived its daemon: its tree waits a restart
                log.warning("streaming_clear_skipped", app=app, reason=str(exc))
            await ctx.refresh_app(app)

        limits = _limits(cfg)
        guard = ConnectionGuard(limits, metrics)
        handler_kwargs: dict[str, Any] = {
            "access_log": None,
            # The guard closes idle connections; aiohttp's own timer is only a backstop.
            "keepalive_timeout": 2 * max(limits.keepalive_timeout_s, limits.header_timeout_s) + 1,
            # Bodies are never decompressed (a Content-Encoding is refused with 415 anyway):
            # the signed digest is over the bytes on the wire.
            "auto_decompress": False,
        }
        runner = web.AppRunner(
            build_app(ctx, guard),
            handle_signals=False,
            shutdown_timeout=CONNECTION_CLOSE_TIMEOUT_S,
            **handler_kwargs,
        )
        await runner.setup()
        host, port = _host_port(cfg.agent.listen)
        if runner.server is None:  # pragma: no cover - setup() always creates it
            raise RuntimeError("aiohttp runner has no server after setup()")
        try:
            listener = await asyncio.get_running_loop().create_server(
                guard.factory(runner.server, **handler_kwargs),
                host,
                port,
                ssl=ssl_context,
                reuse_address=True,
                ssl_handshake_timeout=limits.header_timeout_s if ssl_context else None,
            )
        except BaseException as exc:
            await runner.cleanup()
            await workers.close()
            await asyncio.to_thread(nonces.close)
            if isinstance(exc, OSError):
                raise OperationalError(
                    f"cannot listen on {cfg.agent.listen}: {exc.strerror or exc}; is another agent "
                    "running, or is agent.listen wrong?",
                    code="listen_failed",
                ) from exc
            raise
        self._install_signal_handlers()
        guard.start()
        stop_watching = asyncio.Event()
        try:
            log.info(
                "listening",
                listen=cfg.agent.listen,
                addresses=[str(sock.getsockname()) for sock in listener.sockets],
                name=cfg.agent.name,
                tls=ssl_context is not None,
                apps=sorted(cfg.apps),
                controller_keys=len(cfg.controller_keys),
                version=__version__,
                pid=os.getpid(),
                max_connections=limits.max_connections,
            )
            sdnotify.notify("READY=1", f"STATUS=serving {cfg.agent.listen}")
            interval = sdnotify.watchdog_interval_s()
            if interval is not None:
                self._spawn(sdnotify.watchdog_loop(interval), "watchdog")
            self._spawn(self.reloader.watch(stop_watching), "config-watch")
            self._spawn(spool.sweep_loop(stop_watching), "upload-sweep")
            await self.should_exit.wait()
            await self._shutdown(listener, ctx)
        finally:
            listener.close()
            stop_watching.set()
            for task in list(self._tasks):
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            await runner.cleanup()
            await workers.close()
            await guard.stop()
            await asyncio.to_thread(nonces.close)
            await asyncio.to_thread(_prepare_state_dir, cfg.agent.state_dir)
            self._restore_signal_handlers()
        log.info("stopped")
        return 0

    async def _shutdown(self, listener: asyncio.Server, ctx: AgentContext) -> None:
        sdnotify.notify("STOPPING=1", "STATUS=draining")
        ctx.shutting_down = True
        listener.close()  # no new connections; requests on open ones get 503 for new work
        aborted = [t for t in ctx.uploads if not t.done()]
        for task in aborted:
            task.cancel()
        downloads = [op for op in ctx.registry.running() if op.phase == "download"]
        for op in downloads:
            ctx.registry.cancel(op)
        running = ctx.registry.running()
        drain_s = ctx.config.agent.drain_timeout_s
        log.info(
            "draining",
            operations=[f"{op.op} {op.app} {op.version or ''}".strip() for op in running],
            uploads_aborted=len(aborted),
            downloads_aborted=len(downloads),
            drain_timeout_s=drain_s,
        )
        if aborted:
            await asyncio.wait(aborted, timeout=CONNECTION_CLOSE_TIMEOUT_S)
        if running and not self.force_exit:
            drain = asyncio.ensure_future(ctx.registry.drain(drain_s))
            forced = asyncio.ensure_future(self._forced.wait())
            await asyncio.wait({drain, forced}, return_when=asyncio.FIRST_COMPLETED)
            for task in (drain, forced):
                task.cancel()
        if ctx.registry.running():
            log.warning(
                "drain_forced" if self.force_exit else "drain_timeout",
                cancelling=[op.id for op in ctx.registry.running()],
            )
            await ctx.registry.cancel_all()
