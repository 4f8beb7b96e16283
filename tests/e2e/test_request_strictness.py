"""Issue 14, items 4-6 against a real agent over raw sockets: ``Expect: 100-continue`` only after
authentication, the JSON body deadline names its setting, the audit trail names the key of a
refused replay or role, no version banner, malformed HTTP answered in our JSON without echoing
it, and /metrics does not reveal the route table to unauthenticated clients."""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from pathlib import Path
from typing import Any

import pytest

from cutover.controller.client import signed_headers
from tests.e2e.conftest import APP, Agent, send_raw

pytestmark = pytest.mark.e2e

UPLOAD = f"/v1/apps/{APP}/releases/1.0.0"


def _signed(agent: Agent, method: str, target: str, body: bytes, ctype: str) -> dict[str, str]:
    path, _, query = target.partition("?")
    return signed_headers(
        agent.keys.deploy,
        method,
        agent.name,
        path,
        query,
        content_type=ctype,
        body_sha256=hashlib.sha256(body).digest(),
    )


async def _expect_continue(
    agent: Agent, headers: dict[str, str], body: bytes
) -> tuple[bytes, asyncio.StreamReader, asyncio.StreamWriter]:
    """Send a PUT head with ``Expect: 100-continue`` and no body; return the first answer."""
    reader, writer = await asyncio.open_connection("127.0.0.1", agent.port)
    head = f"PUT {UPLOAD} HTTP/1.1\r\nHost: {agent.name}\r\nContent-Length: {len(body)}\r\n"
    head += "Expect: 100-continue\r\n"
    head += "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    writer.write(head.encode() + b"\r\n")
    first = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 60)
    return first, reader, writer


@pytest.mark.parametrize("signature", ["none", "bad"])
async def test_refused_put_gets_401_without_100_continue(
    agent: Agent, packages: dict[str, Path], signature: str
) -> None:
    data = packages["1.0.0"].read_bytes()
    headers = {"Content-Type": "application/octet-stream"}
    if signature == "bad":
        headers = _signed(agent, "PUT", UPLOAD, data, "application/octet-stream")
        headers["Content-Digest"] = "sha-256=:" + "A" * 43 + "=:"  # not what was signed
    before = agent.snapshot()
    first, _, writer = await _expect_continue(agent, headers, data)
    writer.close()
    assert first.startswith(b"HTTP/1.1 401 "), first
    assert b"100 Continue" not in first
    assert agent.snapshot() == before


async def test_signed_put_gets_100_continue_then_202(
    agent: Agent, packages: dict[str, Path]
) -> None:
    data = packages["1.0.0"].read_bytes()
    headers = _signed(agent, "PUT", UPLOAD, data, "application/octet-stream")
    first, reader, writer = await _expect_continue(agent, headers, data)
    try:
        assert first == b"HTTP/1.1 100 Continue\r\n\r\n"
        writer.write(data)
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 60)
        assert head.startswith(b"HTTP/1.1 202 "), head
    finally:
        writer.close()
    async with agent.client() as c:
        ops = await c.apps()
        deadline = asyncio.get_running_loop().time() + 60
        while not ops.apps[0].staged:
            assert asyncio.get_running_loop().time() < deadline, ops
            await asyncio.sleep(0.1)
            ops = await c.apps()
    assert (agent.root / "releases" / "1.0.0").is_dir()


async def test_json_body_deadline_is_a_setting_named_by_the_408(make_agent: Any) -> None:
    """A JSON body trickled slower than json_body_timeout_s, but never idle for
    upload_idle_timeout_s, gets 408 naming agent.json_body_timeout_s; nothing changes."""
    agent: Agent = make_agent(json_body_timeout_s=1.0, upload_idle_timeout_s=30.0)
    agent.start()
    before = agent.snapshot()
    target = f"/v1/apps/{APP}/activate"
    body = json.dumps({"version": "1.0.0"}).encode()
    headers = _signed(agent, "POST", target, body, "application/json")
    reader, writer = await asyncio.open_connection("127.0.0.1", agent.port)
    try:
        head = f"POST {target} HTTP/1.1\r\nHost: {agent.name}\r\nContent-Length: {len(body)}\r\n"
        head += "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        writer.write(head.encode() + b"\r\n")
        for byte in body[:-1]:  # one byte every 0.25 s: never idle, always too slow in total
            writer.write(bytes([byte]))
            await writer.drain()
            await asyncio.sleep(0.25)
            if reader.at_eof() or len(reader._buffer):  # type: ignore[attr-defined]
                break
        answer = await asyncio.wait_for(reader.read(), 60)
    finally:
        writer.close()
    status_line, _, rest = answer.partition(b"\r\n")
    assert status_line.startswith(b"HTTP/1.1 408 "), answer
    payload = json.loads(rest.split(b"\r\n\r\n", 1)[1])
    assert payload["error"] == "body_timeout"
    assert "agent.json_body_timeout_s" in payload["message"]
    assert agent.snapshot() == before


