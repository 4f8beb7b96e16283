"""``Expect: 100-continue`` on large uploads, against a raw HTTP/1.1 peer on a real socket.

The peer is an asyncio socket server on 127.0.0.1 (a fake *remote* agent): it reads one
request's headers, answers as scripted (a refusal, ``100 Continue``, or nothing at all), then
counts every body byte that arrives until the client closes the connection. So "a refusal costs
no bytes" is measured on the wire, through the real default transport (aiohttp). The real agent
is exercised in tests/e2e/test_upload_expect.py.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import pytest
from yarl import URL

from cutover.agent.errors import AuthError, CutoverError, LockedError, PayloadTooLargeError
from cutover.agent.keys import PrivateKey, generate_keypair
from cutover.agent.trust import httpsig
from cutover.controller.client import EXPECT_CONTINUE_MIN_BYTES, AgentClient
from cutover.controller.transport import AiohttpTransport, SignedRequest

Mode = Literal["refuse", "continue", "silent"]

ACCEPTED = {
    "operation": "0fefcd7c1eddeb51",
    "op": "stage",
    "app": "ame",
    "version": "1",
    "status": "running",
    "links": {"self": "/v1/operations/x", "events": "/v1/operations/x/events"},
}
UNKNOWN_KEY = (401, {"error": "unknown_key", "kind": "unauthorized", "message": "who are you?"})


def _answer(status: int, body: dict[str, Any]) -> bytes:
    data = json.dumps(body).encode()
    head = (
        f"HTTP/1.1 {status} Whatever\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(data)}\r\n\r\n"
    )
    return head.encode() + data


@dataclass
class RawPeer:
    """An HTTP/1.1 peer, one upload per connection: headers in, a scripted answer out, body
    bytes counted (``head``: the last upload's headers). The client's resume query before an
    upload (``GET .../upload/{sha256}``) is answered "nothing held" on the same connection.

    Modes: ``refuse`` answers ``refusal`` to the headers alone; ``continue`` answers ``100
    Continue``, reads the body, then ``202``; ``silent`` says nothing until it has read the body
    (an old server that ignores ``Expect``), then ``202``. Whatever the mode, every body byte
    the client sends is counted, up to the client closing the connection; the count is final
    when the ``async with`` block has exited (the client must have closed by then).
    """

    mode: Mode
    refusal: tuple[int, dict[str, Any]] = UNKNOWN_KEY
    hold_answer_body: bool = False  # refuse: send the status line, the body only when released
    refuse_after_bytes: int | None = None  # continue: refuse with ``refusal`` after this many
    release: asyncio.Event = field(default_factory=asyncio.Event)
    head: bytes = b""
    body_bytes: int = 0
    connections: int = 0
    probes: int = 0  # GET .../upload/{sha256} answered "nothing held" (not counted as body)
    port: int = 0
    _server: asyncio.Server | None = None
    _handlers: list[asyncio.Task[None]] = field(default_factory=list)

    @property
    def headers(self) -> dict[str, str]:
        lines = self.head.decode("latin-1").split("\r\n")[1:]
        return {k.strip().lower(): v.strip() for k, v in (h.split(":", 1) for h in lines if h)}

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        task = asyncio.current_task()
        assert task is not None
        self._handlers.append(task)
        try:
            self.head = (await reader.readuntil(b"\r\n\r\n"))[:-4]
            while self.head.startswith(b"GET "):  # the client asks what is held: nothing
                self.probes += 1
                sha = self.head.split(b" ")[1].rsplit(b"/", 1)[1].decode()
                held = {"app": "ame", "version": "1", "sha256": sha, "offset": 0, "busy": False}
                writer.write(_answer(200, held))
                await writer.drain()
                self.head = (await reader.readuntil(b"\r\n\r\n"))[:-4]
            if self.mode == "refuse":
                status, body = self.refusal
                answer = _answer(status, body)
                if self.hold_answer_body:
                    cut = answer.index(b"\r\n\r\n") + 4
                    writer.write(answer[:cut])
                    await writer.drain()
                    await self.release.wait()
                    answer = answer[cut:]
                writer.write(answer)
                await writer.drain()
            else:
                if self.mode == "continue":
                    writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
                    await writer.drain()
                length = int(self.headers["content-length"])
                if self.refuse_after_bytes is None:
                    self.body_bytes += len(await reader.readexactly(length))
                    writer.write(_answer(202, ACCEPTED))
                else:
                    self.body_bytes += len(await reader.readexactly(self.refuse_after_bytes))
                    writer.write(_answer(*self.refusal))
                await writer.drain()
            while chunk := await reader.read(1 << 16):  # whatever else comes, to EOF
                self.body_bytes += len(chunk)
        except ConnectionError:
            pass  # the client closed first: what it sent before is counted
        finally:
            writer.close()

    async def __aenter__(self) -> RawPeer:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()
        # Each handler ends at the client's EOF: once they all have, the byte count is final.
        await asyncio.gather(*self._handlers)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@pytest.fixture(scope="module")
def key(tmp_path_factory: pytest.TempPathFactory) -> PrivateKey:
    return generate_keypair(tmp_path_factory.mktemp("keys") / "deploy")


@pytest.fixture
def package(tmp_path: Path) -> Path:
    """A package file just over the threshold, in a directory of its own."""
    path = tmp_path / "out" / "ame-1.cutover"
    path.parent.mkdir()
    path.write_bytes(bytes(range(256)) * ((2 * EXPECT_CONTINUE_MIN_BYTES) // 256 + 1))
    return path


def _contents(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.iterdir()}


def _open_files() -> set[str]:
    """What this process has open (Linux /proc), to prove an upload closed its file."""
    found = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            found.add(os.readlink(f"/proc/self/fd/{fd}"))
        except OSError:
            continue  # closed while listing (the listing's own fd)
    return found


def _size(path: Path) -> int:
    return path.stat().st_size


def _signature_verifies(peer: RawPeer, key: PrivateKey, path: str) -> bool:
    verified = httpsig.verify_request(
        httpsig.RequestTarget("PUT", f"127.0.0.1:{peer.port}", path, ""),
        peer.headers,
        keys={key.keyid: key.public},
        now=time.time(),
    )
    return verified.keyid == key.keyid


@pytest.mark.parametrize(
    ("refusal", "expected", "code"),
    [
        pytest.param(UNKNOWN_KEY, AuthError, "unknown_key", id="401-unknown-key"),
        pytest.param(
            (409, {"error": "locked", "kind": "locked", "message": "busy", "holder": None}),
            LockedError,
            "locked",
            id="409-locked",
        ),
        pytest.param(
            (413, {"error": "payload_too_large", "kind": "payload_too_large"}),
            PayloadTooLargeError,
            "payload_too_large",
            id="413-too-large",
        ),
    ],
)
async def test_a_refusal_of_a_large_upload_costs_no_body_bytes(
    key: PrivateKey,
    package: Path,
    refusal: tuple[int, dict[str, Any]],
    expected: type[CutoverError],
    code: str,
) -> None:
    """The agent refuses on the headers alone: the client raises its class, sends 0 body bytes."""
    before = _contents(package.parent)
    progress: list[int] = []
    async with RawPeer("refuse", refusal) as peer, AgentClient(peer.base_url, key) as client:
        with pytest.raises(expected) as info:
            await client.upload("ame", "1", package, progress=lambda n, _: progress.append(n))
    assert type(info.value) is expected and info.value.code == code
    assert str(info.value).startswith(f"{peer.base_url} upload ame 1: ")
    assert peer.headers["expect"] == "100-continue"
    assert peer.headers["content-length"] == str(len(before[package.name]))
    assert _signature_verifies(peer, key, "/v1/apps/ame/releases/1")
    assert peer.body_bytes == 0 and progress == []  # no chunk was streamed, no byte sent
    assert _contents(package.parent) == before  # the package intact, nothing left beside it


async def test_a_connection_left_with_an_unsent_body_is_not_reused(
    key: PrivateKey, package: Path
) -> None:
    """After a refusal the peer may still expect the body: the next request opens a new
    connection (on the old one its bytes would be counted as that body)."""
    async with RawPeer("refuse") as peer, AgentClient(peer.base_url, key) as client:
        for _ in range(2):
            with pytest.raises(AuthError):
                await client.upload("ame", "1", package)
    assert peer.connections == 2 and peer.body_bytes == 0


async def test_after_100_continue_the_whole_body_is_sent(key: PrivateKey, package: Path) -> None:
    async with RawPeer("continue") as peer, AgentClient(peer.base_url, key) as client:
        accepted = await client.upload("ame", "1", package)
    assert accepted.operation == ACCEPTED["operation"]
    assert peer.headers["expect"] == "100-continue"
    assert peer.body_bytes == _size(package) and peer.connections == 1


async def test_a_silent_old_server_gets_the_body_after_the_continue_timeout(
    key: PrivateKey, package: Path
) -> None:
    """A peer that ignores ``Expect`` (never sends 100) still receives the upload."""
    async with RawPeer("silent") as peer, AgentClient(peer.base_url, key) as client:
        accepted = await client.upload("ame", "1", package)
    assert accepted.operation == ACCEPTED["operation"]
    assert peer.headers["expect"] == "100-continue"
    assert peer.body_bytes == _size(package)


async def test_a_small_upload_does_not_ask(key: PrivateKey, tmp_path: Path) -> None:
    """Below the threshold a round trip costs more than the bytes: no ``Expect``, body at once."""
    small = tmp_path / "ame-1.cutover"
    small.write_bytes(b"p" * (EXPECT_CONTINUE_MIN_BYTES - 1))
    async with RawPeer("silent") as peer, AgentClient(peer.base_url, key) as client:
        await client.upload("ame", "1", small)
    assert "expect" not in peer.headers
    assert peer.body_bytes == EXPECT_CONTINUE_MIN_BYTES - 1


@pytest.mark.parametrize(
    "peer_kind", ["accepted-after-100", "accepted-silent", "refused-at-headers", "refused-mid-body"]
)
async def test_the_package_file_is_closed_when_upload_returns_or_raises(
    key: PrivateKey, package: Path, peer_kind: str
) -> None:
    """However the exchange ends (aiohttp stops reading the body at Content-Length; a refusal
    mid-body cancels its writer), no descriptor of the package outlives :meth:`upload`."""
    peer = {
        "accepted-after-100": RawPeer("continue"),
        "accepted-silent": RawPeer("silent"),
        "refused-at-headers": RawPeer("refuse"),
        "refused-mid-body": RawPeer("continue", refuse_after_bytes=100_000),
    }[peer_kind]
    async with peer, AgentClient(peer.base_url, key) as client:
        try:
            await client.upload("ame", "1", package)
        except AuthError:
            assert peer_kind.startswith("refused")
        assert str(package) not in _open_files()
    if peer_kind == "refused-mid-body":
        assert 100_000 <= peer.body_bytes <= _size(package)
    else:
        assert peer.body_bytes == (0 if peer_kind == "refused-at-headers" else _size(package))


# ---------------------------------------------------------------------- the transport itself
def _request(peer: RawPeer, body: AsyncIterator[bytes], size: int, **kw: Any) -> SignedRequest:
    return SignedRequest(
        "PUT",
        URL(f"{peer.base_url}/v1/apps/ame/releases/1", encoded=True),
        {"Content-Length": str(size), "Expect": "100-continue"},
        body,
        **kw,
    )


async def test_transport_sends_the_body_of_a_silent_peer_after_continue_timeout_s() -> None:
    read: list[int] = []

    async def body() -> AsyncIterator[bytes]:
        for i in range(3):
            read.append(i)
            yield b"z" * 1000

    async with RawPeer("silent") as peer:
        transport = AiohttpTransport()
        try:
            resp = await transport.send(_request(peer, body(), 3000, continue_timeout_s=0.05))
            assert resp.status == 202 and json.loads(await resp.aread(1 << 16)) == ACCEPTED
            await resp.aclose()
        finally:
            await transport.aclose()
    assert read == [0, 1, 2] and peer.body_bytes == 3000


async def test_transport_keeps_the_body_once_a_final_answer_arrived_even_past_the_timeout() -> None:
    """The continue timeout expires while the caller still holds the ``401`` (its body not yet
    read): the body must stay unsent, the final answer settled the exchange."""
    started: list[bool] = []

    async def body() -> AsyncIterator[bytes]:
        started.append(True)
        yield b"z" * 4096

    timeout_s = 0.05
    async with RawPeer("refuse", hold_answer_body=True) as peer:
        transport = AiohttpTransport()
        try:
            resp = await transport.send(_request(peer, body(), 4096, continue_timeout_s=timeout_s))
            assert resp.status == 401
            # The timer was armed before the status line arrived, so its deadline precedes this
            # sleep's: asyncio runs it first. No claim about durations is made.
            await asyncio.sleep(2 * timeout_s)
            peer.release.set()
            answer = json.loads(await resp.aread(1 << 16))
            await resp.aclose()
        finally:
            await transport.aclose()
    assert answer == UNKNOWN_KEY[1]
    assert started == [] and peer.body_bytes == 0


async def test_the_continue_timer_survives_asyncio_debug_mode() -> None:
    """Debug mode logs every callback slower than ``slow_callback_duration`` with its arguments'
    repr(); repr() of an aiohttp response not yet started caches its headers as None, which
    broke the answer that followed. With the threshold at 0 every callback is formatted."""

    async def body() -> AsyncIterator[bytes]:
        yield b"z" * 1000

    loop = asyncio.get_running_loop()
    debug, slow = loop.get_debug(), loop.slow_callback_duration
    loop.set_debug(True)
    loop.slow_callback_duration = 0
    try:
        async with RawPeer("silent") as peer:
            transport = AiohttpTransport()
            try:
                resp = await transport.send(_request(peer, body(), 1000, continue_timeout_s=0.01))
                assert resp.status == 202 and resp.headers["content-type"] == "application/json"
                await resp.aclose()
            finally:
                await transport.aclose()
    finally:
        loop.set_debug(debug)
        loop.slow_callback_duration = slow
    assert peer.body_bytes == 1000
