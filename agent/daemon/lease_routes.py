"""The lease endpoints of the agent API (docs/protocol.md §Leases); the rules are agent/daemon/leases.py.

``POST /v1/apps/{app}/lease`` takes, renews or steals the app's lease (``200`` with the lease,
``409 locked`` naming the holder; a steal is journaled in the app's journal as ``lease.stolen``
with the actor, its key id and the previous holder); ``DELETE /v1/apps/{app}/lease/{id}``
releases it (``200`` ``{"released": bool}``, idempotent). Both need a ``deploy`` key (the auth
middleware checks it).
"""

from __future__ import annotations

import asyncio
import re

from aiohttp import web

from cutover.agent.daemon.auth import CTX_KEY, Caller
from cutover.agent.daemon.bodies import LEASE_ID_PATTERN, LeaseBody, check_query, parse_json_body
from cutover.agent.daemon.leases import Lease, LeaseTable
from cutover.agent.errors import LockedError, NotFoundError, RequestError, UnavailableError
from cutover.agent.host.ledger import Ledger
from cutover.agent.host.lock import AppLock
from cutover.agent.package.manifest import APP_RE

__all__ = ["LEASE_ID_RE", "lease_routes"]

LEASE_ID_RE = re.compile(LEASE_ID_PATTERN)

lease_routes = web.RouteTableDef()


async def _defer_expect(request: web.Request) -> None:
    """As in agent/daemon/routes.py: ``100-continue`` is answered after authentication."""


def _table(request: web.Request) -> LeaseTable:
    table = request.app[CTX_KEY].leases
    if table is None:
        raise UnavailableError("leases are not available on this agent")
    return table


def _app(request: web.Request) -> str:
    app = request.match_info["app"]
    if not APP_RE.fullmatch(app) or app not in request.app[CTX_KEY].config.apps:
        raise NotFoundError(f"app {app!r} is not configured on this agent")
    return app


@lease_routes.post("/v1/apps/{app}/lease", name="lease", expect_handler=_defer_expect)
async def lease(request: web.Request) -> web.Response:
    check_query(request)
    app = _app(request)
    caller: Caller = request["caller"]
    body = parse_json_body(request.headers.get("Content-Type", ""), request["body"], LeaseBody)
    layout = request.app[CTX_KEY].layout(app)

    def journal_steal(new: Lease, replaced: Lease) -> None:
        """The steal goes into the app's journal too, under the app lock (the journal's chain
        head is only valid while it is held); a busy app refuses the steal, changing nothing."""
        try:
            with AppLock(layout.lock_file, app, f"lease steal by {caller.actor}"):
                ledger = Ledger(app, layout)
                ledger.forget_head()
                ledger.log(
                    "lease.stolen",
                    lease=new.id,
                    rollout=new.rollout,
                    owner=new.owner,
                    actor=caller.actor,
                    keyid=caller.keyid,
                    replaced=replaced.holder(),
                )
        except LockedError as exc:
            raise LockedError(
                f"cannot take over the lease of rollout {replaced.rollout} now: {exc}",
                holder=exc.holder,
            ) from exc

    taken = await asyncio.to_thread(
        _table(request).acquire,
        app,
        rollout=body.rollout,
        owner=body.owner,
        actor=caller.actor,
        ttl_s=body.ttl_s,
        steal=body.steal,
        renew=body.lease,
        on_steal=journal_steal,
    )
    return web.json_response(taken.to_json())


@lease_routes.delete(
    "/v1/apps/{app}/lease/{lease_id}", name="lease_release", expect_handler=_defer_expect
)
async def release(request: web.Request) -> web.Response:
    check_query(request)
    app = _app(request)
    lease_id = request.match_info["lease_id"]
    if not LEASE_ID_RE.fullmatch(lease_id):
        raise RequestError(f"{lease_id!r} is not a lease id")
    if request["body"]:
        raise RequestError("this endpoint takes no body")
    caller: Caller = request["caller"]
    released = await asyncio.to_thread(_table(request).release, app, lease_id, caller.actor)
    return web.json_response({"app": app, "lease": lease_id, "released": released})
