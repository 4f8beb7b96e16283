"""The upload spool goes once the stage has taken the package (agent/lifecycle/stage.py, after
extract or claim): before the release is sealed and made durable, so the spool's dirty pages
are dropped instead of written back by the stage's syncfs (docs/lifecycle.md §1.3).

A stage worker pauses at the fault point ``worker.readonly`` (the seal, whose syncfs comes
first), so "after extraction, before anything is durable" is a state the test observes, never a
timing. The on-host CLI stages a file it does not own: it never removes it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import (
    AGENT,
    APP,
    Agent,
    Keys,
    pause_at,
    signed_package,
    stage_worker_pids,
    wait_until,
)

pytestmark = pytest.mark.e2e

BLOB = 10 << 20  # incompressible: a payload of three 4 MiB chunks


def _package(tmp: Path, keys: Keys, version: str) -> Path:
    files = {"a/index.php": f"<?php echo '{version}';\n", "zz.bin": os.urandom(BLOB)}
    return signed_package(tmp, keys.release, version, files)


def _open_under(folder: Path) -> dict[int, list[str]]:
    """Every process's open descriptors on files under ``folder`` (deleted ones too)."""
    found: dict[int, list[str]] = {}
    prefix = str(folder) + "/"
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            targets = [os.readlink(fd) for fd in (proc / "fd").iterdir()]
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
        hits = [t for t in targets if t.startswith(prefix)]
        if hits:
            found[int(proc.name)] = hits
    return found


def _releases(agent: Agent) -> dict[str, Any]:
    state = agent.meta / "state.json"
    return json.loads(state.read_text()).get("releases", {}) if state.exists() else {}


@pytest.mark.parametrize("stream_uploads", [False, True], ids=["stage-extracts", "streamed"])
async def test_the_spool_is_gone_before_the_release_is_sealed_and_made_durable(
    make_agent: Any, keys: Keys, tmp_path: Path, stream_uploads: bool
) -> None:
    marker = tmp_path / "paused"
    agent: Agent = make_agent(
        max_upload_bytes=64 << 20,
        stream_uploads=stream_uploads,
        upload_timeout_s=120.0,
        app_toml='reuse = "off"\n',
    )
    agent.start(env=pause_at("worker.readonly", marker))
    uploads = agent.state_dir / "uploads"
    before = agent.snapshot()
    pkg = _package(tmp_path, keys, "1.0.0")
    async with agent.client(upload_timeout_s=120) as c:
        op = (await c.upload(APP, "1.0.0", pkg)).operation
        wait_until(marker.exists, "the stage's worker paused before sealing the release")
        # extracted, not yet sealed, synced or recorded: the spool is already gone, and no
        # process (the daemon, the stage's worker) keeps it alive through a descriptor
        assert sorted(p.name for p in uploads.iterdir()) == []
        assert _open_under(uploads) == {}
        assert "1.0.0" not in _releases(agent)
        assert (agent.root / "releases" / "1.0.0").is_dir()  # installed, unrecorded
        # the path the parameter names: the stage took the streamed tree, or extracted itself
        claimed = [e for e in agent.log_events() if e.get("event") == "stream_stage_claimed"]
        assert len(claimed) == (1 if stream_uploads else 0)
        # a stage failing from here on fails as before: nothing left, nothing recorded staged
        os.kill(stage_worker_pids(agent)[-1], signal.SIGKILL)
        record = await c.wait(op)
    assert record.status == "failed", record
    after = agent.snapshot()
    assert after["current"] == before["current"] is None
    assert after["releases"] == before["releases"] == []
    assert after["incoming"] == [] and after["uploads"] == []
    assert _releases(agent)["1.0.0"]["status"] == "failed"
    # the same package stages once uploaded again (nothing of the first attempt is needed)
    assert agent.stop() == 0
    agent.start()
    async with agent.client(upload_timeout_s=120) as c:
        staged = await c.wait((await c.upload(APP, "1.0.0", pkg)).operation)
    assert staged.status == "succeeded", staged
    assert _releases(agent)["1.0.0"]["status"] == "staged"
    assert agent.snapshot()["uploads"] == [] and _open_under(uploads) == {}


def test_the_cli_never_removes_the_package_it_stages(keys: Keys, tmp_path: Path) -> None:
    agent = Agent(tmp_path / "host", keys)
    pkg = _package(tmp_path, keys, "1.0.0")
    content = pkg.read_bytes()
    proc = subprocess.run(
        [str(AGENT), "--config", str(agent.config), "--json", "stage", str(pkg)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert _releases(agent)["1.0.0"]["status"] == "staged"
    assert pkg.read_bytes() == content  # still there, unchanged
