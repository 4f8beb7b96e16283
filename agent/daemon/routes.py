"""Route handlers of the agent HTTP API (``/v1``); the contract is docs/protocol.md.

Handlers run after :mod:`agent._auth` has authenticated the request and (except for the upload)
read and digest-checked its body. They validate parameters and bodies strictly (pydantic,
``extra="forbid"``), refuse a conflicting operation early with ``409`` (an operation of this
process on the app, or the app's flock held by another process, e.g. the on-host CLI), then start
the work as an operation (:mod:`agent.operations`) and answer ``202``.

Every operation works through :class:`agent.lifecycle.AppManager`, the one implementation shared
with the CLI, created fresh per operation: its journal caches the chain head, which is only valid
while the app lock is held.

Uploads stream to ``<state_dir>/uploads/<operation id>.cutover`` (daemon-owned: app recovery
wipes ``<root>/.cutover/incoming/`` under the app lock, so a file there could vanish under us),
and the file is removed when the operation ends or the upload is refused; an upload whose body
broke off is kept for a resume instead (agent/daemon/uploads.py owns the spool and its limits).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import structlog
from aiohttp import web

from cutover.agent import __version__
from cutover.agent.api_models import (
    Accepted,
    AgentInfo,
    AppDetail,
    AppsList,
    AppSummary,
    Health,
    JournalPage,
)
from cutover.agent.daemon.auth import (
    CTX_KEY,
    UNMATCHED_ROUTE,
    Caller,
    check_digest,
    stream_body,
)
from cutover.agent.daemon.bodies import (
    ActivateBody,
    FetchBody,
    RollbackBody,
    check_query,
    parse_json_body,
)
from cutover.agent.daemon.context import AgentContext
from cutover.agent.daemon.fetch import download, redact, validate_url
from cutover.agent.daemon.fetch_policy import FetchPolicy
from cutover.agent.daemon.metrics import CONTENT_TYPE
from cutover.agent.daemon.operations import Operation, Runner, new_operation_id
from cutover.agent.daemon.streaming import StreamingStage
from cutover.agent.daemon.uploads import RESUMABLE, UploadKey
from cutover.agent.errors import (
    LockedError,
    NotFoundError,
    PayloadTooLargeError,
    RequestError,
    UnsupportedMediaTypeError,
)
from cutover.agent.host.journal import Journal
from cutover.agent.host.state import AppState, ReleaseStatus
from cutover.agent.lifecycle.manager import AppManager, EventSink, OpResult
from cutover.agent.package.manifest import APP_RE
from cutover.agent.versions import VERSION_RE

_M = TypeVar("_M", ActivateBody, RollbackBody, FetchBody)

__all__ = ["routes"]

log = structlog.get_logger(__name__)

MAX_JOURNAL_LIMIT = 10_000
# Body bytes per worker-thread hand-off while an upload is spooled: each hand-off waits for the
# GIL, which a streaming stage's extraction threads hold much of the time (bench/extract.py).
UPLOAD_BATCH_BYTES = 4 << 20


# ---------------------------------------------------------------------- helpers
def _ctx(request: web.Request) -> AgentContext:
    return request.app[CTX_KEY]


def _caller(request: web.Request) -> Caller:
    caller: Caller = request["caller"]
    return caller


def _app(request: web.Request) -> str:
    app = request.match_info["app"]
    if not APP_RE.fullmatch(app) or app not in _ctx(request).config.apps:
        raise NotFoundError(f"app {app!r} is not configured on this agent")
    return app


def _version(request: web.Request) -> str:
    version = request.match_info["version"]
    if not VERSION_RE.fullmatch(version):
        raise RequestError(f"invalid version {version!r}: use [A-Za-z0-9._+-], at most 128")
    return version


def _json_body(request: web.Request, model: type[_M]) -> _M:
    return parse_json_body(request.headers.get("Content-Type", ""), request["body"], model)


def _no_body(request: web.Request) -> None:
    if request["body"]:
        raise RequestError("this endpoint takes no body")


async def _defer_expect(request: web.Request) -> None:
    """aiohttp would answer ``Expect: 100-continue`` before any middleware ran, i.e. before
    authentication; the answer is sent by :func:`agent.daemon.auth.stream_body` instead."""


def _accepted(op: Operation) -> web.Response:
    body = Accepted.model_validate(
        {
            "operation": op.id,
            "op": op.op,
            "app": op.app,
            "version": op.version,
            "status": op.status,
            "links": {
                "self": f"/v1/operations/{op.id}",
                "events": f"/v1/operations/{op.id}/events",
            },
        }
    )
    return web.json_response(body.to_json(), status=202)


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
    (with the tree ``stream`` extracted while it arrived, if the stage takes it)."""
    op.phase = "run"
    mgr = ctx.manager(app, actor, sink)
    progress = ctx.progress_sink(sink, "extract")
    return await mgr.stage(
        path,
        expected_version=version,
        progress=lambda _s, d, t: progress(d, t),
        prestaged=stream,
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


async def _ensure_free_after_upload(ctx: AgentContext, app: str, size: int) -> None:
    """The app may have been taken while the body arrived: refuse, saying what happened.

    Raises:
        LockedError: an operation of this process, or another process, holds the app now.
    """
    try:
        await ctx.ensure_free(app)
    except LockedError as exc:
        raise LockedError(
            f"the package was received ({size} bytes, digest checked) but app {app!r} became "
            f"busy while it arrived, so it was not staged and was deleted: {exc}",
            holder=exc.holder,
        ) from exc


def _app_summary(app: str, root: Path, state: AppState) -> dict[str, Any]:
    """The fields of :class:`AppSummary` (and of :class:`AppDetail`) from the state."""
    return {
        "app": app,
        "root": str(root),
        "current": state.current,
        "previous": state.previous,
        "staged": [r.version for r in state.installed() if r.status == ReleaseStatus.STAGED],
        "highest_version": state.highest_version,
        "pending": state.pending.model_dump(mode="json") if state.pending else None,
    }


# ---------------------------------------------------------------------- handlers
routes = web.RouteTableDef()


@routes.get("/v1/health", name="health", expect_handler=_defer_expect)
async def health(request: web.Request) -> web.Response:
    return web.json_response(Health(status="ok").to_json())


@routes.get("/metrics", name="metrics", expect_handler=_defer_expect)
async def metrics(request: web.Request) -> web.Response:
    body = await asyncio.to_thread(_ctx(request).metrics.render)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})


