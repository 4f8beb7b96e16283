"""Hostile connections against a real agent (issue 14, item 1): idle, partial-header, keep-alive
and stalled-body sockets are closed by the configured timeouts; one address cannot take the
agent's file descriptors; the controller is still served; the log stays small.

Timeouts are configured short (about a second) so the tests are quick; nothing asserts a
duration: waits have generous deadlines and assert the outcome.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hashlib
import re
import select
import socket
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from cutover.controller.client import signed_headers
from tests.e2e.conftest import APP, Agent

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

FAST = {
    "header_timeout_s": 1.0,
    "keepalive_timeout_s": 1.0,
    "body_timeout_s": 1.5,
    "max_connections": 512,
    "max_unauthenticated_per_peer": 32,
}


def _closed_by_peer(sock: socket.socket) -> bool:
    """True once the agent closed (or reset) ``sock``; never blocks."""
    poller = select.poll()  # select() cannot take fds above 1023
    poller.register(sock, select.POLLIN | select.POLLHUP | select.POLLERR)
    if not poller.poll(0):
        return False
    try:
        return sock.recv(65536) == b""
    except ConnectionResetError:
        return True
    except OSError as exc:
        return exc.errno in (errno.ECONNRESET, errno.EPIPE)


def _wait_all_closed(socks: list[socket.socket], deadline_s: float) -> list[socket.socket]:
    """Wait until the agent closed every socket; returns those still open at the deadline."""
    pending = list(socks)
    end = time.monotonic() + deadline_s
    while pending and time.monotonic() < end:
        pending = [s for s in pending if not _closed_by_peer(s)]
        if pending:
            time.sleep(0.1)
    return pending


def _settles_to(agent: Agent, expected: dict[str, Any], deadline_s: float = 10) -> bool:
    """Wait (bounded) for the agent's spool cleanup after a cut connection."""
    end = time.monotonic() + deadline_s
    while agent.snapshot() != expected and time.monotonic() < end:
        time.sleep(0.1)
    return agent.snapshot() == expected


@pytest.fixture
def sockets() -> Iterator[list[socket.socket]]:
    made: list[socket.socket] = []
    yield made
    for s in made:
        s.close()


def _connect(port: int, source: str) -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.bind((source, 0))
        s.settimeout(60)  # a deadline for a loaded machine, not an expectation
        s.connect(("127.0.0.1", port))
        s.setblocking(False)
    except BaseException:
        s.close()  # not in `sockets` yet: nobody else would close it (ResourceWarning at GC)
        raise
    return s


async def _signed_get(agent: Agent, path: str) -> tuple[int, dict[str, Any]]:
    headers = signed_headers(
        agent.keys.deploy,
        "GET",
        agent.name,
        path,
        "",
        content_type="",
        body_sha256=hashlib.sha256(b"").digest(),
    )
    timeout = aiohttp.ClientTimeout(total=10)
    async with (
        aiohttp.ClientSession(timeout=timeout) as session,
        session.get(f"{agent.base_url}{path}", headers=headers) as resp,
    ):
        return resp.status, await resp.json(content_type=None)


async def _health(agent: Agent) -> int:
    timeout = aiohttp.ClientTimeout(total=10)
    async with (
        aiohttp.ClientSession(timeout=timeout) as session,
        session.get(f"{agent.base_url}/v1/health") as resp,
    ):
        return resp.status


def _metric(agent: Agent, text: str, name: str, **labels: str) -> float:
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        m = re.fullmatch(rf"{name}(?:\{{(.*)\}})? (\S+)", line)
        if m and (m[1] or "") == want:
            return float(m[2])
    return 0.0


async def _metrics(agent: Agent) -> str:
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"{agent.base_url}/metrics") as resp,
    ):
        return await resp.text()


async def test_1100_hostile_sockets_from_one_address_do_not_starve_the_controller(
    make_agent: Any, sockets: list[socket.socket]
) -> None:
    """Acceptance (issue 14): fd limit 1024, 1,100 idle and partial-header sockets from
    127.0.0.2; /v1/health and a signed GET /v1/apps from 127.0.0.1 still answer; the hostile
    sockets are closed by the header timeout; the log stays small and has no traceback."""
    agent: Agent = make_agent(**FAST)
    agent.start(nofile=1024)
    before = agent.snapshot()
    for i in range(1100):
        s = _connect(agent.port, "127.0.0.2")
        sockets.append(s)  # before the send: a refused socket is still closed by the fixture
        if i % 2:  # a request head that never ends
            # ConnectionError: the agent already refused it at the per-peer cap (reset), which
            # can happen between connect and send on a loaded machine; it is closed, as expected.
            with contextlib.suppress(ConnectionError):
                s.send(b"GET /v1/apps HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")

    assert await _health(agent) == 200
    status, body = await _signed_get(agent, "/v1/apps")
    assert status == 200 and body["apps"][0]["app"] == APP

    still_open = _wait_all_closed(sockets, deadline_s=30)
    assert still_open == [], f"{len(still_open)} hostile sockets still open"
    text = await _metrics(agent)
    assert _metric(agent, text, "cutover_connections_closed_total", reason="peer_cap") > 0
    assert _metric(agent, text, "cutover_connections_closed_total", reason="header_timeout") > 0
    assert _metric(agent, text, "cutover_connections_closed_total", reason="accept_failed") == 0
    log = agent.log_text()
    assert len(log) < 64 * 1024, len(log)
    assert "Traceback" not in log and "out of system resource" not in log
    assert agent.snapshot() == before
    assert agent.proc is not None and agent.proc.poll() is None


