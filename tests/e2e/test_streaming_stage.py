"""Streaming stage against the REAL agent (agent/daemon/streaming.py): a chunked upload is
extracted while it arrives, under the trust decision taken on its manifest first, without the
app lock; every refusal is the ordinary stage's and leaves nothing behind.

The client's transport holds the body back at a chosen byte (an event the test sets), so "while
it arrives" is a state the test observes, never a timing."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from cutover.agent.errors import (
    AuthError,
    DigestMismatchError,
    ImmutableVersionError,
    SignatureError,
)
from cutover.agent.package.container import open_package
from cutover.controller.build import build_package, sign_package
from cutover.controller.transport import AiohttpTransport, SignedRequest, TransportResponse
from tests.e2e.conftest import APP, Agent, Keys

pytestmark = pytest.mark.e2e

VERSION = "1.0.0"
BLOB = 10 << 20  # incompressible: the payload spans three 4 MiB chunks


@dataclasses.dataclass
class HeldBody:
    """Sends an upload's body up to ``hold_at`` bytes, then waits for ``release``; ``flip``
    alters one byte of the body after it was signed (a tampering relay)."""

    hold_at: int
    release: asyncio.Event = dataclasses.field(default_factory=asyncio.Event)
    held: asyncio.Event = dataclasses.field(default_factory=asyncio.Event)
    flip: int | None = None
    inner: AiohttpTransport = dataclasses.field(default_factory=AiohttpTransport)

    async def _body(self, body: Any) -> AsyncIterator[bytes]:
        sent = 0
        async for chunk in body:
            data = bytearray(chunk)
            if self.flip is not None and sent <= self.flip < sent + len(data):
                data[self.flip - sent] ^= 0xFF
            if sent < self.hold_at <= sent + len(data):
                cut = self.hold_at - sent
                yield bytes(data[:cut])
                self.held.set()
                await self.release.wait()
                data = data[cut:]
            sent += len(chunk)
            if data:
                yield bytes(data)

    async def send(self, request: SignedRequest) -> TransportResponse:
        if request.method == "PUT":
            request = dataclasses.replace(request, body=self._body(request.body))
        return await self.inner.send(request)

    async def aclose(self) -> None:
        await self.inner.aclose()


def _package(tmp: Path, keys: Keys, version: str = VERSION, key: Any = None) -> Path:
    src = tmp / f"src-{version}"
    (src / "a").mkdir(parents=True)
    (src / "a" / "index.php").write_text("<?php echo 1;\n")
    (src / "zz.bin").write_bytes(os.urandom(BLOB))
    (src / "cutover.toml").write_text(f'app = "{APP}"\n')
    out = tmp / f"{APP}-{version}.cutover"
    build_package(src, out, version=version)
    sign_package(out, key or keys.release)
    return out


def _payload_at(pkg: Path, chunk: int) -> int:
    """The package offset of a payload chunk's first byte."""
    parts, fh = open_package(pkg)
    fh.close()
    return parts.payload_offset + chunk * (4 << 20)


def _streaming(agent: Agent) -> list[str]:
    d = agent.meta / "streaming"
    return sorted(p.name for p in d.iterdir()) if d.exists() else []


async def _until(predicate: Any, what: str) -> None:
    for _ in range(600):
        if predicate():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"never happened: {what}")


def _events(agent: Agent, name: str) -> list[dict[str, Any]]:
    return [e for e in agent.log_events() if e.get("event") == name]


async def _until_held(held: HeldBody, upload: asyncio.Task[Any]) -> None:
    """Wait until the body is held back (or fail with the upload's own error)."""
    waiter = asyncio.create_task(held.held.wait())
    await asyncio.wait({waiter, upload}, return_when=asyncio.FIRST_COMPLETED)
    if not held.held.is_set():
        waiter.cancel()
        upload.result()
        raise AssertionError("the upload ended before its body was held")


@pytest.fixture
def agent(make_agent: Any) -> Agent:
    """An agent that takes the test's 10 MiB packages (reuse off: with files to take from an
    installed release, a stage takes them there instead of streaming)."""
    a: Agent = make_agent(max_upload_bytes=64 << 20, app_toml='reuse = "off"\n')
    a.start()
    return a