async def test_refusals_after_a_verified_signature_log_the_keyid(agent: Agent) -> None:
    """``replayed`` and ``forbidden_role`` happen after the signature verified: the request line
    names the key that signed (today: null)."""
    headers = list(_signed(agent, "GET", "/v1/apps", b"", "").items())
    assert (await send_raw(agent.port, "GET", "/v1/apps", headers)).status == 200
    replay = await send_raw(agent.port, "GET", "/v1/apps", headers)
    assert (replay.status, replay.code) == (401, "replayed")
    target = f"/v1/apps/{APP}/releases/1.0.0"
    read_headers = signed_headers(
        agent.keys.read,
        "DELETE",
        agent.name,
        target,
        "",
        content_type="",
        body_sha256=hashlib.sha256(b"").digest(),
    )
    role = await send_raw(agent.port, "DELETE", target, list(read_headers.items()))
    assert (role.status, role.code) == (401, "forbidden_role")
    lines = {e["error"]: e for e in agent.log_events() if e.get("event") == "request"}
    assert lines["replayed"]["keyid"] == agent.keys.deploy.keyid[:16]
    assert lines["forbidden_role"]["keyid"] == agent.keys.read.keyid[:16]


async def test_no_version_banner(agent: Agent) -> None:
    ok = await send_raw(agent.port, "GET", "/v1/health", [])
    refused = await send_raw(agent.port, "GET", "/v1/apps", [])
    for resp in (ok, refused):
        assert resp.headers["server"] == "cutover-agent"


@pytest.mark.parametrize(
    "request_bytes",
    [
        pytest.param(
            b"GET /v1/health HTTP/1.1\r\nHost: x\r\nBad\x01Header: SECRET-1\r\n\r\n",
            id="ctl-in-header",
        ),
        pytest.param(b"GE\x00T /SECRET-1 HTTP/1.1\r\nHost: x\r\n\r\n", id="nul-in-method"),
        pytest.param(
            b"GET /v1/health HTTP/1.1\r\nContent-Length: SECRET-1\r\n\r\n", id="bad-length"
        ),
    ],
)
async def test_malformed_http_gets_our_json_400_without_echo(
    agent: Agent, request_bytes: bytes
) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", agent.port)
    try:
        writer.write(request_bytes)
        answer = await asyncio.wait_for(reader.read(), 60)
    finally:
        writer.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.split(b" ", 2)[1] == b"400", answer
    assert json.loads(body)["error"] == "bad_request"
    assert b"SECRET" not in answer
    assert b"server: cutover-agent" in head.lower()
    metrics = (await send_raw(agent.port, "GET", "/metrics", [])).body.decode()
    assert 'cutover_http_requests_total{method="OTHER",route="malformed",status="400"}' in metrics
    # Wait for the agent's own line about it (not a fixed sleep), then look at the whole log.
    deadline = time.monotonic() + 60
    while not any(e.get("event") == "malformed_requests" for e in agent.log_events()):
        assert time.monotonic() < deadline, agent.log_text()
        await asyncio.sleep(0.05)
    log = agent.log_text()
    assert "Traceback" not in log and "SECRET" not in log


async def test_metrics_do_not_reveal_routes_to_unauthenticated_clients(agent: Agent) -> None:
    """An unsigned probe of a real route and of a made-up one are counted the same way."""
    for target in (f"/v1/apps/{APP}", "/v1/apps", "/v1/no/such/thing", "/admin"):
        assert (await send_raw(agent.port, "GET", target, [])).status == 401
    text = (await send_raw(agent.port, "GET", "/metrics", [])).body.decode()
    assert 'cutover_http_requests_total{method="GET",route="unmatched",status="401"} 4.0' in text
    assert 'route="/v1/apps/{app}"' not in text and 'route="/v1/apps"' not in text
