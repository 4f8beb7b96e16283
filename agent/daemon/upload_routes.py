"""The resume query of the upload API (docs/protocol.md §Resumable uploads).

``GET /v1/apps/{app}/releases/{version}/upload/{sha256}`` answers how many bytes of the package
with that SHA-256 the agent holds (``{"offset": N}``; 0: none), so a controller resumes its
``PUT`` at ``?sha256=HEX&offset=N``. Signed like every request (a ``read`` key may ask); the rules
of the spool are agent/daemon/uploads.py.
"""

from __future__ import annotations

import asyncio

from aiohttp import web

from cutover.agent.api_models import UploadStatus
from cutover.agent.daemon.auth import CTX_KEY
from cutover.agent.daemon.bodies import check_query
from cutover.agent.daemon.uploads import SHA256_RE, UploadKey
from cutover.agent.errors import NotFoundError, RequestError
from cutover.agent.package.manifest import APP_RE
from cutover.agent.versions import VERSION_RE

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
    app, version, sha = (request.match_info[k] for k in ("app", "version", "sha256"))
    if not APP_RE.fullmatch(app) or app not in ctx.config.apps:
        raise NotFoundError(f"app {app!r} is not configured on this agent")
    if not VERSION_RE.fullmatch(version):
        raise RequestError(f"invalid version {version!r}: use [A-Za-z0-9._+-], at most 128")
    if not SHA256_RE.fullmatch(sha):
        raise RequestError("the package's SHA-256 must be 64 lowercase hex digits")
    key = UploadKey(app, version, sha)
    held = await asyncio.to_thread(ctx.spool.held, key)
    body = UploadStatus(app=app, version=version, sha256=sha, offset=held, busy=ctx.spool.busy(key))
    return web.json_response(body.to_json())