async def test_an_upload_is_extracted_while_it_arrives(
    agent: Agent, keys: Keys, tmp_path: Path
) -> None:
    pkg = _package(tmp_path, keys)
    held = HeldBody(hold_at=_payload_at(pkg, 2))  # head and two chunks sent, one held back
    async with agent.client(transport=held, upload_timeout_s=120) as c:
        upload = asyncio.create_task(c.upload(APP, VERSION, pkg))
        await _until_held(held, upload)
        # the body is incomplete, yet its first files are already extracted (no lock held)
        await _until(
            lambda: any(
                (agent.meta / "streaming" / n / "a" / "index.php").exists()
                for n in _streaming(agent)
            ),
            "a file of the held upload extracted",
        )
        assert not upload.done()
        assert not (await c.app(APP)).busy  # nothing reserves the app while bytes arrive
        held.release.set()
        record = await c.wait((await upload).operation)
    assert record.status == "succeeded", record
    release = agent.root / "releases" / VERSION
    assert (release / "a" / "index.php").read_text() == "<?php echo 1;\n"
    blob = (tmp_path / f"src-{VERSION}" / "zz.bin").read_bytes()
    assert (
        hashlib.sha256((release / "zz.bin").read_bytes()).digest() == hashlib.sha256(blob).digest()
    )
    assert len(_events(agent, "stream_stage_claimed")) == 1  # the stage took the streamed tree
    assert _events(agent, "stream_stage_fallback") == []
    snap = agent.snapshot()
    assert snap["incoming"] == [] and snap["uploads"] == [] and _streaming(agent) == []
    # one worker process for the whole upload: the one that streamed it went on with the stage
    (started,) = _events(agent, "stream_stage_started")
    (stage_worker,) = _events(agent, "stage_worker")
    assert stage_worker["pid"] == started["worker"] and stage_worker["streamed"] is True
    assert [e["pid"] for e in _events(agent, "stage_worker_done")] == [started["worker"]]


async def test_other_operations_proceed_while_a_streaming_upload_is_held(
    agent: Agent, keys: Keys, tmp_path: Path, packages: dict[str, Path]
) -> None:
    """Recovery under the app lock (an activate here) leaves the streamed tree alone."""
    pkg = _package(tmp_path, keys, "3.0.0")
    held = HeldBody(hold_at=_payload_at(pkg, 1))
    async with agent.client(transport=held, upload_timeout_s=120) as c:
        staged = await c.wait((await c.upload(APP, "1.0.0", packages["1.0.0"])).operation)
        assert staged.status == "succeeded", staged
        upload = asyncio.create_task(c.upload(APP, "3.0.0", pkg))
        await _until_held(held, upload)
        await _until(lambda: bool(_streaming(agent)), "the streaming tree exists")
        activated = await c.wait((await c.activate(APP, "1.0.0")).operation)
        assert activated.status == "succeeded", activated
        held.release.set()
        record = await c.wait((await upload).operation)
    assert record.status == "succeeded", record
    assert agent.current() == "releases/1.0.0"
    assert (agent.root / "releases" / "3.0.0" / "zz.bin").stat().st_size == BLOB
    assert [e["version"] for e in _events(agent, "stream_stage_claimed")] == ["1.0.0", "3.0.0"]
    assert _streaming(agent) == [] and agent.snapshot()["incoming"] == []


async def test_the_stage_decides_again_under_the_lock_with_the_history_of_then(
    make_agent: Any, keys: Keys, tmp_path: Path
) -> None:
    """The stream worker verified 3.0.0 while it was unknown here; another package of 3.0.0
    is staged while the first upload is held. The held upload's stage, in that same worker,
    decides with the history read under the lock: versions are immutable, and nothing of it is
    left."""
    # held for as long as the other upload and its stage take: no idle timeout in the way
    agent: Agent = make_agent(
        max_upload_bytes=64 << 20, app_toml='reuse = "off"\n', upload_idle_timeout_s=600.0
    )
    agent.start()
    pkg = _package(tmp_path, keys, "3.0.0")
    other = _package(tmp_path / "other", keys, "3.0.0")
    held = HeldBody(hold_at=_payload_at(pkg, 2))
    async with agent.client(transport=held, upload_timeout_s=120) as c:
        upload = asyncio.create_task(c.upload(APP, "3.0.0", pkg))
        await _until_held(held, upload)
        await _until(lambda: bool(_streaming(agent)), "the streaming tree exists")
        async with agent.client(upload_timeout_s=120) as c2:
            first = await c2.wait((await c2.upload(APP, "3.0.0", other)).operation)
        assert first.status == "succeeded", first
        before = agent.snapshot()
        held.release.set()
        record = await c.wait((await upload).operation)
    assert record.status == "failed" and record.error is not None, record
    with pytest.raises(ImmutableVersionError):
        record.raise_for_error()
    (started,) = _events(agent, "stream_stage_started")
    assert _events(agent, "stream_stage_extracted")  # it had verified and extracted it all
    decided = [e for e in _events(agent, "stage_worker") if e["pid"] == started["worker"]]
    assert [e["streamed"] for e in decided] == [True]  # the refusal came from that worker
    assert _events(agent, "stream_stage_claimed") == []
    after = agent.snapshot()  # as it was, but for the held upload's spool, now removed
    assert after == {**before, "uploads": []}
    blob = (tmp_path / "other" / "src-3.0.0" / "zz.bin").read_bytes()
    assert (agent.root / "releases" / "3.0.0" / "zz.bin").read_bytes() == blob
    assert _streaming(agent) == []


