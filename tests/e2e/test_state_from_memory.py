"""GET /v1/apps and /v1/apps/{app} answer from the state held in memory while the state file is
unchanged (agent/daemon/context.py): a change made by another process (the on-host CLI) or by
the daemon's own operations is still seen by the very next request."""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path

import pytest

from tests.e2e.conftest import AGENT, APP, Agent

pytestmark = pytest.mark.e2e


def _cli(agent: Agent, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(AGENT), "--config", str(agent.config), "--json", *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


async def test_a_change_by_the_cli_is_seen_by_the_next_request(
    agent: Agent, packages: dict[str, Path]
) -> None:
    async with agent.client() as c:
        assert (await c.app(APP)).releases == []  # read once: now held in memory
        assert [a.staged for a in (await c.apps()).apps] == [[]]
        staged = await asyncio.to_thread(_cli, agent, "stage", str(packages["1.0.0"]))
        assert staged.returncode == 0, staged.stdout + staged.stderr
        detail = await c.app(APP)
        assert {r.version: r.status for r in detail.releases} == {"1.0.0": "staged"}
        assert [a.staged for a in (await c.apps()).apps] == [["1.0.0"]]
        activated = await asyncio.to_thread(_cli, agent, "activate", "1.0.0")
        assert activated.returncode == 0, activated.stdout + activated.stderr
        assert (await c.app(APP)).current == "1.0.0"
        # and a change by the daemon's own operation
        await c.wait((await c.upload(APP, "1.1.0", packages["1.1.0"])).operation)
        assert (await c.apps()).apps[0].staged == ["1.1.0"]
