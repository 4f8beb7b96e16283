"""Resume and retention leftovers against a real daemon (note3 "Review fixes", not fixed then):

* a fresh controller asks first (``GET .../upload/{sha256}``) and resumes a partial that a
  previous controller *process*, killed with SIGKILL mid-body, left on the agent;
* a connection cut after the whole body but before the ``202``: the retry finds the operation
  that took the upload and the push reports its real outcome (a TCP proxy drops the answer);
* an ``insufficient_space`` refusal names ``<state_dir>/resume`` and the bytes it holds, and
  drops nothing;
* resumes are counted in ``/metrics`` (accepted / refused).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
import signal
import sys
import urllib.request
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from cutover.agent.daemon.uploads import owner_of
from tests.e2e.conftest import APP, SLOW_HOOK, Agent, Keys, _build, send_raw
from tests.e2e.test_resume_upload import (
    VERSION,
    CuttingProxy,
    _admitted,
    _cut_upload,
    _headers,
    _partials,
    _resume,
    _target,
    _wait_for,
)

# A controller process: a signed upload of the whole package whose body stops after N bytes;
# it then waits (the connection open) until it is killed.
_STALLED_SENDER = """
import socket, sys, time
port, head, data, n = int(sys.argv[1]), sys.argv[2], open(sys.argv[3], "rb").read(), int(sys.argv[4])
s = socket.create_connection(("127.0.0.1", port))
s.sendall(head.encode("latin-1"))
sys.stdin.readline()  # the agent reads the body now
s.sendall(data[:n])
print("sent", flush=True)
time.sleep(3600)
"""


def _metric(agent: Agent, name: str, **labels: str) -> float:
    with urllib.request.urlopen(f"{agent.base_url}/metrics", timeout=10) as resp:  # noqa: S310
        text = resp.read().decode()
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return float(s.value)
    return 0.0


def _uploads(agent: Agent) -> list[Path]:
    return sorted((agent.state_dir / "uploads").iterdir())


async def test_a_fresh_client_resumes_the_partial_a_killed_controller_process_left(
    agent: Agent, packages: dict[str, Path]
) -> None:
    package = packages[VERSION]
    data = package.read_bytes()
    half = len(data) // 2
    target = _target()
    lines = [f"PUT {target} HTTP/1.1", f"Host: {agent.name}"]
    lines += [f"{k}: {v}" for k, v in _headers(agent, target, data)]
    lines.append(f"Content-Length: {len(data)}")
    head = "\r\n".join(lines) + "\r\n\r\n"
    sender = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        _STALLED_SENDER,
        str(agent.port),
        head,
        str(package),
        str(half),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    assert sender.stdin is not None and sender.stdout is not None
    try:
        await _admitted(agent)
        sender.stdin.write(b"go\n")
        await sender.stdin.drain()
        assert await sender.stdout.readline() == b"sent\n"
    finally:
        await asyncio.sleep(0.2)  # robustness only: the bytes are in the agent's socket
        sender.send_signal(signal.SIGKILL)
        await sender.wait()
    assert sender.returncode == -signal.SIGKILL
    await _wait_for(lambda: [p.stat().st_size for p in _partials(agent)] == [half])
    assert agent.current() is None and not (agent.root / "releases" / VERSION).exists()

    resumed: list[tuple[int, int, str]] = []
    seen: list[tuple[int, int]] = []
    async with agent.client() as c:
        accepted = await c.upload(
            APP,
            VERSION,
            package,
            lambda done, total: seen.append((done, total)),
            on_resume=lambda *a: resumed.append(a),
        )
        record = await c.wait(accepted.operation)
    assert record.status == "succeeded", record
    assert [(attempt, offset) for attempt, offset, _ in resumed] == [(1, half)]
    assert seen[0][0] > half and seen[-1] == (len(data), len(data))  # only the tail was sent
    received = [e for e in agent.log_events() if e.get("event") == "upload_received"]
    assert [(e["offset"], e["bytes"]) for e in received] == [(half, len(data) - half)]
    assert (agent.root / "releases" / VERSION / "VERSION").read_text() == f"{VERSION}\n"
    assert _partials(agent) == [] and _uploads(agent) == []
    assert _metric(agent, "cutover_upload_resumes_total", app=APP, result="accepted") == 1


async def test_a_fresh_client_stages_a_complete_package_the_agent_kept(
    agent: Agent, packages: dict[str, Path]
) -> None:
    """The agent holds the whole package (kept when its app became busy as the body ended,
    tests/e2e/test_slow_upload.py; written here as the agent keeps it): the next client sends
    an empty-body resume at the package's size and the agent stages the held bytes."""
    package = packages[VERSION]
    data = package.read_bytes()
    sha = hashlib.sha256(data).hexdigest()
    folder = agent.state_dir / "resume" / APP
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    kept = folder / f"{sha}_{VERSION}.{owner_of(agent.keys.deploy.keyid)}.part"
    kept.write_bytes(data)
    resumed: list[tuple[int, int, str]] = []
    async with agent.client() as c:
        accepted = await c.upload(APP, VERSION, package, on_resume=lambda *a: resumed.append(a))
        record = await c.wait(accepted.operation)
    assert record.status == "succeeded", record
    assert [(a, o) for a, o, _ in resumed] == [(1, len(data))]
    received = [e for e in agent.log_events() if e.get("event") == "upload_received"]
    assert [(e["offset"], e["bytes"]) for e in received] == [(len(data), 0)]  # nothing re-sent
    assert (agent.root / "releases" / VERSION / "VERSION").read_text() == f"{VERSION}\n"
    assert _partials(agent) == [] and _uploads(agent) == []