@routes.get("/v1/apps", name="apps", expect_handler=_defer_expect)
async def list_apps(request: web.Request) -> web.Response:
    check_query(request)
    ctx = _ctx(request)
    cfg = ctx.config
    out: list[AppSummary] = []
    for app, section in sorted(cfg.apps.items()):
        try:
            state = await ctx.state(app)
        except Exception as exc:
            out.append(AppSummary(app=app, root=str(section.root), error=str(exc)))
            continue
        summary = _app_summary(app, section.root, state)
        out.append(AppSummary.model_validate({**summary, "busy": ctx.registry.busy(app)}))
    body = AppsList(agent=AgentInfo(name=cfg.agent.name, version=__version__), apps=out)
    return web.json_response(body.to_json())  # an unreadable app: only app, root and error


@routes.get("/v1/apps/{app}", name="app", expect_handler=_defer_expect)
async def get_app(request: web.Request) -> web.Response:
    check_query(request)
    app = _app(request)
    ctx = _ctx(request)
    layout = ctx.layout(app)
    state = await ctx.state(app)
    body = AppDetail.model_validate(
        {
            **_app_summary(app, layout.root, state),
            "initialized": layout.meta.is_dir(),
            "busy": ctx.registry.busy(app),
            "releases": [
                r.model_dump(mode="json")
                for r in sorted(state.releases.values(), key=lambda r: -r.seq)
            ],
            "frozen": ctx.frozen_releases(app, state),
        }
    )
    return web.json_response(body.to_json())


@routes.get("/v1/apps/{app}/journal", name="journal", expect_handler=_defer_expect)
async def journal(request: web.Request) -> web.Response:
    check_query(request, frozenset({"limit"}))
    app = _app(request)
    raw = request.query.get("limit", "100")
    if not raw.isdigit() or not 1 <= int(raw) <= MAX_JOURNAL_LIMIT:
        raise RequestError(f"limit must be an integer from 1 to {MAX_JOURNAL_LIMIT}")
    path = _ctx(request).layout(app).journal_file
    entries = await asyncio.to_thread(Journal(path).tail, int(raw))
    return web.json_response(JournalPage.model_validate({"app": app, "entries": entries}).to_json())


