"""The package routes of the agent API: upload (``PUT /v1/apps/{app}/releases/{version}``) and
fetch-by-URL (``POST .../fetch``); the contract is docs/protocol.md.

Uploads stream to ``<state_dir>/uploads/<operation id>.cutover`` (daemon-owned: app recovery
wipes ``<root>/.cutover/incoming/`` under the app lock, so a file there could vanish under us),
and the file is removed once the stage has extracted it (before its syncfs), when the operation
ends, or when the upload is refused; an upload whose body
broke off is kept for a resume instead (agent/daemon/uploads.py owns the spool and its limits).
A chunked upload is extracted while it arrives (:mod:`agent.daemon.streaming`), holding no lock; the app is
taken only once the package is spooled and its digest checked, by starting the stage operation.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path

import structlog
from aiohttp import web

from cutover.agent.daemon._handlers import (
    accepted,
    app_param,
    caller_of,
    ctx_of,
    defer_expect,
    json_body,
    version_param,
)
from cutover.agent.daemon.auth import check_digest, stream_body
from cutover.agent.daemon.bodies import FetchBody, check_query
from cutover.agent.daemon.context import AgentContext
from cutover.agent.daemon.fetch import download, redact, validate_url
from cutover.agent.daemon.fetch_policy import FetchPolicy
from cutover.agent.daemon.operations import Operation, Runner, new_operation_id
from cutover.agent.daemon.streaming import StreamingStage
from cutover.agent.daemon.uploads import RESUMABLE, UploadKey, owner_of
from cutover.agent.errors import (
    AuthError,
    DigestMismatchError,
    LockedError,
    PayloadTooLargeError,
    UnsupportedMediaTypeError,
)
from cutover.agent.lifecycle.manager import EventSink, OpResult

__all__ = ["UPLOAD_BATCH_BYTES", "package_routes"]

log = structlog.get_logger(__name__)

# Body bytes per worker-thread hand-off while an upload is spooled: each hand-off waits for the
# GIL, which a streaming stage's extraction threads hold much of the time (bench/extract.py).
UPLOAD_BATCH_BYTES = 4 << 20

package_routes = web.RouteTableDef()


async def _stage_spooled(
    ctx: AgentContext,
    op: Operation,
    sink: EventSink,
    app: str,
    actor: str,
    path: Path,
    version: str,
    stream: StreamingStage | None = None,
) -> OpResult:
    """Stage a package the daemon received (upload) or downloaded (fetch) into its spool
    (with the tree ``stream`` extracted while it arrived, if the stage takes it).

    The spool is removed as soon as the stage no longer needs it (its tree extracted or claimed,
    every descriptor on it closed), before the stage's syncfs: its dirty pages are then dropped,
    never written (docs/lifecycle.md §1.3). The operation's cleanup removes it otherwise."""
    op.phase = "run"
    mgr = ctx.manager(app, actor, sink)
    progress = ctx.progress_sink(sink, "extract")

    async def package_done() -> None:
        try:
            await asyncio.to_thread(path.unlink, missing_ok=True)
        except OSError as exc:  # the operation's cleanup tries again; the stage goes on
            log.warning("upload_spool_not_removed", path=str(path), error=str(exc))

    return await mgr.stage(
        path,
        expected_version=version,
        progress=lambda _s, d, t: progress(d, t),
        prestaged=stream,
        package_done=package_done,
    )


def _start_staging(
    ctx: AgentContext,
    kind: str,
    app: str,
    version: str,
    actor: str,
    run: Runner,
    op_id: str,
    path: Path,
    stream: StreamingStage | None = None,
) -> Operation:
    """Register a staging operation whose spooled package (and streamed tree, unless the stage
    took it) is removed when it ends."""
    return ctx.registry.start(
        kind,
        app,
        version,
        actor,
        run,
        op_id=op_id,
        cleanup=_remove(path, stream),
        on_done=lambda o: ctx.refresh_app(o.app),
    )


def _remove(path: Path, stream: StreamingStage | None = None) -> Callable[[], Awaitable[None]]:
    async def cleanup() -> None:
        if stream is not None:
            await stream.discard()
        await asyncio.to_thread(path.unlink, missing_ok=True)

    return cleanup


def _busy_after_upload(app: str, size: int, kept: int, exc: LockedError) -> LockedError:
    """The app was taken while the body arrived: the refusal, saying what happened."""
    then = (
        f"it is kept: once the app is free, resume at offset {size} (an empty body)"
        if kept
        else "it was not kept (agent.upload_resume_* limits): upload it again once the app is free"
    )
    return LockedError(
        f"the package was received ({size} bytes, digest checked) but app {app!r} became busy "
        f"while it arrived, so it was not staged; {then}: {exc}",
        holder=exc.holder,
    )


