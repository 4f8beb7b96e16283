"""Large uploads ask first (``Expect: 100-continue``) against the REAL agent.

The client side is tested byte by byte against a raw peer in
tests/controller/test_expect_continue.py; here the real ``cutover-agent serve`` accepts the
asking client end to end, refuses it without any change on disk, and (through a counting relay)
is refused before any body byte crossed the wire.
"""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from cutover.agent.errors import AuthError, PayloadTooLargeError
from cutover.controller.build import build_package, sign_package
from cutover.controller.client import EXPECT_CONTINUE_MIN_BYTES, AgentClient
from cutover.controller.transport import AiohttpTransport, SignedRequest, TransportResponse
from tests.e2e.conftest import APP, Agent, Keys

pytestmark = pytest.mark.e2e

VERSION = "1.0.0"
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


@dataclass
class Recording:
    """The default transport, keeping every request it sent (headers as on the wire)."""

    inner: AiohttpTransport = field(default_factory=AiohttpTransport)
    sent: list[SignedRequest] = field(default_factory=list)

    async def send(self, request: SignedRequest) -> TransportResponse:
        self.sent.append(request)
        return await self.inner.send(request)

    async def aclose(self) -> None:
        await self.inner.aclose()


@pytest.fixture
def large(tmp_path: Path, keys: Keys) -> Path:
    """A signed ``demo`` package over the threshold: incompressible, so the file is too."""
    src = tmp_path / "src-large"
    src.mkdir()
    (src / "cutover.toml").write_text(f'app = "{APP}"\n')
    (src / "blob.bin").write_bytes(os.urandom(2 * EXPECT_CONTINUE_MIN_BYTES))
    out = tmp_path / f"{APP}-{VERSION}.cutover"
    build_package(src, out, version=VERSION)
    sign_package(out, keys.release)
    assert out.stat().st_size > EXPECT_CONTINUE_MIN_BYTES
    return out


def _upload_headers(recording: Recording) -> dict[str, str]:
    (request,) = [r for r in recording.sent if r.method == "PUT"]
    return dict(request.headers)


async def test_a_large_upload_asks_first_and_stages(agent: Agent, large: Path) -> None:
    recording = Recording()
    async with agent.client(transport=recording) as c:
        accepted = await c.upload(APP, VERSION, large)
        record = await c.wait(accepted.operation)
        detail = await c.app(APP)
    assert _upload_headers(recording)["Expect"] == "100-continue"
    assert record.status == "succeeded", record
    assert record.result is not None and record.result.version == VERSION
    assert {r.version: r.status for r in detail.releases} == {VERSION: "staged"}
    assert (agent.root / "releases" / VERSION / "blob.bin").stat().st_size == (
        2 * EXPECT_CONTINUE_MIN_BYTES
    )


@dataclass
class CountingProxy:
    """A TCP relay on 127.0.0.1 in front of the agent, counting the client's body bytes (what
    it sends after the request's headers).

    Over loopback a ``100 Continue`` and a ``401`` sent right after it arrive together, and the
    client may drop the body before writing any of it; over a real network the ``401`` comes a
    round trip later. The relay makes that explicit: after forwarding a ``100 Continue`` it
    holds the agent's next bytes until the client has sent a body byte.
    """

    upstream_port: int
    after_headers: int = 0
    port: int = 0
    _head: bytearray = field(default_factory=bytearray)
    _body_seen: asyncio.Event = field(default_factory=asyncio.Event)
    _server: asyncio.Server | None = None
    _relays: list[asyncio.Future[Any]] = field(default_factory=list)

    def _count(self, chunk: bytes) -> None:
        """Count the bytes after the upload's (the PUT's) headers; the client's resume query
        (a GET without a body) may come first on the same connection."""
        self._head += chunk
        put = self._head.find(b"PUT ")
        end = self._head.find(b"\r\n\r\n", put) if put >= 0 else -1
        if end >= 0:
            self.after_headers = len(self._head) - end - 4
        if self.after_headers:
            self._body_seen.set()

    async def _pipe(
        self, src: asyncio.StreamReader, dst: asyncio.StreamWriter, *, upstream: bool
    ) -> None:
        try:
            while chunk := await src.read(1 << 16):
                if upstream:
                    self._count(chunk)
                    dst.write(chunk)
                elif chunk.startswith(CONTINUE):
                    dst.write(CONTINUE)
                    rest = chunk[len(CONTINUE) :]
                    await self._body_seen.wait()
                    dst.write(rest)
                else:
                    dst.write(chunk)
                await dst.drain()
        except ConnectionError:
            pass
        finally:
            self._body_seen.set()  # one side ended: nothing more to hold for
            dst.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        relay = asyncio.gather(
            self._pipe(reader, up_writer, upstream=True),
            self._pipe(up_reader, writer, upstream=False),
        )
        self._relays.append(relay)
        await relay

    async def __aenter__(self) -> CountingProxy:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()
        await asyncio.gather(*self._relays)  # every byte the client sent is counted


@pytest.mark.parametrize(
    ("settings", "signer", "expected", "code"),
    [
        pytest.param({}, "stranger", AuthError, "unknown_key", id="401-unknown-key"),
        pytest.param(
            {"max_upload_bytes": EXPECT_CONTINUE_MIN_BYTES},
            "deploy",
            PayloadTooLargeError,
            "payload_too_large",
            id="413-over-max-upload-bytes",
        ),
    ],
)
async def test_a_refusal_by_the_real_agent_costs_no_body_bytes(
    make_agent: Any,
    keys: Keys,
    large: Path,
    settings: dict[str, Any],
    signer: str,
    expected: type[Exception],
    code: str,
) -> None:
    """The agent answers 100 Continue only once the request is admitted: the client, asking
    first, sends none of the package before the refusal (counted by a relay on the wire)."""
    agent: Agent = make_agent(**settings)
    agent.start()
    before = agent.snapshot()
    async with CountingProxy(agent.port) as proxy:
        base = f"http://127.0.0.1:{proxy.port}"
        async with AgentClient(base, getattr(keys, signer), authority=agent.name) as c:
            with pytest.raises(expected) as info:
                await c.upload(APP, VERSION, large)
    assert info.value.code == code  # type: ignore[attr-defined]
    assert agent.snapshot() == before
    assert proxy.after_headers == 0
