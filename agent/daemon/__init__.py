"""The agent daemon: HTTP server, connection guard, routes and request bodies, auth middleware,
operations, nonces, fetch and its policy, metrics."""

from __future__ import annotations

from cutover.agent.daemon.nonces import NonceStore
from cutover.agent.daemon.server import serve

__all__ = [
    "NonceStore",
    "serve",
]