@routes.put("/v1/apps/{app}/releases/{version}", name="upload", expect_handler=_defer_expect)
async def upload(request: web.Request) -> web.Response:
    ctx = _ctx(request)
    check_query(request, frozenset({"sha256", "offset"}))
    app, version = _app(request), _version(request)
    caller = _caller(request)
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
    spool = await ctx.spool.open(key, offset, op_id)  # 409 upload_offset / upload_busy
    path = spool.path
    started = False
    stream: StreamingStage | None = None
    task = asyncio.current_task()
    try:
        # Extract while the bytes arrive; it holds no lock (agent/daemon/streaming.py).
        stream = StreamingStage.start(ctx.config, app, version, op_id, path)
        if stream is not None and offset:
            stream.feed.advance(offset)  # a resume: the bytes already held
        if task is not None:
            ctx.uploads.add(task)
        try:

            async def write(data: bytes) -> None:
                await spool.write(data)
                if stream is not None:
                    stream.feed.advance(len(data))
                ctx.metrics.received_bytes.labels("upload").inc(len(data))

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
        check_digest(caller, actual)
        ctx.spool.check_complete(spool)
        await ctx.spool.complete(spool)
        ctx.accepting()
        _app(request)  # still configured after a reload?
        await _ensure_free_after_upload(ctx, app, spool.size)
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
    return _accepted(op)


@routes.post("/v1/apps/{app}/releases/{version}/fetch", name="fetch", expect_handler=_defer_expect)
async def fetch(request: web.Request) -> web.Response:
    ctx = _ctx(request)
    check_query(request)
    app, version = _app(request), _version(request)
    caller = _caller(request)
    url = validate_url(_json_body(request, FetchBody).url)
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
    return _accepted(op)


async def _start(
    request: web.Request,
    op_name: str,
    version: str | None,
    work: Callable[[AppManager], Awaitable[OpResult]],
) -> web.Response:
    ctx = _ctx(request)
    app = _app(request)
    caller = _caller(request)
    ctx.accepting()
    await ctx.ensure_free(app)

    async def run(op: Operation, sink: EventSink) -> OpResult:
        op.phase = "run"
        return await work(ctx.manager(app, caller.actor, sink))

    op = ctx.registry.start(
        op_name, app, version, caller.actor, run, on_done=lambda o: ctx.refresh_app(o.app)
    )
    return _accepted(op)


def _check_lease(request: web.Request, lease: str | None, what: str) -> None:
    """409 when another rollout's lease is live on the app (agent/daemon/leases.py)."""
    table = _ctx(request).leases
    if table is not None:
        table.check(_app(request), lease, what)


@routes.post("/v1/apps/{app}/activate", name="activate", expect_handler=_defer_expect)
async def activate(request: web.Request) -> web.Response:
    check_query(request)
    _app(request)
    body = _json_body(request, ActivateBody)
    _check_lease(request, body.lease, f"activate {body.version}")
    return await _start(
        request,
        "activate",
        body.version,
        lambda m: m.activate(body.version, run_once=body.run_once),
    )


@routes.post("/v1/apps/{app}/rollback", name="rollback", expect_handler=_defer_expect)
async def rollback(request: web.Request) -> web.Response:
    check_query(request)
    _app(request)
    body = _json_body(request, RollbackBody)
    _check_lease(request, body.lease, "rollback")
    return await _start(
        request,
        "rollback",
        body.to,
        lambda m: m.rollback(body.to, restore=body.restore, accept_db_risk=body.accept_db_risk),
    )


@routes.delete("/v1/apps/{app}/releases/{version}", name="delete", expect_handler=_defer_expect)
async def delete(request: web.Request) -> web.Response:
    check_query(request)
    _app(request)
    _no_body(request)
    version = _version(request)
    return await _start(request, "delete", version, lambda m: m.delete(version))


@routes.get("/v1/operations/{op_id}", name="operation", expect_handler=_defer_expect)
async def operation(request: web.Request) -> web.Response:
    check_query(request)
    op = _ctx(request).registry.get(request.match_info["op_id"])
    return web.json_response(op.record())


@routes.get("/v1/operations/{op_id}/events", name="events", expect_handler=_defer_expect)
async def events(request: web.Request) -> web.StreamResponse:
    check_query(request)
    op = _ctx(request).registry.get(request.match_info["op_id"])
    response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
    response.enable_chunked_encoding()
    await response.prepare(request)
    try:
        async for event in op.follow():
            line = json.dumps(event, separators=(",", ":"), default=str) + "\n"
            await response.write(line.encode())
    except ConnectionError:  # the follower went away: the operation goes on
        return response
    await response.write_eof()
    return response


# Last: every other path. Unauthenticated, it gets the same 401 as a real route (the route table
# cannot be probed); authenticated, 405 if another route has the path, else 404.
@routes.route("*", "/{tail:.*}", name=UNMATCHED_ROUTE, expect_handler=_defer_expect)
async def unmatched(request: web.Request) -> web.Response:
    for resource in request.app.router.resources():
        if resource.name == UNMATCHED_ROUTE:
            continue
        _, allowed = await resource.resolve(request)
        if allowed:
            raise web.HTTPMethodNotAllowed(request.method, allowed)
    raise NotFoundError("no such endpoint; see docs/protocol.md")
