"""What the route handlers of the agent API share (agent/daemon/routes.py, package_routes.py):
the context, the caller, validated path parameters, JSON bodies, and the ``202`` answer."""

from __future__ import annotations

from typing import TypeVar

from aiohttp import web

from cutover.agent.api_models import Accepted
from cutover.agent.daemon.auth import CTX_KEY, Caller
from cutover.agent.daemon.bodies import ActivateBody, FetchBody, RollbackBody, parse_json_body
from cutover.agent.daemon.context import AgentContext
from cutover.agent.daemon.operations import Operation
from cutover.agent.errors import NotFoundError, RequestError
from cutover.agent.package.manifest import APP_RE
from cutover.agent.versions import VERSION_RE

__all__ = [
    "accepted",
    "accepted_body",
    "app_param",
    "caller_of",
    "ctx_of",
    "defer_expect",
    "json_body",
    "no_body",
    "version_param",
]

_M = TypeVar("_M", ActivateBody, RollbackBody, FetchBody)


def ctx_of(request: web.Request) -> AgentContext:
    return request.app[CTX_KEY]


def caller_of(request: web.Request) -> Caller:
    caller: Caller = request["caller"]
    return caller


def app_param(request: web.Request) -> str:
    app = request.match_info["app"]
    if not APP_RE.fullmatch(app) or app not in ctx_of(request).config.apps:
        raise NotFoundError(f"app {app!r} is not configured on this agent")
    return app


def version_param(request: web.Request) -> str:
    version = request.match_info["version"]
    if not VERSION_RE.fullmatch(version):
        raise RequestError(f"invalid version {version!r}: use [A-Za-z0-9._+-], at most 128")
    return version


def json_body(request: web.Request, model: type[_M]) -> _M:
    return parse_json_body(request.headers.get("Content-Type", ""), request["body"], model)


def no_body(request: web.Request) -> None:
    if request["body"]:
        raise RequestError("this endpoint takes no body")


async def defer_expect(request: web.Request) -> None:
    """aiohttp would answer ``Expect: 100-continue`` before any middleware ran, i.e. before
    authentication; the answer is sent by :func:`agent.daemon.auth.stream_body` instead."""


def accepted(op: Operation) -> web.Response:
    return web.json_response(accepted_body(op).to_json(), status=202)


def accepted_body(op: Operation) -> Accepted:
    """The ``202`` body of ``op`` (its status as of now)."""
    return Accepted.model_validate(
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
