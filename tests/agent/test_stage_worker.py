"""Stage workers without a daemon: the wire format round-trips (agent/worker/wire.py), and a real
worker process (agent/worker/process.py, child.py) verifies and extracts a real signed package,
answers a refusal as the registry error it is, and dies with its parent's request to stop.

The daemon's use of workers (kill -9 of a worker or of the daemon, cancellation) is
tests/e2e/test_stage_worker.py."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest

from cutover.agent.daemon.streaming import clear_stale, streaming_dir
from cutover.agent.errors import (
    InternalError,
    LockedError,
    SignatureError,
    UploadOffsetError,
)
from cutover.agent.extract.extractor import ExtractStats
from cutover.agent.host import workerlock
from cutover.agent.host.layout import Layout
from cutover.agent.host.workerlock import holders
from cutover.agent.keys import PrivateKey, generate_keypair
from cutover.agent.lifecycle.stagework import StageJob
from cutover.agent.package.container import open_package
from cutover.agent.package.manifest import MAX_MANIFEST_BYTES
from cutover.agent.trust.approvals import ApprovalMatrix
from cutover.agent.trust.policy import HostHistory, TrustPolicy
from cutover.agent.trust.requirements import Requirements
from cutover.agent.worker import ChildStageWork, WorkerPool, WorkerProcess
from cutover.agent.worker.wire import (
    error_from_wire,
    error_to_wire,
    head_from_wire,
    head_to_wire,
    history_from_wire,
    history_to_wire,
    policy_from_wire,
    policy_to_wire,
    stats_from_wire,
    stats_to_wire,
)
from tests.conftest import PackageFactory


def _policy(key: PrivateKey, other: PrivateKey) -> TrustPolicy:
    return TrustPolicy(
        app="demo",
        keys={key.keyid: key.public, other.keyid: other.public},
        threshold=2,
        key_roles={key.keyid: frozenset({"qa", "release"}), other.keyid: frozenset({"sec"})},
        approvals=ApprovalMatrix.model_validate({"major": {"qa": 1, "sec": 1}}),
        versioning="semver",
        allowed_branches=("main", "release/*"),
        requirements=Requirements.model_validate({"major": ["owner"]}),
    )


def test_policy_history_and_stats_round_trip(tmp_path: Path) -> None:
    a, b = generate_keypair(tmp_path / "a"), generate_keypair(tmp_path / "b")
    policy = _policy(a, b)
    assert policy_from_wire(policy_to_wire(policy)) == policy
    history = HostHistory({"1.0.0": "ab" * 32}, "1.0.0", allow_downgrade=True)
    assert history_from_wire(history_to_wire(history)) == history
    stats = ExtractStats(
        3,
        2,
        1,
        1000,
        0.5,
        {"hardlink": (2, 600)},
        {"reuse_sealed_files": 2, "reuse_hashed_files": 1},
    )
    assert stats_from_wire(stats_to_wire(stats)) == stats


def test_head_round_trip_keeps_every_field_but_the_file_list(
    tmp_path: Path, make_package: PackageFactory, release_key: PrivateKey
) -> None:
    pkg = make_package("1.2.0", toml='[[hooks.stage]]\nname = "x"\nargv = ["true"]\n')
    job = StageJob(pkg)
    policy = TrustPolicy(app="demo", keys={release_key.keyid: release_key.public})
    head = job.verify(policy, HostHistory(), "1.2.0")
    job.close()
    parts, fh = open_package(pkg)
    fh.close()
    back = head_from_wire(head_to_wire(head), parts.manifest_bytes)
    assert back.space_needed == head.space_needed and back.total_bytes == head.total_bytes
    assert head.verified.manifest.files and back.verified.manifest.files == []
    full = head.verified.manifest.model_copy(update={"files": []})
    assert back.verified.manifest == full
    assert back.verified.manifest.hooks.stage[0].name == "x"
    same = {f.name for f in dataclasses.fields(back.verified)} - {"manifest"}
    for name in same:
        assert getattr(back.verified, name) == getattr(head.verified, name), name


def test_errors_keep_their_class_code_and_details() -> None:
    for exc in (
        SignatureError("no trusted signature", code="untrusted"),
        LockedError("busy", holder={"pid": 7}),
        UploadOffsetError("bad offset", offset=12),
    ):
        back = error_from_wire(error_to_wire(exc))
        assert type(back) is type(exc)
        assert (back.code, str(back), back.wire_extra()) == (exc.code, str(exc), exc.wire_extra())
    bug = error_from_wire(error_to_wire(ValueError("boom")))
    assert isinstance(bug, InternalError) and "ValueError: boom" in str(bug)


async def test_a_worker_verifies_and_extracts_a_real_package(
    tmp_path: Path, make_package: PackageFactory, release_key: PrivateKey
) -> None:
    pkg = make_package("1.0.0")
    layout = Layout(tmp_path / "root")
    for d in layout.dirs():
        d.mkdir(parents=True, exist_ok=True)
    pool = WorkerPool()
    pool.start()
    work = ChildStageWork(pool, pkg)
    try:
        policy = TrustPolicy(app="demo", keys={release_key.keyid: release_key.public})
        head = await work.verify(policy, HostHistory(), "1.0.0")
        assert work.pid is not None and head.verified.manifest.version == "1.0.0"
        assert head.verified.signers == (release_key.keyid,)
        dest = layout.incoming / "1.0.0.test"
        stats = await work.extract(layout, dest, None, "off")
        assert stats.files == 5 and (dest / "cutover.toml").is_file()  # the four and its toml
        assert (dest / "VERSION").read_text() == "1.0.0\n"
        await work.make_readonly(layout, dest, hooks_ran=True)
        assert (dest / "VERSION").stat().st_mode & 0o777 == 0o444
    finally:
        await work.close()
        await pool.close()


async def test_a_refusal_in_the_worker_is_the_same_registry_error(
    tmp_path: Path, make_package: PackageFactory
) -> None:
    pkg = make_package("1.0.0")
    stranger = generate_keypair(tmp_path / "stranger")
    pool = WorkerPool()
    work = ChildStageWork(pool, pkg)
    try:
        policy = TrustPolicy(app="demo", keys={stranger.keyid: stranger.public})
        with pytest.raises(SignatureError) as info:
            await work.verify(policy, HostHistory(), "1.0.0")
        local = StageJob(pkg)
        with pytest.raises(SignatureError) as same:
            local.verify(policy, HostHistory(), "1.0.0")
        local.close()
        assert (info.value.code, str(info.value)) == (same.value.code, str(same.value))
    finally:
        await work.close()
        await pool.close()


async def test_a_killed_worker_is_a_clear_error() -> None:
    worker = await WorkerProcess.spawn()
    await worker.kill()
    with pytest.raises(InternalError) as info:
        await worker.request({"job": "stage", "package": "/nonexistent"}, "verifying x")
    assert info.value.code == "stage_worker_died"
    assert f"pid {worker.pid}" in str(info.value) and "SIGKILL" in str(info.value)


_HOLDER = """
import pathlib, sys, time
from cutover.agent.host.workerlock import hold_shared
lock, dest = map(pathlib.Path, sys.argv[1:])
hold_shared(lock)
dest.mkdir()
(dest / "f").write_bytes(b"x")
sys.stdout.write("held\\n")
sys.stdout.flush()
sys.stdin.read()  # until the test kills it
"""


def test_a_removal_waits_for_the_worker_lock_and_names_a_survivor(tmp_path: Path) -> None:
    """clear_stale (and recovery, tests/e2e/test_stage_worker.py) take the worker lock
    exclusively: a bounded wait ends in an error naming the pid, with nothing removed."""
    layout = Layout(tmp_path / "root")
    for d in layout.dirs():
        d.mkdir(parents=True, exist_ok=True)
    tree = streaming_dir(layout) / "op-1"
    streaming_dir(layout).mkdir()
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, str(layout.stream_worker_lock), str(tree)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == b"held\n"
        assert holders(layout.stream_worker_lock) == [holder.pid]
        with (
            pytest.raises(LockedError) as info,
            workerlock.exclusive(layout.stream_worker_lock, timeout_s=0.2),
        ):
            raise AssertionError("taken while a worker holds it")
        msg = str(info.value)
        assert f"pid {holder.pid}" in msg and str(layout.stream_worker_lock) in msg
        assert "kill it if its daemon is gone" in msg
        assert (tree / "f").read_bytes() == b"x"  # nothing removed
        # the incoming/ lock is another file: recovery does not wait for an upload
        with workerlock.exclusive(layout.worker_lock, timeout_s=0.2):
            pass
    finally:
        holder.kill()
        holder.communicate()  # reaped, its pipes closed
    clear_stale(layout)
    assert list(streaming_dir(layout).iterdir()) == []
    assert holders(layout.stream_worker_lock) == []


async def test_a_line_over_the_limit_kills_the_worker_with_a_clear_error() -> None:
    """A line may be as long as a signed manifest (its head, with every chunk digest); a longer
    one is a clear stage_worker_died, the worker killed (not a raw ValueError: internal)."""
    worker = await WorkerProcess.spawn()
    worker.send({"job": "stage", "package": "/nonexistent"})
    # the real worker echoes an unknown command in its error: a line over the limit
    op = "x" * (MAX_MANIFEST_BYTES + (1 << 20))
    with pytest.raises(InternalError) as info:
        await worker.request({"op": op}, "verifying big.cutover")
    msg = str(info.value)
    assert info.value.code == "stage_worker_died" and f"pid {worker.pid}" in msg
    assert "a line longer than" in msg and "verifying big.cutover" in msg
    assert "stage the package again" in msg and len(msg) < 1000
    assert not worker.alive  # killed and reaped


_GARBLER = """
import json, os, sys
sys.stdout.write(json.dumps({"ready": os.getpid()}) + "\\n")
sys.stdout.write("not json\\n")
sys.stdout.flush()
sys.stdin.read()
"""


async def test_a_line_that_is_not_json_kills_the_worker_with_a_clear_error() -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        _GARBLER,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    worker = WorkerProcess(proc)  # a peer that breaks the protocol
    assert (await worker.receive()) == {"ready": proc.pid}
    with pytest.raises(InternalError) as info:
        await worker.request({"op": "verify"}, "verifying x")
    assert info.value.code == "stage_worker_died"
    assert "b'not json\\n'" in str(info.value) and f"pid {proc.pid}" in str(info.value)
    assert not worker.alive


async def test_a_bug_in_the_worker_is_logged_with_its_traceback(
    capfd: pytest.CaptureFixture[str],
) -> None:
    """A non-registry exception reaches the daemon as internal (type and message); its
    traceback goes to the log stream the worker shares with the daemon (stderr)."""
    worker = await WorkerProcess.spawn()
    worker.send({"job": "stage", "package": "/nonexistent"})
    with pytest.raises(InternalError) as info:
        await worker.request({"op": "bogus"}, "verifying x")
    assert "ValueError: unknown stage worker command 'bogus'" in str(info.value)
    await worker.close()
    events = [json.loads(line) for line in capfd.readouterr().err.splitlines() if line[:1] == "{"]
    (failed,) = [e for e in events if e.get("event") == "stage_worker_failed"]
    assert failed["pid"] == worker.pid and failed["doing"] == "stage bogus"
    assert (
        "Traceback" in failed["exception"] and "unknown stage worker command" in failed["exception"]
    )