async def test_a_tampered_chunk_in_an_upload_is_refused_and_leaves_nothing(
    agent: Agent, keys: Keys, tmp_path: Path
) -> None:
    pkg = _package(tmp_path, keys)
    data = bytearray(pkg.read_bytes())
    data[_payload_at(pkg, 1) + 4096] ^= 0xFF  # the second chunk; the signature stays valid
    pkg.write_bytes(bytes(data))
    before = agent.snapshot()
    async with agent.client(upload_timeout_s=120) as c:
        record = await c.wait((await c.upload(APP, VERSION, pkg)).operation)
    assert record.status == "failed" and record.error is not None, record
    with pytest.raises(DigestMismatchError) as info:
        record.raise_for_error()
    assert info.value.code == "chunk_digest" and "chunk 2 of 3" in str(info.value)
    (fallback,) = _events(agent, "stream_stage_fallback")
    assert "chunk 2 of 3" in fallback["reason"]
    after = agent.snapshot()
    assert after["current"] == before["current"] and after["releases"] == before["releases"]
    assert after["incoming"] == [] and after["uploads"] == [] and _streaming(agent) == []


async def test_a_body_altered_after_signing_is_refused_and_its_tree_removed(
    agent: Agent, keys: Keys, tmp_path: Path
) -> None:
    """The chunks are signed by the release key, the body by the controller key: a byte changed
    in transit (here in the last chunk, after two were extracted) fails the Content-Digest."""
    pkg = _package(tmp_path, keys)
    held = HeldBody(hold_at=_payload_at(pkg, 2), flip=_payload_at(pkg, 2) + 10)
    before = agent.snapshot()
    async with agent.client(transport=held, upload_timeout_s=120) as c:
        upload = asyncio.create_task(c.upload(APP, VERSION, pkg))
        await _until_held(held, upload)
        await _until(lambda: bool(_streaming(agent)), "the streaming tree exists")
        held.release.set()
        with pytest.raises(AuthError) as info:
            await upload
    assert info.value.code == "digest_mismatch"
    await _until(lambda: _streaming(agent) == [], "the streamed tree removed")
    assert agent.snapshot() == before


async def test_an_untrusted_package_is_never_extracted(
    agent: Agent, keys: Keys, tmp_path: Path
) -> None:
    pkg = _package(tmp_path, keys, key=keys.stranger)
    before = agent.snapshot()
    async with agent.client(upload_timeout_s=120) as c:
        record = await c.wait((await c.upload(APP, VERSION, pkg)).operation)
    with pytest.raises(SignatureError):
        record.raise_for_error()
    (fallback,) = _events(agent, "stream_stage_fallback")
    assert "trusted" in fallback["reason"] or "signature" in fallback["reason"]
    assert _events(agent, "stream_stage_claimed") == []
    after = agent.snapshot()
    assert after["current"] == before["current"] and after["releases"] == before["releases"]
    assert after["incoming"] == [] and after["uploads"] == [] and _streaming(agent) == []


async def test_streaming_can_be_turned_off(make_agent: Any, keys: Keys, tmp_path: Path) -> None:
    agent: Agent = make_agent(stream_uploads=False, max_upload_bytes=64 << 20)
    agent.start()
    pkg = _package(tmp_path, keys)
    async with agent.client(upload_timeout_s=120) as c:
        record = await c.wait((await c.upload(APP, VERSION, pkg)).operation)
    assert record.status == "succeeded", record
    assert _events(agent, "stream_stage_claimed") == [] and _streaming(agent) == []
    assert (agent.root / "releases" / VERSION / "zz.bin").stat().st_size == BLOB
