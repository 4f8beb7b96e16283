"""Route handlers of the agent HTTP API (``/v1``); the contract is docs/protocol.md.

Handlers run after :mod:`agent._auth` has authenticated the request and (except for the upload)
read and digest-checked its body. They validate parameters and bodies strictly (pydantic,
``extra="forbid"``), refuse a conflicting operation early with ``409`` (an operation of this
process on the app, or the app's flock held by another process, e.g. the on-host CLI), then start
the work as an operation (:mod:`agent.operations`) and answer ``202``.

Every operation works through :class:`agent.lifecycle.AppManager`, the one implementation shared
with the CLI, created fresh per operation: its journal caches the chain head, which is only valid
while the app lock is held.

The package routes (upload, fetch) are in :mod:`agent.daemon.package_routes`.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import structlog
from aiohttp import web

from cutover.agent import __version__
from cutover.agent.api_models import (
    AgentInfo,
    AppDetail,
    AppsList,
    AppSummary,
    Health,
    JournalPage,
)
from cutover.agent.daemon._handlers import accepted as _accepted
from cutover.agent.daemon._handlers import app_param as _app
from cutover.agent.daemon._handlers import caller_of as _caller
from cutover.agent.daemon._handlers import ctx_of as _ctx
from cutover.agent.daemon._handlers import defer_expect as _defer_expect
from cutover.agent.daemon._handlers import json_body as _json_body
from cutover.agent.daemon._handlers import no_body as _no_body
from cutover.agent.daemon._handlers import version_param as _version
from cutover.agent.daemon.auth import (
    UNMATCHED_ROUTE,
)
from cutover.agent.daemon.bodies import (
    ActivateBody,
    RollbackBody,
    check_query,
)
from cutover.agent.daemon.metrics import CONTENT_TYPE
from cutover.agent.daemon.operations import Operation
from cutover.agent.errors import (
    NotFoundError,
    RequestError,
)
from cutover.agent.host.journal import Journal
from cutover.agent.host.state import AppState, ReleaseStatus
from cutover.agent.lifecycle.manager import AppManager, EventSink, OpResult

__all__ = ["routes"]

log = structlog.get_logger(__name__)

MAX_JOURNAL_LIMIT = 10_000


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
