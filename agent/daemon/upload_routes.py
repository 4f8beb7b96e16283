"""The resume query of the upload API (docs/protocol.md §Resumable uploads).

``GET /v1/apps/{app}/releases/{version}/upload/{sha256}`` answers how many bytes of the package
with that SHA-256 the agent holds (``{"offset": N}``; 0: none), so a controller resumes its
``PUT`` at ``?sha256=HEX&offset=N``. Signed like every request; the offset is that of the bytes the
asking key sent (another key's partial answers 0: it cannot resume it). When that key's upload
of the package completed and an operation took it, ``operation`` is that operation's ``202`` (as
of now), so a sender whose connection broke before the ``202`` follows it. The rules of the spool are
agent/daemon/uploads.py.
"""

from __future__ import annotations

import asyncio

from aiohttp import web

from cutover.agent.api_models import Accepted, UploadStatus
from cutover.agent.daemon._handlers import accepted_body, app_param, version_param
from cutover.agent.daemon.auth import CTX_KEY, Caller
from cutover.agent.daemon.bodies import check_query
from cutover.agent.daemon.context import AgentContext
from cutover.agent.daemon.uploads import SHA256_RE, UploadKey, owner_of
from cutover.agent.errors import NotFoundError, RequestError

__all__ = ["upload_routes"]

upload_routes = web.RouteTableDef()


async def _defer_expect(request: web.Request) -> None:
    """As in agent/daemon/routes.py: ``100-continue`` is answered after authentication."""


@upload_routes.get(
    "/v1/apps/{app}/releases/{version}/upload/{sha256}",
    name="upload_status",
    expect_handler=_defer_expect,
)
async def upload_status(request: web.Request) -> web.Response:
    check_query(request)
    ctx = request.app[CTX_KEY]
    app, version, sha = app_param(request), version_param(request), request.match_info["sha256"]
    if not SHA256_RE.fullmatch(sha):
        raise RequestError("the package's SHA-256 must be 64 lowercase hex digits")
    key = UploadKey(app, version, sha)
    caller: Caller = request["caller"]  # the bytes it may resume from: those it sent
    owner = owner_of(caller.keyid)
    held = await asyncio.to_thread(ctx.spool.held, key, owner)
    body = UploadStatus(
        app=app,
        version=version,
        sha256=sha,
        offset=held,
        busy=ctx.spool.busy(key),
        operation=_taken_by(ctx, key, owner),
    )
    return web.json_response(body.to_json())


def _taken_by(ctx: AgentContext, key: UploadKey, owner: str) -> Accepted | None:
    """The operation that took ``owner``'s completed upload of ``key``, if still known."""
    op_id = ctx.spool.taken(key, owner)
    if op_id is None:
        return None
    try:
        return accepted_body(ctx.registry.get(op_id))
    except NotFoundError:  # forgotten since (many newer operations)
        return None