@package_routes.put("/v1/apps/{app}/releases/{version}", name="upload", expect_handler=defer_expect)
async def upload(request: web.Request) -> web.Response:
    ctx = ctx_of(request)
    check_query(request, frozenset({"sha256", "offset"}))
    app, version = app_param(request), version_param(request)
    caller = caller_of(request)
    # the package's digest: signed in the query (a resume) or as the body's Content-Digest
    key, offset = UploadKey.of_request(app, version, request.query, caller.content_digest)
    ctx.accepting()
    media = request.headers.get("Content-Type", "").strip().lower()
    if media != "application/octet-stream":
        raise UnsupportedMediaTypeError(
            "upload the package as Content-Type: application/octet-stream"
        )
    agent = ctx.config.agent
    declared = (request.content_length or 0) + offset
    if declared > agent.max_upload_bytes:
        raise PayloadTooLargeError(
            f"package of {declared} bytes exceeds agent.max_upload_bytes ({agent.max_upload_bytes})"
        )
    # Refuse early (no body byte spent) if the app is busy, but hold nothing while the bytes
    # arrive: a slow upload must not lock the app (issue 14 item 7). The app is taken only once
    # the package is spooled and its digest checked, by starting the stage operation.
    await ctx.ensure_free(app)
    op_id = new_operation_id()
    owner = owner_of(caller.keyid)
    # stream_body hashes the body (Content-Digest): a fresh spool's file is not hashed again
    spool = await ctx.spool.open(key, offset, op_id, owner, body_hashed=True)  # 409 offset/busy
    path = spool.path
    started = False
    stream: StreamingStage | None = None
    task = asyncio.current_task()
    try:
        # Extract while the bytes arrive; it holds no lock (agent/daemon/streaming.py).
        stream = StreamingStage.start(ctx.config, ctx.workers, app, version, op_id, path)
        if stream is not None and offset:
            stream.feed.advance(offset)  # a resume: the bytes already held
        if task is not None:
            ctx.uploads.add(task)
        try:

            async def write(chunks: list[bytes]) -> None:
                await spool.write(chunks)
                n = sum(map(len, chunks))
                if stream is not None:
                    stream.feed.advance(n)
                ctx.metrics.received_bytes.labels("upload").inc(n)

            size, actual = await stream_body(
                request,
                max_bytes=agent.max_upload_bytes - offset,
                idle_timeout_s=agent.upload_idle_timeout_s,
                total_timeout_s=agent.upload_timeout_s,
                write=write,
                flush_on_error=True,
                batch_bytes=UPLOAD_BATCH_BYTES,
            )
        except RESUMABLE:
            await asyncio.shield(ctx.spool.keep(spool))  # resumable: GET .../upload/{sha256}
            raise
        finally:
            if task is not None:
                ctx.uploads.discard(task)
        if stream is not None:
            stream.feed.finish()
        try:
            check_digest(caller, actual)
            ctx.spool.check_complete(spool, actual)
        except (AuthError, DigestMismatchError):  # a corrupted tail, or not the package
            await asyncio.shield(ctx.spool.rewind(spool))  # the bytes held before it stay
            raise
        ctx.accepting()
        app_param(request)  # still configured after a reload?
        try:
            await ctx.ensure_free(app)
        except LockedError as exc:  # the package is whole and correct: kept for a resume
            kept = await asyncio.shield(ctx.spool.keep(spool))
            raise _busy_after_upload(app, spool.size, kept, exc) from exc
        await ctx.spool.complete(spool)
        log.info(
            "upload_received", app=app, version=version, bytes=size, offset=offset, operation=op_id
        )

        async def run(op: Operation, sink: EventSink) -> OpResult:
            return await _stage_spooled(ctx, op, sink, app, caller.actor, path, version, stream)

        # no await since the check above: start() re-checks this process's operations itself;
        # the stage re-reads the app's state under its lock (version, downgrade, pending)
        op = _start_staging(ctx, "stage", app, version, caller.actor, run, op_id, path, stream)
        started = True
    finally:
        if not started:
            await asyncio.shield(ctx.spool.discard(spool))
            await asyncio.shield(_remove(path, stream)())
    return accepted(op)


@package_routes.post(
    "/v1/apps/{app}/releases/{version}/fetch", name="fetch", expect_handler=defer_expect
)
async def fetch(request: web.Request) -> web.Response:
    ctx = ctx_of(request)
    check_query(request)
    app, version = app_param(request), version_param(request)
    caller = caller_of(request)
    url = validate_url(json_body(request, FetchBody).url)
    policy = FetchPolicy.from_env(ctx.config.agent.fetch_allow)
    policy.check_url(url)  # 400 fetch_refused now; redirects and resolved addresses in download
    ctx.accepting()
    await ctx.ensure_free(app)
    op_id = new_operation_id()
    path = ctx.uploads_dir / f"{op_id}.cutover"
    agent = ctx.config.agent

    async def run(op: Operation, sink: EventSink) -> OpResult:
        op.phase = "download"
        sink({"event": "fetch.start", "url": redact(url)})
        size = await download(
            url,
            path,
            max_bytes=agent.max_upload_bytes,
            timeout_s=agent.fetch_timeout_s,
            idle_timeout_s=agent.upload_idle_timeout_s,
            policy=policy,
            on_progress=ctx.progress_sink(sink, "download"),
            on_bytes=ctx.metrics.received_bytes.labels("fetch").inc,
        )
        sink({"event": "fetch.done", "bytes": size})
        result = await _stage_spooled(ctx, op, sink, app, caller.actor, path, version)
        result.details["fetched_bytes"] = size
        return result

    op = _start_staging(ctx, "fetch", app, version, caller.actor, run, op_id, path)
    return accepted(op)
