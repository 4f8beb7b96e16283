"""Retention by disk against a real daemon and the real filesystem (issue 12 item 6).

The app's ``min_free_bytes`` is set above what the filesystem of its root could ever have free,
so a stage is refused before anything of the release is written, with a message naming what it
needs, what is free and the threshold; nothing on the host changes.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from tests.e2e.conftest import APP, Agent


async def test_a_threshold_above_the_real_free_space_refuses_the_stage_before_writing(
    tmp_path: Path, make_agent: Any, packages: dict[str, Path]
) -> None:
    st = os.statvfs(tmp_path)
    threshold = 2 * st.f_blocks * st.f_frsize  # more than the filesystem's size
    agent: Agent = make_agent(app_toml=f"min_free_bytes = {threshold}")
    agent.start()
    before = agent.snapshot()
    async with agent.client() as c:
        record = await c.wait((await c.upload(APP, "1.0.0", packages["1.0.0"])).operation)
    assert record.status == "failed" and record.error is not None, record
    assert (record.error.error, record.error.kind) == ("insufficient_space", "storage")
    message = record.error.message
    assert "not enough disk space to stage demo 1.0.0" in message
    assert f"{threshold} must stay free" in message and " are free " in message
    assert "Nothing of 1.0.0 was written" in message
    assert agent.snapshot() == before
    assert list((agent.root / ".cutover" / "trash").iterdir()) == []
    assert not (agent.root / "releases" / "1.0.0").exists()