async def _pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
    try:
        while chunk := await src.read(65536):
            dst.write(chunk)
            await dst.drain()
    except ConnectionError:
        pass
    finally:
        dst.close()


async def test_a_fresh_client_follows_the_running_stage_of_an_earlier_runs_upload(
    agent: Agent, keys: Keys, tmp_path: Path
) -> None:
    """An earlier controller run sent the whole package and its stage runs (a stage hook waits):
    a new run of the same package by the same key follows that operation, sending nothing."""
    hook = (
        "[[hooks.stage]]\n"
        'name = "wait-for-test"\n'
        f'argv = ["sh", "-c", {json.dumps(SLOW_HOOK)}]\n'
        "timeout_s = 60\n"
    )
    package = _build(tmp_path, "3.0.0", keys.release, hook)
    data = package.read_bytes()
    target = _target("3.0.0")
    first = await send_raw(agent.port, "PUT", target, _headers(agent, target, data), data)
    assert first.status == 202, first.body
    shared = agent.root / "shared"
    await _wait_for(lambda: (shared / "hook-started").exists())
    async with agent.client() as c:
        accepted = await c.upload(APP, "3.0.0", package)
        assert accepted.operation == first.json["operation"]  # followed, not uploaded again
        (shared / "hook-release").touch()
        # it ends between the probe that named it running and the follow: the follow still
        # gets its outcome (the events replay ``operation.done``), not a failure
        await _wait_for(lambda: _finished(agent, accepted.operation))
        record = await c.wait(accepted.operation)
    assert record.status == "succeeded", record
    received = [e for e in agent.log_events() if e.get("event") == "upload_received"]
    assert len(received) == 1
    assert (agent.root / "releases" / "3.0.0" / "VERSION").read_text() == "3.0.0\n"
    assert _partials(agent) == [] and _uploads(agent) == []


def _finished(agent: Agent, op_id: str) -> bool:
    """The agent logged ``op_id``'s end (after its status was set)."""
    return any(
        e.get("event") == "operation" and e.get("operation") == op_id for e in agent.log_events()
    )


