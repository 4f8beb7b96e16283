"""The agent daemon: HTTP server, connection guard, routes and request bodies, auth middleware,
operations, nonces, fetch and its policy, leases (the fleet-wide lock of a rollout), metrics."""

from __future__ import annotations

from cutover.agent.daemon.leases import Lease, LeaseTable
from cutover.agent.daemon.nonces import NonceStore
from cutover.agent.daemon.server import serve

__all__ = [
    "Lease",
    "LeaseTable",
    "NonceStore",
    "serve",
]
