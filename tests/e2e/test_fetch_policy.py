"""Issue 14, item 9: fetch-by-URL is bounded. Real agents, real local HTTP stores on 127.0.0.1:
loopback refused without an explicit ``fetch_allow``, the allowlist checked on the first URL and
on every redirect (including one to the cloud metadata address), redirects capped, and a store's
error body or reason phrase never echoed. Every refusal leaves the host unchanged and the store
that should not be reached unreached."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from cutover.agent.api_models import OperationRecord
from cutover.agent.errors import RequestError
from tests.e2e.conftest import APP, Agent

pytestmark = pytest.mark.e2e

Answer = tuple[str, dict[str, str], bytes]  # status line, headers, body


@dataclass
class Store:
    port: int
    routes: dict[str, Answer]
    seen: list[str] = field(default_factory=list)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"


@asynccontextmanager
async def store(routes: dict[str, Answer]) -> AsyncIterator[Store]:
    """A tiny HTTP store answering each path from ``routes`` (404 otherwise)."""
    made = Store(0, routes)

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
        path = head.split(" ", 2)[1]
        made.seen.append(path)
        status, headers, body = made.routes.get(path, ("404 Not Found", {}, b""))
        lines = [f"HTTP/1.1 {status}", f"Content-Length: {len(body)}", "Connection: close"]
        lines += [f"{k}: {v}" for k, v in headers.items()]
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    made.port = server.sockets[0].getsockname()[1]
    async with server:
        yield made


def _package(packages: dict[str, Path]) -> Answer:
    return ("200 OK", {"ETag": '"v1"'}, packages["1.0.0"].read_bytes())


def _redirect(to: str) -> Answer:
    return ("302 Found", {"Location": to}, b"")


async def _fetch_record(agent: Agent, url: str) -> OperationRecord:
    async with agent.client() as c:
        return await c.wait((await c.fetch(APP, "1.0.0", url)).operation)


def _unchanged(agent: Agent, before: dict[str, Any]) -> None:
    after = agent.snapshot()
    assert after == before
    assert not (agent.root / "releases" / "1.0.0").exists()


async def test_loopback_is_refused_without_fetch_allow(
    make_agent: Any, packages: dict[str, Path]
) -> None:
    agent: Agent = make_agent()
    agent.start()
    before = agent.snapshot()
    async with store({"/p": _package(packages)}) as s:
        for url in (s.url("/p"), f"http://[::1]:{s.port}/p", f"http://127.1.2.3:{s.port}/p"):
            async with agent.client() as c:
                with pytest.raises(RequestError) as refused:
                    await c.fetch(APP, "1.0.0", url)
            assert refused.value.code == "fetch_refused"
        # a name resolving to loopback is refused at connect time, as the operation's error
        record = await _fetch_record(agent, f"http://localhost:{s.port}/p")
        assert record.status == "failed" and record.error and record.error.error == "fetch_refused"
        assert "loopback" in record.error.message
    assert s.seen == []
    _unchanged(agent, before)


async def test_allowlist_admits_only_its_prefixes(
    make_agent: Any, packages: dict[str, Path]
) -> None:
    async with store({"/ok/p": _package(packages), "/okay/p": _package(packages)}) as s:
        agent: Agent = make_agent(fetch_allow=[s.url("/ok")])
        agent.start()
        before = agent.snapshot()
        async with agent.client() as c:
            for bad in (s.url("/okay/p"), s.url("/p"), f"http://127.0.0.1:{s.port + 1}/ok/p"):
                with pytest.raises(RequestError) as refused:
                    await c.fetch(APP, "1.0.0", bad)
                assert refused.value.code == "fetch_refused", bad
            assert s.seen == []
            _unchanged(agent, before)
            record = await c.wait((await c.fetch(APP, "1.0.0", s.url("/ok/p"))).operation)
        assert record.status == "succeeded", record
        assert (agent.root / "releases" / "1.0.0").is_dir()


@pytest.mark.parametrize(
    "target",
    [
        pytest.param("http://169.254.169.254/latest/meta-data/", id="metadata"),
        pytest.param("OTHER", id="loopback-not-listed"),
    ],
)
async def test_redirect_to_a_refused_address_is_not_followed(
    make_agent: Any, packages: dict[str, Path], target: str
) -> None:
    async with store({"/p": _package(packages)}) as other, store({}) as s:
        to = other.url("/p") if target == "OTHER" else target
        s.routes["/start"] = _redirect(to)
        agent: Agent = make_agent(fetch_allow=[s.url("/")])
        agent.start()
        before = agent.snapshot()
        record = await _fetch_record(agent, s.url("/start"))
    assert record.status == "failed" and record.error and record.error.error == "fetch_refused"
    assert s.seen == ["/start"] and other.seen == []
    _unchanged(agent, before)


async def test_redirects_are_capped(make_agent: Any) -> None:
    async with store({}) as s:
        for i in range(10):
            s.routes[f"/r{i}"] = _redirect(f"/r{i + 1}")
        agent: Agent = make_agent(fetch_allow=[s.url("/")])
        agent.start()
        before = agent.snapshot()
        record = await _fetch_record(agent, s.url("/r0"))
    assert record.status == "failed" and record.error and record.error.error == "transport"
    assert "more than 5 redirects" in record.error.message
    assert s.seen[:6] == [f"/r{i}" for i in range(6)] and "/r6" not in s.seen
    _unchanged(agent, before)


async def test_a_store_error_is_never_echoed(make_agent: Any) -> None:
    async with store({"/p": ("500 SECRET-REASON", {}, b"SECRET-BODY " * 100)}) as s:
        agent: Agent = make_agent(fetch_allow=[s.url("/")])
        agent.start()
        before = agent.snapshot()
        async with agent.client() as c:
            accepted = await c.fetch(APP, "1.0.0", s.url("/p"))
            events = [e async for e in c.events(accepted.operation)]
            record = await c.operation(accepted.operation)
    assert record.status == "failed" and record.error and "HTTP 500" in record.error.message
    for text in (record.model_dump_json(), str(events), agent.log_text()):
        assert "SECRET" not in text
    _unchanged(agent, before)
