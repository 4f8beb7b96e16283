"""The agent API end to end: real ``cutover-agent serve``, real signed requests, real packages."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from cutover.agent.api_models import Event, OperationRecord
from cutover.agent.errors import (
    AuthError,
    DigestMismatchError,
    LockedError,
    NotFoundError,
    StateError,
    TransportError,
)
from cutover.agent.host.lock import AppLock
from cutover.agent.package.container import read_package
from tests.e2e.conftest import APP, SLOW_VERSION, Agent, send_raw

pytestmark = pytest.mark.e2e


def _names(events: list[Event]) -> list[str]:
    return [e.event for e in events]


def _in_order(names: list[str], expected: list[str]) -> bool:
    """``expected`` appears in ``names`` as a subsequence."""
    it = iter(names)
    return all(any(n == want for n in it) for want in expected)


async def _events(client: Any, op_id: str) -> list[Event]:
    return [e async for e in client.events(op_id)]


async def test_upload_activate_rollback_with_event_stream(
    agent: Agent, packages: dict[str, Path]
) -> None:
    """Stage two releases over HTTP, activate both, roll back; the event streams tell the story."""
    async with agent.client() as c:
        assert (await c.health()).to_json() == {"status": "ok"}
        accepted = await c.upload(APP, "1.0.0", packages["1.0.0"])
        assert accepted.operation and accepted.status == "running"
        stage_events = await _events(c, accepted.operation)
        assert _in_order(
            _names(stage_events),
            [
                "operation.start",
                "op.start",
                "verify.done",
                "extract.done",
                "stage.done",
                "operation.done",
            ],
        ), _names(stage_events)
        record = await c.operation(accepted.operation)
        assert record.status == "succeeded" and record.result and record.result.version == "1.0.0"

        act = await c.activate(APP, "1.0.0")
        act_events = await _events(c, act.operation)
        assert _in_order(
            _names(act_events),
            ["operation.start", "op.start", "flip", "activate.done", "operation.done"],
        ), _names(act_events)
        assert act_events[-1].status == "succeeded"

        await _succeeds(c, c.upload(APP, "1.1.0", packages["1.1.0"]))
        done = await c.wait((await c.activate(APP, "1.1.0")).operation)
        assert done.status == "succeeded", done
        assert agent.current() == "releases/1.1.0"

        rb = await c.rollback(APP)
        rb_events = await _events(c, rb.operation)
        assert _in_order(_names(rb_events), ["op.start", "flip", "rollback.done", "operation.done"])
        assert agent.current() == "releases/1.0.0"

        apps = await c.apps()
        (demo,) = apps.apps
        assert demo.current == "1.0.0" and demo.busy is None
        detail = await c.app(APP)
        statuses = {r.version: r.status for r in detail.releases}
        assert statuses["1.0.0"] == "active" and statuses["1.1.0"] in ("staged", "previous")
        journal = await c.journal(APP, limit=3)
        assert len(journal) == 3 and journal[-1].event == "rollback.done"


async def test_reupload_of_staged_version_is_idempotent(
    agent: Agent, packages: dict[str, Path]
) -> None:
    """The same package again: the operation succeeds, reports already_staged, journals nothing."""
    async with agent.client() as c:
        first = await c.wait((await c.upload(APP, "1.0.0", packages["1.0.0"])).operation)
        assert first.status == "succeeded"
        before = agent.snapshot()
        again = await c.wait((await c.upload(APP, "1.0.0", packages["1.0.0"])).operation)
        assert again.status == "succeeded" and again.result and again.result.already_staged is True
        assert agent.snapshot() == before


async def test_conflicting_operations_get_409_with_the_holder(
    agent: Agent, packages: dict[str, Path]
) -> None:
    """While an activation runs (its post_activate hook waits), other work is refused with 409."""
    shared = agent.root / "shared"
    async with agent.client() as c:
        for v in ("1.0.0", SLOW_VERSION):
            await _succeeds(c, c.upload(APP, v, packages[v]))
        await _succeeds(c, c.activate(APP, "1.0.0"))
        slow = await c.activate(APP, SLOW_VERSION)
        await _wait_for(lambda: (shared / "hook-started").exists())
        before = agent.snapshot()

        with pytest.raises(LockedError) as locked:
            await c.rollback(APP)
        assert locked.value.holder["operation"] == "activate"
        assert locked.value.holder["id"] == slow.operation
        with pytest.raises(LockedError):
            await c.upload(APP, "1.1.0", packages["1.1.0"])
        with pytest.raises(LockedError):
            await c.pin(APP, "1.0.0")
        assert agent.snapshot() == before  # nothing was staged, the upload body never landed

        (shared / "hook-release").touch()
        done = await c.wait(slow.operation)
        assert done.status == "succeeded", done
        assert agent.current() == f"releases/{SLOW_VERSION}"


async def test_lock_held_by_another_process_gives_409(
    agent: Agent, packages: dict[str, Path]
) -> None:
    """The app flock taken outside the daemon (as the on-host CLI does) is reported as the holder."""
    async with agent.client() as c:
        await _succeeds(c, c.upload(APP, "1.0.0", packages["1.0.0"]))
        lock = AppLock(agent.meta / "lock", APP, "cli activate 1.0.0")
        lock.acquire()
        try:
            with pytest.raises(LockedError) as locked:
                await c.activate(APP, "1.0.0")
            assert locked.value.holder["operation"] == "cli activate 1.0.0"
            assert locked.value.holder["pid"] == os.getpid()
        finally:
            lock.release()
        await _succeeds(c, c.activate(APP, "1.0.0"))


async def test_pin_protects_from_delete_then_delete_removes(
    agent: Agent, packages: dict[str, Path]
) -> None:
    async with agent.client() as c:
        for v in ("1.0.0", "1.1.0", "1.2.0"):
            await _succeeds(c, c.upload(APP, v, packages[v]))
        await _succeeds(c, c.activate(APP, "1.2.0"))
        assert (await c.pin(APP, "1.0.0")).message == "pinned 1.0.0"
        refused = await c.wait((await c.delete(APP, "1.0.0")).operation)
        assert (
            refused.status == "failed" and refused.error and refused.error.error == "invalid_state"
        )
        await c.unpin(APP, "1.0.0")
        with pytest.raises(StateError, match="not marked bad"):  # clear-bad: only a bad release
            await c.clear_bad(APP, "1.0.0")
        deleted = await c.wait((await c.delete(APP, "1.0.0")).operation)
        assert deleted.status == "succeeded", deleted
        assert not (agent.root / "releases" / "1.0.0").exists()
        with pytest.raises(NotFoundError):
            await c.operation("0123456789abcdef")


async def _succeeds(client: Any, request: Any) -> OperationRecord:
    """Await an accepted operation to its end and assert it succeeded; return its record."""
    record: OperationRecord = await client.wait((await request).operation)
    assert record.status == "succeeded", record
    return record


async def _wait_for(cond: Any, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)


# ---------------------------------------------------------------------- fetch
async def _package_store(
    data: bytes, cut_first_at: int | None
) -> tuple[asyncio.Server, int, list[dict[str, str]]]:
    """A tiny HTTP store on 127.0.0.1 that supports Range, and may cut its first answer short."""
    seen: list[dict[str, str]] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
        headers = {k.lower(): v.strip() for k, _, v in (h.partition(":") for h in head[1:] if h)}
        seen.append(headers)
        extra = ""
        start = 0
        if "range" in headers and headers.get("if-range", '"v1"') == '"v1"':
            start = int(headers["range"].removeprefix("bytes=").rstrip("-"))
            extra = f"Content-Range: bytes {start}-{len(data) - 1}/{len(data)}\r\n"
        body = data[start:]
        status = "206 Partial Content" if extra else "200 OK"
        writer.write(
            f'HTTP/1.1 {status}\r\nContent-Length: {len(body)}\r\nETag: "v1"\r\n'
            f"Accept-Ranges: bytes\r\n{extra}Connection: close\r\n\r\n".encode()
        )
        if cut_first_at is not None and len(seen) == 1:
            writer.write(body[:cut_first_at])
            await writer.drain()
            writer.transport.abort()  # the connection drops mid-body
            return
        writer.write(body)
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1], seen


def _fetching_agent(make_agent: Any, port: int) -> Agent:
    """An agent allowed to fetch from the loopback store on ``port`` (refused by default)."""
    agent: Agent = make_agent(fetch_allow=[f"http://127.0.0.1:{port}/"])
    agent.start()
    return agent


async def test_fetch_resumes_with_range_after_a_dropped_connection(
    make_agent: Any, packages: dict[str, Path]
) -> None:
    data = packages["1.0.0"].read_bytes()
    server, port, seen = await _package_store(data, cut_first_at=2000)
    agent = _fetching_agent(make_agent, port)
    async with server, agent.client() as c:
        accepted = await c.fetch(
            APP, "1.0.0", f"http://127.0.0.1:{port}/demo-1.0.0.cutover?X-Amz-Signature=s3cr3t"
        )
        events = await _events(c, accepted.operation)
        record = await c.operation(accepted.operation)
    assert record.status == "succeeded", record
    assert record.result and record.result.fetched_bytes == len(data)
    assert [h.get("range") for h in seen] == [None, "bytes=2000-"]
    assert seen[1].get("if-range") == '"v1"'
    assert _in_order(_names(events), ["fetch.start", "fetch.done", "verify.done", "stage.done"])
    assert "s3cr3t" not in str(events) and "s3cr3t" not in agent.log_text()
    assert (agent.root / "releases" / "1.0.0").is_dir()
    assert not list((agent.state_dir / "uploads").iterdir())


async def test_fetch_from_a_tampering_store_is_rejected(
    make_agent: Any, packages: dict[str, Path]
) -> None:
    """The URL store is untrusted: a flipped payload byte fails verification; nothing changes."""
    data = bytearray(packages["1.1.0"].read_bytes())
    with packages["1.1.0"].open("rb") as fh:
        parts = read_package(fh, len(data))
    data[parts.payload_offset + parts.payload_size // 2] ^= 0xFF
    server, port, _ = await _package_store(bytes(data), cut_first_at=None)
    agent = _fetching_agent(make_agent, port)
    before = agent.snapshot()
    async with server, agent.client() as c:
        record = await c.wait((await c.fetch(APP, "1.1.0", f"http://127.0.0.1:{port}/p")).operation)
    assert record.status == "failed" and record.error and record.error.error == "chunk_digest"
    with pytest.raises(DigestMismatchError) as refused:
        record.raise_for_error()
    assert refused.value.code == "chunk_digest", record
    after = agent.snapshot()
    assert after["current"] == before["current"] and after["releases"] == before["releases"]
    assert after["incoming"] == [] and after["uploads"] == []


# ---------------------------------------------------------------------- live config
async def test_removed_key_stops_working_without_restart(agent: Agent) -> None:
    pid = agent.pid
    async with agent.client(agent.keys.other_deploy) as other, agent.client() as deploy:
        await other.apps()
        agent.write_config(controller_keys=("deploy", "read"))
        deadline = time.monotonic() + 60  # a deadline for a loaded machine
        while True:
            try:
                await other.apps()
            except AuthError as exc:
                assert exc.code == "unknown_key"
                break
            assert time.monotonic() < deadline, "removed key still accepted after 60 s"
            await asyncio.sleep(0.2)
        await deploy.apps()  # the keys that stayed keep working

        agent.config.write_text("[agent\nbroken = ")  # a bad edit: logged, old config kept
        await _wait_for(lambda: "config_reload_failed" in agent.log_text(), 60)
        await deploy.apps()
        with pytest.raises(AuthError):
            await other.apps()

        agent.write_config()  # the key comes back, via SIGHUP this time as well
        os.kill(agent.pid, signal.SIGHUP)
        await _wait_for(
            lambda: any(
                e.get("event") == "config_reloaded" and e.get("trigger") == "sighup"
                for e in agent.log_events()
            ),
            60,
        )
        await _wait_for(lambda: "controller_keys_added" in agent.log_text(), 60)
        await other.apps()
    assert agent.pid == pid and agent.proc is not None and agent.proc.poll() is None


# ---------------------------------------------------------------------- shutdown
async def test_sigterm_during_upload_aborts_it_and_exits_0(
    make_agent: Any, packages: dict[str, Path]
) -> None:
    agent = make_agent(upload_idle_timeout_s=30.0)
    agent.start()
    before = agent.snapshot()
    data = packages["1.0.0"].read_bytes()
    target = f"/v1/apps/{APP}/releases/1.0.0"
    headers = agent.upload_headers(target, data)
    raw = asyncio.create_task(
        send_raw(
            agent.port,
            "PUT",
            target,
            list(headers.items()),
            data,
            trickle_then_stall=True,
            timeout_s=30,
        )
    )
    uploads = agent.state_dir / "uploads"
    await _wait_for(lambda: any(uploads.iterdir()))
    started = time.monotonic()
    rc = await asyncio.to_thread(agent.stop)
    assert rc == 0, agent.log_text()
    assert time.monotonic() - started < 10
    raw.cancel()
    assert list(uploads.iterdir()) == []
    assert agent.snapshot() == before
    assert any(
        e.get("event") == "draining" and e.get("uploads_aborted") == 1 for e in agent.log_events()
    )

    agent.start()
    async with agent.client() as c:
        (demo,) = (await c.apps()).apps
    assert demo.current is None and demo.pending is None


async def test_sigterm_during_activation_reverts_and_next_start_is_consistent(
    make_agent: Any, packages: dict[str, Path]
) -> None:
    agent = make_agent(drain_timeout_s=1.0)
    agent.start()
    async with agent.client() as c:
        for v in ("1.0.0", SLOW_VERSION):
            await _succeeds(c, c.upload(APP, v, packages[v]))
        await _succeeds(c, c.activate(APP, "1.0.0"))
        await c.activate(APP, SLOW_VERSION)
        await _wait_for(lambda: (agent.root / "shared" / "hook-started").exists())
    assert agent.current() == f"releases/{SLOW_VERSION}"  # flipped; post_activate hook running

    started = time.monotonic()
    rc = await asyncio.to_thread(agent.stop)
    assert rc == 0, agent.log_text()
    assert time.monotonic() - started < 10  # drain 1 s, then cancel + revert
    assert agent.current() == "releases/1.0.0"
    assert "activate.reverted" in [e["event"] for e in agent.journal()]
    assert list((agent.meta / "incoming").iterdir()) == []

    agent.start()
    async with agent.client() as c:
        (demo,) = (await c.apps()).apps
        detail = await c.app(APP)
    assert demo.current == "1.0.0" and demo.pending is None
    statuses = {r.version: r.status for r in detail.releases}
    assert statuses == {"1.0.0": "active", SLOW_VERSION: "bad"}
    recovery = [e for e in agent.log_events() if e.get("event") == "startup_recovery"]
    assert recovery[-1]["clean"] is True  # the revert happened before exit: nothing left to fix


async def test_systemd_notifications_ready_watchdog_stopping(make_agent: Any) -> None:
    """READY=1 once serving, WATCHDOG=1 at half the period, STOPPING=1 on SIGTERM (abstract socket)."""
    import socket

    name = f"cutover-test-{os.getpid()}-{time.monotonic_ns()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(10)
        agent = make_agent()
        agent.start(env={"NOTIFY_SOCKET": "@" + name, "WATCHDOG_USEC": "400000"})
        got: list[str] = []
        while not any("WATCHDOG=1" in g for g in got[1:]):
            got.append((await asyncio.to_thread(sock.recv, 4096)).decode())
        assert got[0].splitlines()[0] == "READY=1"
        assert await asyncio.to_thread(agent.stop) == 0
        rest: list[str] = []
        while not any("STOPPING=1" in r for r in rest):
            rest.append((await asyncio.to_thread(sock.recv, 4096)).decode())


def _self_signed(tmp: Path) -> tuple[Path, Path, str]:
    """A self-signed certificate for 127.0.0.1; returns cert, key and its SHA-256 fingerprint."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    tmp.mkdir(parents=True, exist_ok=True)
    cert_path, key_path = tmp / "agent.crt", tmp / "agent.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path, cert.fingerprint(hashes.SHA256()).hex()


async def test_tls_with_a_pinned_certificate(make_agent: Any, tmp_path: Path) -> None:
    """TLS from tls_cert/tls_key; the client pins the certificate; a wrong pin never connects."""
    cert, key, fingerprint = _self_signed(tmp_path / "tls")
    agent = make_agent(tls_cert=str(cert), tls_key=str(key))
    agent.start()
    async with agent.client(fingerprint=fingerprint) as c:
        assert (await c.apps()).apps[0].app == APP
    with pytest.raises(TransportError):
        async with agent.client(fingerprint="00" * 32) as c:
            await c.apps()