class AnswerDroppingProxy(CuttingProxy):
    """A TCP proxy that relays the first PUT whole to the agent, waits for the agent's answer,
    then closes the client's connection without relaying it (the ``202`` is lost on the way
    back); every other request passes through."""

    def __init__(self, agent: Agent) -> None:
        super().__init__(agent, body=0, cuts=0)
        self.dropped: list[bytes] = []

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream)
        try:
            while not self.dropped:  # then a plain relay (event streams have no length)
                head = await reader.readuntil(b"\r\n\r\n")
                if b"expect: 100-continue" in head.lower():  # answer it ourselves, drop the ask
                    head = re.sub(rb"(?i)\r\nexpect: *100-continue", b"", head)
                    writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
                    await writer.drain()
                up_writer.write(head)
                length = re.search(rb"(?i)\r\ncontent-length: *(\d+)", head)
                if length:
                    up_writer.write(await reader.readexactly(int(length[1])))
                await up_writer.drain()
                answer = await up_reader.readuntil(b"\r\n\r\n")
                size = re.search(rb"(?i)\r\ncontent-length: *(\d+)", answer)
                answer += await up_reader.readexactly(int(size[1]) if size else 0)
                if head.startswith(b"PUT ") and not self.dropped:
                    self.dropped.append(answer)
                    return  # the client's connection closes: no answer
                writer.write(answer)
                await writer.drain()
            await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            up_writer.close()
            writer.close()


async def test_an_answer_lost_after_the_whole_body_reports_the_stages_real_outcome(
    agent: Agent, packages: dict[str, Path]
) -> None:
    resumed: list[tuple[int, int, str]] = []
    async with AnswerDroppingProxy(agent) as proxy:
        client = agent.client(authority=agent.name)
        client.base_url = f"http://127.0.0.1:{proxy.port}"
        async with client as c:
            accepted = await c.upload(
                APP, VERSION, packages[VERSION], on_resume=lambda *a: resumed.append(a)
            )
            record = await c.wait(accepted.operation)
    (lost,) = proxy.dropped
    assert lost.startswith(b"HTTP/1.1 202")  # the agent had accepted it
    assert json.loads(lost.split(b"\r\n\r\n", 1)[1])["operation"] == accepted.operation
    assert record.status == "succeeded", record
    assert resumed == []  # nothing was sent again
    received = [e for e in agent.log_events() if e.get("event") == "upload_received"]
    assert len(received) == 1  # one upload, one stage
    assert (agent.root / "releases" / VERSION / "VERSION").read_text() == f"{VERSION}\n"
    assert _partials(agent) == [] and _uploads(agent) == []


async def test_a_resume_at_a_wrong_offset_is_counted_as_refused(
    agent: Agent, packages: dict[str, Path]
) -> None:
    data = packages[VERSION].read_bytes()
    sha = hashlib.sha256(data).hexdigest()
    await _cut_upload(agent, data, 100)
    before = agent.snapshot()
    answer = await _resume(agent, data[200:], sha, 200)
    assert answer.status == 409 and answer.code == "upload_offset"
    assert agent.snapshot() == before
    assert [p.stat().st_size for p in _partials(agent)] == [100]
    assert _metric(agent, "cutover_upload_resumes_total", app=APP, result="refused") == 1
    assert _metric(agent, "cutover_upload_resumes_total", app=APP, result="accepted") == 0


async def test_the_space_refusal_names_the_resume_dir_and_its_bytes_and_drops_nothing(
    tmp_path: Path, make_agent: Any, packages: dict[str, Path]
) -> None:
    st = os.statvfs(tmp_path)
    threshold = 2 * st.f_blocks * st.f_frsize  # more than the filesystem's size
    agent: Agent = make_agent(app_toml=f"min_free_bytes = {threshold}")
    agent.start()
    other = packages["1.1.0"].read_bytes()
    await _cut_upload(agent, other, 300, _target("1.1.0"))  # a partial of this app, another version
    (partial,) = _partials(agent)
    before = agent.snapshot()
    async with agent.client() as c:
        record = await c.wait((await c.upload(APP, VERSION, packages[VERSION])).operation)
    assert record.status == "failed" and record.error is not None, record
    assert record.error.error == "insufficient_space"
    message = record.error.message
    assert f"{agent.state_dir / 'resume'} holds 300 bytes of interrupted uploads" in message
    assert "upload_resume_ttl_s" in message
    assert "Nothing of 1.0.0 was written" in message
    assert _partials(agent) == [partial] and partial.stat().st_size == 300  # not dropped
    assert agent.snapshot() == before
    assert not (agent.root / "releases" / VERSION).exists()
    assert list((agent.root / ".cutover" / "trash").iterdir()) == []