async def test_total_cap_evicts_unauthenticated_sockets_for_a_signed_request(
    make_agent: Any, sockets: list[socket.socket]
) -> None:
    """With every slot of max_connections taken by idle sockets (from many addresses), a new
    signed request is still served: the oldest unauthenticated idle connection makes room."""
    agent: Agent = make_agent(
        header_timeout_s=60.0, max_connections=16, max_unauthenticated_per_peer=16
    )
    agent.start()
    for i in range(16):
        sockets.append(_connect(agent.port, f"127.0.0.{10 + i}"))
    await asyncio.sleep(0.2)  # let the agent accept them all
    status, _ = await _signed_get(agent, "/v1/apps")
    assert status == 200
    assert _wait_all_closed(sockets[:1], deadline_s=10) == []  # the oldest was evicted
    text = await _metrics(agent)
    assert _metric(agent, text, "cutover_connections_closed_total", reason="evicted") >= 1


async def test_idle_keepalive_connection_is_closed(make_agent: Any) -> None:
    """A keep-alive connection that sent one request and then nothing is closed."""
    agent: Agent = make_agent(**FAST)
    agent.start()
    reader, writer = await asyncio.open_connection("127.0.0.1", agent.port)
    try:
        writer.write(b"GET /v1/health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        assert head.startswith(b"HTTP/1.1 200")
        length = int(re.search(rb"Content-Length: (\d+)", head)[1])  # type: ignore[index]
        await reader.readexactly(length)
        assert await asyncio.wait_for(reader.read(), 30) == b""  # closed by the agent
    finally:
        writer.close()
    text = await _metrics(agent)
    assert _metric(agent, text, "cutover_connections_closed_total", reason="idle_timeout") >= 1


async def test_stalled_body_is_closed_and_changes_nothing(
    make_agent: Any, packages: dict[str, Path]
) -> None:
    """An authenticated upload whose body stops is cut by body_timeout_s (here shorter than the
    handler's own upload_idle_timeout_s); nothing is staged, the spool is empty."""
    agent: Agent = make_agent(**FAST, upload_idle_timeout_s=60.0)
    agent.start()
    before = agent.snapshot()
    data = packages["1.0.0"].read_bytes()
    target = f"/v1/apps/{APP}/releases/1.0.0"
    headers = agent.upload_headers(target, data)
    reader, writer = await asyncio.open_connection("127.0.0.1", agent.port)
    try:
        head = f"PUT {target} HTTP/1.1\r\nHost: {agent.name}\r\nContent-Length: {len(data)}\r\n"
        head += "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        writer.write(head.encode() + b"\r\n" + data[:100])
        rest = await asyncio.wait_for(reader.read(), 30)
        assert b"202" not in rest.split(b"\r\n", 1)[0]
    finally:
        writer.close()
    assert await asyncio.to_thread(_settles_to, agent, before), agent.snapshot()
    text = await _metrics(agent)
    assert _metric(agent, text, "cutover_connections_closed_total", reason="body_timeout") >= 1


async def test_accept_errors_at_the_file_limit_are_logged_rarely_without_traceback(
    make_agent: Any, sockets: list[socket.socket]
) -> None:
    """With a file limit so low that the connection cap cannot keep accept() from failing
    (EMFILE), the agent logs accept_failed at most once per interval, without a traceback,
    keeps running, and serves again once the sockets are gone."""
    agent: Agent = make_agent(**FAST)
    agent.start(nofile=48)
    for i in range(120):
        sockets.append(_connect(agent.port, f"127.0.1.{1 + i}"))
    text = await asyncio.to_thread(_wait_for_accept_failure, agent)
    assert _metric(agent, text, "cutover_connections_closed_total", reason="accept_failed") > 0
    for s in sockets:
        s.close()
    sockets.clear()
    assert await _health(agent) == 200
    events = [e for e in agent.log_events() if e.get("event") == "accept_failed"]
    assert 1 <= len(events) <= 2, events
    log = agent.log_text()
    assert "Traceback" not in log and "out of system resource" not in log
    assert agent.proc is not None and agent.proc.poll() is None


def _wait_for_accept_failure(agent: Agent, deadline_s: float = 20) -> str:
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        if any(e.get("event") == "accept_failed" for e in agent.log_events()):
            break
        time.sleep(0.1)
    for _ in range(100):  # /metrics needs a free file: retry until the timeouts freed some
        try:
            with urllib.request.urlopen(f"{agent.base_url}/metrics", timeout=5) as resp:  # noqa: S310
                return resp.read().decode()
        except OSError:
            time.sleep(0.2)
    raise AssertionError(agent.log_text())
