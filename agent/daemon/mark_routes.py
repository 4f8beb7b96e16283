"""The release marks of the agent API: pin, unpin, clear-bad (docs/protocol.md, extensions).

Unlike the other writes these are not operations: each changes one field of a release record
under the app lock and answers ``200`` with the result at once. They refuse with ``409`` while
this process runs an operation on the app, like every write; the lifecycle journals them with the
caller as the actor (agent/lifecycle/housekeeping.py).
"""

from __future__ import annotations

from aiohttp import web

from cutover.agent.api_models import OperationResult
from cutover.agent.daemon.auth import CTX_KEY, Caller
from cutover.agent.daemon.bodies import check_query
from cutover.agent.daemon.context import AgentContext
from cutover.agent.errors import NotFoundError, RequestError
from cutover.agent.package.manifest import APP_RE
from cutover.agent.versions import VERSION_RE

__all__ = ["mark_routes"]

mark_routes = web.RouteTableDef()


async def _defer_expect(request: web.Request) -> None:
    """As in agent/daemon/routes.py: ``100-continue`` is answered after authentication."""


def _target(request: web.Request) -> tuple[AgentContext, str, str, str]:
    """The context, app, version and actor of a mark request (no body, no query).

    Raises:
        NotFoundError: the app is not configured. RequestError: a bad version, a body.
    """
    check_query(request)
    ctx = request.app[CTX_KEY]
    app, version = request.match_info["app"], request.match_info["version"]
    if not APP_RE.fullmatch(app) or app not in ctx.config.apps:
        raise NotFoundError(f"app {app!r} is not configured on this agent")
    if not VERSION_RE.fullmatch(version):
        raise RequestError(f"invalid version {version!r}: use [A-Za-z0-9._+-], at most 128")
    if request["body"]:
        raise RequestError("this endpoint takes no body")
    ctx.accepting()
    ctx.registry.check_free(app)
    caller: Caller = request["caller"]
    return ctx, app, version, caller.actor


async def _pin(request: web.Request, pinned: bool) -> web.Response:
    ctx, app, version, actor = _target(request)
    result = await ctx.manager(app, actor).pin(version, pinned)
    return web.json_response(OperationResult.model_validate(result.to_json()).to_json())


@mark_routes.post("/v1/apps/{app}/releases/{version}/pin", name="pin", expect_handler=_defer_expect)
async def pin(request: web.Request) -> web.Response:
    return await _pin(request, True)


@mark_routes.post(
    "/v1/apps/{app}/releases/{version}/unpin", name="unpin", expect_handler=_defer_expect
)
async def unpin(request: web.Request) -> web.Response:
    return await _pin(request, False)


@mark_routes.post(
    "/v1/apps/{app}/releases/{version}/clear-bad", name="clear_bad", expect_handler=_defer_expect
)
async def clear_bad(request: web.Request) -> web.Response:
    ctx, app, version, actor = _target(request)
    result = await ctx.manager(app, actor).clear_bad(version)
    return web.json_response(OperationResult.model_validate(result.to_json()).to_json())
