"""``cutover-agent``: the on-host CLI (the emergency path; works with the daemon stopped)."""

from __future__ import annotations

from cutover.agent.cli._main import main

__all__ = ["main"]
