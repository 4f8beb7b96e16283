"""Resumable uploads against a real daemon (issue 12 item 4; agent/daemon/uploads.py).

A raw socket sends part of a signed upload body and closes: the agent keeps what arrived under
``<state_dir>/resume/``, says how much (``GET .../upload/{sha256}``), and a signed ``PUT`` with
``?sha256=&offset=`` appends the rest, after which the package is verified and staged as usual.
Every refusal (wrong offset, tampered tail) is checked to change nothing else.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import signal
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest

from cutover.agent.api_models import UploadStatus
from cutover.agent.daemon.uploads import owner_of
from cutover.agent.errors import TransportError, UnreachableError, UploadOffsetError
from cutover.controller.client import AgentClient
from tests.e2e.conftest import APP, Agent, Keys, RawResponse, free_port, send_raw

VERSION = "1.0.0"


async def _wait_for(cond: Any, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)


def _target(version: str = VERSION, **query: Any) -> str:
    target = f"/v1/apps/{APP}/releases/{version}"
    return f"{target}?{urlencode(query)}" if query else target


def _headers(agent: Agent, target: str, body: bytes) -> list[tuple[str, str]]:
    path, _, query = target.partition("?")
    signed = agent.upload_headers(path, body, query)
    return list(signed.items())


async def _admitted(agent: Agent) -> None:
    """The agent authenticated the upload and reads its body (its spool file exists).

    Body bytes are sent only after this: bytes that arrive together with the connection's close,
    before the agent waits for them, are dropped by aiohttp with the connection."""
    await _wait_for(lambda: any((agent.state_dir / "uploads").iterdir()))
    await asyncio.sleep(0.05)  # robustness only (no assertion): the handler is waiting on the body


def _partials(agent: Agent) -> list[Path]:
    folder = agent.state_dir / "resume" / APP
    return sorted(folder.iterdir()) if folder.exists() else []


async def _cut_upload(agent: Agent, data: bytes, sent: int, target: str | None = None) -> None:
    """A signed upload of ``data`` (the whole package) whose connection closes after ``sent``
    body bytes; returns once the agent kept them."""
    target = target or _target()
    _reader, writer = await asyncio.open_connection("127.0.0.1", agent.port)
    lines = [f"PUT {target} HTTP/1.1", f"Host: {agent.name}"]
    lines += [f"{k}: {v}" for k, v in _headers(agent, target, data)]
    lines.append(f"Content-Length: {len(data)}")
    writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
    await writer.drain()
    await _admitted(agent)
    writer.write(data[:sent])
    await writer.drain()
    writer.close()
    await writer.wait_closed()
    await _wait_for(lambda: [p.stat().st_size for p in _partials(agent)] == [sent])
    await _wait_for(lambda: list((agent.state_dir / "uploads").iterdir()) == [])


async def _held(agent: Agent, sha: str, version: str = VERSION) -> UploadStatus:
    async with agent.client() as c:
        resp = await c.request("GET", f"/v1/apps/{APP}/releases/{version}/upload/{sha}")
        return UploadStatus.model_validate_json(await resp.aread(65536))


async def _resume(agent: Agent, data: bytes, sha: str, offset: int) -> RawResponse:
    target = _target(sha256=sha, offset=offset)
    return await send_raw(agent.port, "PUT", target, _headers(agent, target, data), data)


async def test_an_upload_cut_mid_body_resumes_from_the_held_offset_and_stages(
    agent: Agent, packages: dict[str, Path]
) -> None:
    data = packages[VERSION].read_bytes()
    sha = hashlib.sha256(data).hexdigest()
    half = len(data) // 2
    before = agent.snapshot()
    await _cut_upload(agent, data, half)
    assert agent.snapshot() == before  # kept aside: no app state, no spool file
    (partial,) = _partials(agent)
    assert partial.name == f"{sha}_{VERSION}.{owner_of(agent.keys.deploy.keyid)}.part"
    assert partial.read_bytes() == data[:half]
    held = await _held(agent, sha)
    assert (held.offset, held.busy, held.version) == (half, False, VERSION)
    assert (await _held(agent, "0" * 64)).offset == 0  # another package: nothing held

    answer = await _resume(agent, data[half:], sha, half)
    assert answer.status == 202, answer.body
    async with agent.client() as c:
        record = await c.wait(answer.json["operation"])
        assert record.status == "succeeded", record
        (demo,) = (await c.apps()).apps
    assert VERSION in demo.staged
    assert _partials(agent) == [] and list((agent.state_dir / "uploads").iterdir()) == []
    assert (agent.root / "releases" / VERSION / "VERSION").read_text() == f"{VERSION}\n"
    events = [e for e in agent.log_events() if e.get("event") == "upload_received"]
    assert events[-1]["offset"] == half and events[-1]["bytes"] == len(data) - half


async def test_a_wrong_offset_is_refused_with_the_held_offset_and_changes_nothing(
    agent: Agent, packages: dict[str, Path]
) -> None:
    data = packages[VERSION].read_bytes()
    sha = hashlib.sha256(data).hexdigest()
    third = len(data) // 3
    await _cut_upload(agent, data, third)
    before = agent.snapshot()
    for wrong in (third + 1, third - 1, len(data)):
        answer = await _resume(agent, data[wrong:], sha, wrong)
        assert answer.status == 409, answer.body
        assert answer.code == "upload_offset" and answer.json["offset"] == third
        assert f"resume at offset {third}" in answer.json["message"]
        assert agent.snapshot() == before
        (partial,) = _partials(agent)
        assert partial.read_bytes() == data[:third]
    # the registry's class across the wire, with the offset
    async with agent.client() as c:
        path, _, query = _target(sha256=sha, offset=5).partition("?")
        with pytest.raises(UploadOffsetError) as caught:
            await c.request(
                "PUT", path, query=query, content=b"x", content_type="application/octet-stream"
            )
    assert caught.value.offset == third and caught.value.code == "upload_offset"
    assert agent.snapshot() == before


async def test_a_whole_body_that_is_not_the_named_package_is_refused_nothing_kept(
    agent: Agent, packages: dict[str, Path]
) -> None:
    """Offset 0 with the package named in the query: the body (signed, Content-Digest right)
    is another package, so the file never hashes to the key (hashed once, as the body)."""
    sha = hashlib.sha256(packages[VERSION].read_bytes()).hexdigest()
    before = agent.snapshot()
    answer = await _resume(agent, packages["1.1.0"].read_bytes(), sha, 0)
    assert answer.status == 422, answer.body
    assert answer.code == "package_digest" and answer.json["kind"] == "digest_mismatch"
    assert "nothing was kept" in answer.json["message"]
    assert agent.snapshot() == before and _partials(agent) == []
    assert (await _held(agent, sha)).offset == 0


async def test_a_tampered_resumed_tail_is_refused_the_held_prefix_kept_nothing_staged(
    agent: Agent, packages: dict[str, Path]
) -> None:
    data = packages[VERSION].read_bytes()
    sha = hashlib.sha256(data).hexdigest()
    half = len(data) // 2
    await _cut_upload(agent, data, half)
    before = agent.snapshot()
    tail = bytearray(data[half:])
    tail[len(tail) // 2] ^= 0x01  # signed as sent (Content-Digest matches), not the package
    answer = await _resume(agent, bytes(tail), sha, half)
    assert answer.status == 422, answer.body
    assert answer.code == "package_digest" and answer.json["kind"] == "digest_mismatch"
    assert f"resume at offset {half}" in answer.json["message"]
    assert agent.snapshot() == before
    (partial,) = _partials(agent)
    assert partial.read_bytes() == data[:half]  # cut back to the bytes held before
    assert (await _held(agent, sha)).offset == half
    # a tail corrupted in transit (its Content-Digest does not match): the same
    target = _target(sha256=sha, offset=half)
    answer = await send_raw(agent.port, "PUT", target, _headers(agent, target, data[half:]), tail)
    assert answer.status == 401 and answer.code == "digest_mismatch", answer.body
    assert agent.snapshot() == before and partial.read_bytes() == data[:half]
    assert (await _held(agent, sha)).offset == half
    answer = await _resume(agent, data[half:], sha, half)  # and the right tail completes it
    assert answer.status == 202, answer.body


async def test_a_resume_signed_by_another_key_is_refused_and_the_partial_unchanged(
    agent: Agent, packages: dict[str, Path]
) -> None:
    """One deploy key cannot append to (poison) the bytes another key sent."""
    data = packages[VERSION].read_bytes()
    sha = hashlib.sha256(data).hexdigest()
    half = len(data) // 2
    await _cut_upload(agent, data, half)
    before = agent.snapshot()
    other = agent.keys.other_deploy
    async with agent.client(other) as c:
        resp = await c.request("GET", f"/v1/apps/{APP}/releases/{VERSION}/upload/{sha}")
        assert UploadStatus.model_validate_json(await resp.aread(65536)).offset == 0
    junk = b"J" * (len(data) - half)
    target = _target(sha256=sha, offset=half)
    head = agent.upload_headers(_target(), junk, target.partition("?")[2], key=other)
    answer = await send_raw(agent.port, "PUT", target, list(head.items()), junk)
    assert answer.status == 409 and answer.code == "upload_offset", answer.body
    assert answer.json["offset"] == 0 and "another key" in answer.json["message"]
    assert agent.snapshot() == before
    (partial,) = _partials(agent)
    assert partial.read_bytes() == data[:half] and (await _held(agent, sha)).offset == half


async def test_a_kill_9_mid_resume_keeps_the_held_bytes(
    agent: Agent, packages: dict[str, Path]
) -> None:
    data = packages[VERSION].read_bytes()
    sha = hashlib.sha256(data).hexdigest()
    half = len(data) // 2
    await _cut_upload(agent, data, half)
    tail = data[half:]
    target = _target(sha256=sha, offset=half)
    _reader, writer = await asyncio.open_connection("127.0.0.1", agent.port)
    lines = [f"PUT {target} HTTP/1.1", f"Host: {agent.name}"]
    lines += [f"{k}: {v}" for k, v in _headers(agent, target, tail)]
    lines.append(f"Content-Length: {len(tail)}")
    writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
    await writer.drain()
    await _admitted(agent)
    writer.write(tail[:100])
    await writer.drain()
    await _wait_for(lambda: [p.stat().st_size for p in _partials(agent)] == [half + 100])
    agent.stop(signal.SIGKILL)
    writer.close()
    agent.start()
    held = (await _held(agent, sha)).offset
    assert held == half + 100  # appended in place: nothing lost, not even the tail so far
    (partial,) = _partials(agent)
    assert partial.read_bytes() == data[:held]
    answer = await _resume(agent, data[held:], sha, held)
    assert answer.status == 202, answer.body
    async with agent.client() as c:
        assert (await c.wait(answer.json["operation"])).status == "succeeded"
    assert _partials(agent) == [] and (agent.root / "releases" / VERSION).is_dir()


async def test_offset_zero_restarts_and_a_plain_reupload_replaces_the_partial(
    agent: Agent, packages: dict[str, Path]
) -> None:
    """A client that knows nothing of resuming still uploads: a plain PUT starts afresh."""
    data = packages[VERSION].read_bytes()
    await _cut_upload(agent, data, len(data) // 4)
    answer = await send_raw(agent.port, "PUT", _target(), _headers(agent, _target(), data), data)
    assert answer.status == 202, answer.body
    async with agent.client() as c:
        assert (await c.wait(answer.json["operation"])).status == "succeeded"
    assert _partials(agent) == []


async def test_malformed_resume_parameters_are_refused(
    agent: Agent, packages: dict[str, Path]
) -> None:
    data = packages[VERSION].read_bytes()
    sha = hashlib.sha256(data).hexdigest()
    before = agent.snapshot()
    for query in ({"offset": 0}, {"sha256": sha.upper()}, {"sha256": sha, "offset": "-1"}):
        target = _target(**query)
        answer = await send_raw(agent.port, "PUT", target, _headers(agent, target, data), data)
        assert answer.status == 400, (query, answer.body)
    assert agent.snapshot() == before and _partials(agent) == []


async def test_a_partial_survives_a_restart_and_an_expired_one_is_swept_at_start(
    make_agent: Any, packages: dict[str, Path]
) -> None:
    agent: Agent = make_agent(upload_resume_ttl_s=600.0)
    agent.start()
    data = packages[VERSION].read_bytes()
    sha = hashlib.sha256(data).hexdigest()
    await _cut_upload(agent, data, len(data) // 2)
    foreign = agent.state_dir / "resume" / APP / "operator-notes.txt"
    foreign.write_text("not the agent's\n")
    agent.restart()
    assert (await _held(agent, sha)).offset == len(data) // 2
    (partial,) = [p for p in _partials(agent) if p.suffix == ".part"]
    old = time.time() - 601
    os.utime(partial, (old, old))
    agent.restart()
    assert [p.name for p in _partials(agent)] == ["operator-notes.txt"]  # only its own files
    assert (await _held(agent, sha)).offset == 0
    swept = [e for e in agent.log_events() if e.get("event") == "upload_partial_removed"]
    assert swept[-1]["reason"] == "expired"


class CuttingProxy:
    """A TCP proxy on 127.0.0.1 that cuts the first ``cuts`` PUT connections after ``body``
    body bytes (a real socket closed mid-upload); every other connection passes through."""

    def __init__(self, agent: Agent, body: int, cuts: int = 1) -> None:
        self.agent, self.upstream, self.body, self.cuts = agent, agent.port, body, cuts
        self.cut = 0
        self.server: asyncio.Server | None = None

    async def __aenter__(self) -> CuttingProxy:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()

    @property
    def port(self) -> int:
        assert self.server is not None
        return int(self.server.sockets[0].getsockname()[1])

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream)

        async def downstream() -> None:
            while data := await up_reader.read(65536):
                writer.write(data)
                await writer.drain()
            writer.close()

        back = asyncio.create_task(downstream())
        try:
            while True:  # request by request: a kept-alive connection may carry a GET, then a PUT
                head = await reader.readuntil(b"\r\n\r\n")
                up_writer.write(head)
                if head.startswith(b"PUT ") and self.cut < self.cuts:
                    self.cut += 1
                    await up_writer.drain()
                    await _admitted(self.agent)
                    up_writer.write(await reader.readexactly(self.body))
                    await up_writer.drain()
                    return  # both sockets closed below: the upload is cut mid-body
                length = re.search(rb"(?i)\r\ncontent-length: *(\d+)", head)
                if length:
                    up_writer.write(await reader.readexactly(int(length[1])))
                await up_writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            back.cancel()
            up_writer.close()
            writer.close()


async def test_the_client_resumes_a_cut_upload_from_the_agents_offset_and_it_stages(
    agent: Agent, packages: dict[str, Path]
) -> None:
    data = packages[VERSION].read_bytes()
    cut = len(data) // 2
    resumed: list[tuple[int, int, str]] = []
    seen: list[tuple[int, int]] = []
    async with CuttingProxy(agent, cut) as proxy:
        client = agent.client(authority=agent.name)
        client.base_url = f"http://127.0.0.1:{proxy.port}"
        async with client as c:
            accepted = await c.upload(
                APP,
                VERSION,
                packages[VERSION],
                lambda done, total: seen.append((done, total)),
                on_resume=lambda *a: resumed.append(a),
            )
            record = await c.wait(accepted.operation)
    assert proxy.cut == 1 and record.status == "succeeded", record
    assert [(attempt, offset) for attempt, offset, _ in resumed] == [(2, cut)]
    assert seen[-1] == (len(data), len(data))  # the resumed attempt counts from the offset
    assert agent.current() is None and (agent.root / "releases" / VERSION).is_dir()
    assert _partials(agent) == [] and list((agent.state_dir / "uploads").iterdir()) == []
    received = [e for e in agent.log_events() if e.get("event") == "upload_received"]
    assert [(e["offset"], e["bytes"]) for e in received] == [(cut, len(data) - cut)]


async def test_the_client_gives_up_after_its_attempts_and_the_agent_keeps_the_bytes(
    agent: Agent, packages: dict[str, Path]
) -> None:
    data = packages[VERSION].read_bytes()
    before = agent.snapshot()
    async with CuttingProxy(agent, 100, cuts=10) as proxy:
        client = agent.client(authority=agent.name)
        client.base_url = f"http://127.0.0.1:{proxy.port}"
        resumed: list[tuple[int, int, str]] = []
        async with client as c:
            with pytest.raises(TransportError):
                await c.upload(
                    APP,
                    VERSION,
                    packages[VERSION],
                    attempts=3,
                    on_resume=lambda *a: resumed.append(a),
                )
    assert proxy.cut == 3 and [a for a, _, _ in resumed] == [2, 3]
    assert [o for _, o, _ in resumed] == [100, 200]  # each attempt added 100 bytes
    await _wait_for(lambda: [p.stat().st_size for p in _partials(agent)] == [300])
    # appended in place: the partial has its bytes before the upload's link in uploads/ goes
    await _wait_for(lambda: list((agent.state_dir / "uploads").iterdir()) == [])
    assert agent.snapshot() == before and len(data) > 300


async def test_the_caps_hold_on_a_real_daemon(make_agent: Any, packages: dict[str, Path]) -> None:
    """One partial per app: a newer interrupted upload drops the older; one over the byte cap
    is not kept at all. Each time nothing else changes."""
    agent: Agent = make_agent(upload_resume_per_app=1, upload_resume_max_bytes=3000)
    agent.start()
    before = agent.snapshot()
    first, second = packages["1.0.0"].read_bytes(), packages["1.1.0"].read_bytes()
    await _cut_upload(agent, first, 1000)
    older = time.time() - 60  # older than the next one (no waiting), not expired
    os.utime(_partials(agent)[0], (older, older))
    await _cut_upload(agent, second, 1500, target=_target("1.1.0"))
    (kept,) = _partials(agent)
    owner = owner_of(agent.keys.deploy.keyid)
    assert kept.name == f"{hashlib.sha256(second).hexdigest()}_1.1.0.{owner}.part"
    assert (await _held(agent, hashlib.sha256(first).hexdigest())).offset == 0
    removed = [e for e in agent.log_events() if e.get("event") == "upload_partial_removed"]
    assert [e["reason"] for e in removed] == ["over_limit"]
    # 3001 bytes alone exceed upload_resume_max_bytes: dropped when the body breaks off
    target = _target("1.2.0")
    reader, writer = await asyncio.open_connection("127.0.0.1", agent.port)
    data = packages["1.2.0"].read_bytes()
    head = [f"PUT {target} HTTP/1.1", f"Host: {agent.name}", f"Content-Length: {len(data)}"]
    head += [f"{k}: {v}" for k, v in _headers(agent, target, data)]
    writer.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1"))
    await writer.drain()
    await _admitted(agent)
    writer.write(data[:3001])
    await writer.drain()
    writer.close()
    await _wait_for(lambda: any(e.get("event") == "upload_not_kept" for e in agent.log_events()))
    assert _partials(agent) == [kept] and agent.snapshot() == before
    del reader


async def test_an_upload_cut_by_the_agent_stopping_resumes_after_its_restart(
    agent: Agent, packages: dict[str, Path]
) -> None:
    data = packages[VERSION].read_bytes()
    sha = hashlib.sha256(data).hexdigest()
    target = _target()
    _reader, writer = await asyncio.open_connection("127.0.0.1", agent.port)
    head = [f"PUT {target} HTTP/1.1", f"Host: {agent.name}", f"Content-Length: {len(data)}"]
    head += [f"{k}: {v}" for k, v in _headers(agent, target, data)]
    writer.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1"))
    await writer.drain()
    await _admitted(agent)
    writer.write(data[:2000])
    await writer.drain()
    assert await asyncio.to_thread(agent.stop) == 0  # SIGTERM while the body is incomplete
    writer.close()
    agent.start()
    assert (await _held(agent, sha)).offset == 2000
    answer = await _resume(agent, data[2000:], sha, 2000)
    assert answer.status == 202, answer.body
    async with agent.client() as c:
        assert (await c.wait(answer.json["operation"])).status == "succeeded"
    assert (agent.root / "releases" / VERSION).is_dir() and _partials(agent) == []


async def test_a_host_that_never_answered_is_not_retried(
    keys: Keys, packages: dict[str, Path]
) -> None:
    """Nothing was sent, so there is nothing to resume: unreachable at once (fleet reports it)."""
    resumed: list[Any] = []
    async with AgentClient(f"http://127.0.0.1:{free_port()}", keys.deploy) as c:
        with pytest.raises(UnreachableError):
            await c.upload(APP, VERSION, packages[VERSION], on_resume=resumed.append)
    assert resumed == []


class PoisoningProxy(CuttingProxy):
    """Cuts the first PUT, then (before the client resumes) grows the agent's partial past the
    package's size with a signed junk resume: the agent then answers an offset beyond it."""

    def __init__(self, agent: Agent, data: bytes) -> None:
        super().__init__(agent, len(data) // 2)
        self.data, self.poisoned = data, False

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await super()._handle(reader, writer)
        if self.cut == 1 and not self.poisoned:
            self.poisoned = True
            await _wait_for(
                lambda: [p.stat().st_size for p in _partials(self.agent)] == [self.body]
            )
            sha = hashlib.sha256(self.data).hexdigest()
            junk = b"J" * (len(self.data) * 2)
            target = _target(sha256=sha, offset=self.body)
            _r, w = await asyncio.open_connection("127.0.0.1", self.agent.port)
            lines = [f"PUT {target} HTTP/1.1", f"Host: {self.agent.name}"]
            lines += [f"{k}: {v}" for k, v in _headers(self.agent, target, junk)]
            lines.append(f"Content-Length: {len(junk)}")
            w.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
            await w.drain()
            await _admitted(self.agent)
            w.write(junk[: len(self.data) + 10])
            await w.drain()
            w.close()
            want = self.body + len(self.data) + 10
            await _wait_for(lambda: [p.stat().st_size for p in _partials(self.agent)] == [want])


async def test_an_offset_beyond_the_package_restarts_the_upload_from_zero(
    agent: Agent, packages: dict[str, Path]
) -> None:
    """The client never trusts the agent's offset past the file: it starts afresh, once."""
    data = packages[VERSION].read_bytes()
    resumed: list[tuple[int, int, str]] = []
    async with PoisoningProxy(agent, data) as proxy:
        client = agent.client(authority=agent.name)
        client.base_url = f"http://127.0.0.1:{proxy.port}"
        async with client as c:
            accepted = await c.upload(
                APP, VERSION, packages[VERSION], on_resume=lambda *a: resumed.append(a)
            )
            record = await c.wait(accepted.operation)
    assert proxy.poisoned and record.status == "succeeded", record
    assert [(attempt, offset) for attempt, offset, _ in resumed] == [(2, 0)]
    assert (agent.root / "releases" / VERSION).is_dir() and _partials(agent) == []
