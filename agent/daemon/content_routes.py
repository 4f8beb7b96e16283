"""The content endpoint of the agent API (docs/protocol.md, "Missing contents").

``POST /v1/apps/{app}/releases/{version}/missing`` with ``{"digests": [sha256 hex, ...]}`` answers
``{"missing": [...], "present": N}``: which of those file contents no installed release of the
app holds (``version`` itself included, so re-pushing an installed release sends almost nothing) (the content index, agent/host/content.py), in the order given, and how many it does.
A controller then uploads a thin payload holding only the missing ones (a delta upload). It
needs a ``deploy`` key (a POST: the auth middleware checks the role); its body may be up to
16 MiB (``JSON_BODY_CAPS`` in agent/daemon/auth.py), 200,000 digests. Read-only: it takes no
lock and reads the state file as it stands (replaced atomically), so a busy app still answers.
Under ``reuse = "off"`` every digest is missing (the host reuses nothing).
"""

from __future__ import annotations

import asyncio

from aiohttp import web

from cutover.agent.daemon.auth import CTX_KEY
from cutover.agent.daemon.bodies import MissingBody, check_query, parse_json_body
from cutover.agent.errors import NotFoundError, RequestError
from cutover.agent.host.content import ContentIndex
from cutover.agent.package.manifest import APP_RE
from cutover.agent.versions import VERSION_RE

__all__ = ["content_routes"]

content_routes = web.RouteTableDef()


async def _defer_expect(request: web.Request) -> None:
    """As in agent/daemon/routes.py: ``100-continue`` is answered after authentication."""


@content_routes.post(
    "/v1/apps/{app}/releases/{version}/missing", name="missing", expect_handler=_defer_expect
)
async def missing(request: web.Request) -> web.Response:
    check_query(request)
    ctx = request.app[CTX_KEY]
    app = request.match_info["app"]
    if not APP_RE.fullmatch(app) or app not in ctx.config.apps:
        raise NotFoundError(f"app {app!r} is not configured on this agent")
    version = request.match_info["version"]
    if not VERSION_RE.fullmatch(version):
        raise RequestError(f"invalid version {version!r}: use [A-Za-z0-9._+-], at most 128")
    body = parse_json_body(request.headers.get("Content-Type", ""), request["body"], MissingBody)
    section = ctx.config.apps[app]

    def answer() -> list[str]:
        if section.reuse == "off":
            return list(body.digests)
        layout = ctx.layout(app)
        index = ContentIndex.build(layout, ctx.read_state(app))
        return index.missing(body.digests)

    lacking = await asyncio.to_thread(answer)
    return web.json_response({"missing": lacking, "present": len(body.digests) - len(lacking)})
