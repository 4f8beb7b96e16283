"""The agent daemon: HTTP server, routes, auth middleware, operations, nonces, fetch, metrics."""

from __future__ import annotations

from cutover.agent.daemon.nonces import NonceStore
from cutover.agent.daemon.server import serve

__all__ = [
    "NonceStore",
    "serve",
]
