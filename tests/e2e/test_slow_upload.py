"""A slow upload holds no lock (issue 14 item 7), against a real daemon over a raw socket.

The test sends half of a signed upload body, then holds the rest back while other operations run
on the same app; only then does it send the rest. The upload reserves the app once its bytes are
spooled: it stages if it still applies, and is refused with a reason (nothing changed, the spool
emptied) if the app changed so that it no longer does, or is busy at that moment.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from cutover.controller.client import AgentClient
from tests.e2e.conftest import APP, SLOW_VERSION, Agent, RawResponse, send_raw

SLOW = {"upload_idle_timeout_s": 30.0}


async def _wait_for(cond: Any, timeout_s: float = 15.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)


@asynccontextmanager
async def _held_upload(agent: Agent, version: str, data: bytes) -> AsyncIterator[Any]:
    """A signed upload whose first half is sent on entry, once the agent is reading the body.

    Yields ``finish()``: sends the rest and returns the response.
    """
    target = f"/v1/apps/{APP}/releases/{version}"
    headers = agent.upload_headers(target, data)
    reader, writer = await asyncio.open_connection("127.0.0.1", agent.port)
    lines = [f"PUT {target} HTTP/1.1", f"Host: {agent.name}", "Connection: close"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    lines.append(f"Content-Length: {len(data)}")
    writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + data[: len(data) // 2])
    await writer.drain()
    spool = agent.state_dir / "uploads"
    await _wait_for(lambda: any(spool.iterdir()))  # admitted; the body is being read

    async def finish() -> RawResponse:
        writer.write(data[len(data) // 2 :])
        await writer.drain()
        async with asyncio.timeout(30):
            head = await reader.readuntil(b"\r\n\r\n")
            body = await reader.read()
        status = int(head.split(b" ", 2)[1])
        return RawResponse(status, {}, body)

    try:
        yield finish
    finally:
        writer.close()


async def _stage(c: AgentClient, version: str, packages: dict[str, Path]) -> None:
    record = await c.wait((await c.upload(APP, version, packages[version])).operation)
    assert record.status == "succeeded", record


async def test_other_operations_proceed_while_an_upload_trickles_then_it_stages(
    make_agent: Any, packages: dict[str, Path]
) -> None:
    agent: Agent = make_agent(**SLOW)
    agent.start()
    async with agent.client() as c:
        for v in ("1.0.0", "1.1.0"):
            await _stage(c, v, packages)
        assert (await c.wait((await c.activate(APP, "1.0.0")).operation)).status == "succeeded"
        async with _held_upload(agent, "1.2.0", packages["1.2.0"].read_bytes()) as finish:
            (demo,) = (await c.apps()).apps
            assert demo.busy is None  # the trickling upload holds nothing
            done = await c.wait((await c.activate(APP, "1.1.0")).operation)
            assert done.status == "succeeded", done
            done = await c.wait((await c.rollback(APP)).operation)
            assert done.status == "succeeded", done
            assert agent.current() == "releases/1.0.0"
            answer = await finish()
        assert answer.status == 202, answer.body
        staged = await c.wait(answer.json["operation"])
        assert staged.status == "succeeded", staged
        (demo,) = (await c.apps()).apps
        assert demo.current == "1.0.0" and "1.2.0" in demo.staged
    assert list((agent.state_dir / "uploads").iterdir()) == []


async def test_an_upload_that_no_longer_applies_or_finds_the_app_busy_is_refused(
    make_agent: Any, packages: dict[str, Path]
) -> None:
    """Two ways the app changes under a trickling upload; each refusal changes nothing."""
    agent: Agent = make_agent(**SLOW)
    agent.start()
    shared = agent.root / "shared"
    async with agent.client() as c:
        # 1. a newer version is staged meanwhile: the stage re-checks and refuses the downgrade
        async with _held_upload(agent, "1.0.0", packages["1.0.0"].read_bytes()) as finish:
            await _stage(c, "1.2.0", packages)
            before = agent.snapshot()
            answer = await finish()
        assert answer.status == 202, answer.body
        refused = await c.wait(answer.json["operation"])
        assert refused.status == "failed" and refused.error is not None
        assert refused.error.error == "downgrade", refused.error
        after = agent.snapshot()
        assert after["uploads"] == [] and after["releases"] == before["releases"]
        assert after["current"] == before["current"] and after["state"] == before["state"]

        # 2. the app is busy when the bytes are in: 409 naming the holder, the spool emptied
        await _stage(c, SLOW_VERSION, packages)
        async with _held_upload(agent, "1.1.0", packages["1.1.0"].read_bytes()) as finish:
            slow = await c.activate(APP, SLOW_VERSION)
            await _wait_for(lambda: (shared / "hook-started").exists())
            before = agent.snapshot()
            answer = await finish()
            assert answer.status == 409, answer.body
            assert answer.json["holder"]["id"] == slow.operation
            assert "was received" in answer.json["message"]
            assert "became busy while it arrived" in answer.json["message"]
            assert agent.snapshot() == {**before, "uploads": []}
            # the whole, hash-correct package is kept as a partial, not deleted
            whole = packages["1.1.0"].read_bytes()
            (kept,) = (agent.state_dir / "resume" / APP).iterdir()
            assert kept.read_bytes() == whole
            assert f"resume at offset {len(whole)}" in answer.json["message"]
        (shared / "hook-release").touch()
        assert (await c.wait(slow.operation)).status == "succeeded"
        (demo,) = (await c.apps()).apps
        assert "1.1.0" not in demo.staged and demo.current == SLOW_VERSION
        # once the app is free, an empty resume at the package's size reaches the stage (which
        # refuses it as a downgrade of the 1.2.0 staged above: the whole package was there)
        path = f"/v1/apps/{APP}/releases/1.1.0"
        query = f"sha256={hashlib.sha256(whole).hexdigest()}&offset={len(whole)}"
        head = agent.upload_headers(path, b"", query)
        done = await send_raw(agent.port, "PUT", f"{path}?{query}", list(head.items()), b"")
        assert done.status == 202, done.body
        staged = await c.wait(done.json["operation"])
        assert staged.status == "failed" and staged.error is not None
        assert staged.error.error == "downgrade", staged.error
        assert list((agent.state_dir / "resume" / APP).iterdir()) == []
