"""The resumable upload spool's limits, on real files (agent/daemon/uploads.py).

Partials are kept per app up to ``per_app``, up to ``max_bytes`` in all (oldest dropped first; one
larger than the cap alone is not kept), expire ``ttl_s`` after their last byte, and only files the
spool named are ever removed. The clock of a sweep is a parameter: no test waits.
"""

from __future__ import annotations

import array
import errno
import fcntl
import hashlib
import os
import termios
import threading
import time
from pathlib import Path

import pytest

from cutover.agent.daemon.uploads import (
    ResumeLimits,
    SpoolFile,
    UploadKey,
    UploadSpool,
    owner_of,
)
from cutover.agent.errors import DigestMismatchError, LockedError, UploadOffsetError

APP = "ame"

OWNER, OTHER = owner_of("deploy-key"), owner_of("another-deploy-key")


def _spool(tmp_path: Path, **limits: float) -> UploadSpool:
    values = {"ttl_s": 3600.0, "per_app": 2, "max_bytes": 1000, **limits}
    spool = UploadSpool(
        tmp_path / "state",
        lambda: ResumeLimits(values["ttl_s"], int(values["per_app"]), int(values["max_bytes"])),
    )
    (tmp_path / "state" / "uploads").mkdir(parents=True)
    spool.prepare()
    return spool


def _key(n: int, app: str = APP, version: str = "1.0.0") -> UploadKey:
    return UploadKey(app, version, hashlib.sha256(b"%d" % n).hexdigest())


async def _interrupted(spool: UploadSpool, key: UploadKey, data: bytes, op: str) -> int:
    f = await spool.open(key, 0, op, OWNER)
    await f.write(data)
    return await spool.keep(f)


def _held(spool: UploadSpool) -> dict[str, int]:
    return {
        f"{p.parent.name}/{p.name[:4]}": p.stat().st_size for p in spool.resume_dir.rglob("*.part")
    }


async def test_per_app_cap_drops_the_oldest_partial_of_that_app_only(tmp_path: Path) -> None:
    spool = _spool(tmp_path, per_app=1)
    a, b, other = _key(1), _key(2), _key(3, app="web")
    assert await _interrupted(spool, a, b"a" * 10, "op-a") == 10
    assert await _interrupted(spool, other, b"o" * 10, "op-o") == 10
    os.utime(spool.resume_dir / APP / a.filename(OWNER), (1, 1))  # a is older than b
    assert await _interrupted(spool, b, b"b" * 10, "op-b") == 10
    assert (
        spool.held(a, OWNER) == 0 and spool.held(b, OWNER) == 10 and spool.held(other, OWNER) == 10
    )
    assert list(spool.uploads_dir.iterdir()) == []


async def test_total_bytes_cap_drops_the_oldest_and_never_keeps_one_larger_than_it(
    tmp_path: Path,
) -> None:
    spool = _spool(tmp_path, per_app=4, max_bytes=100)
    first, second, big = _key(1), _key(2, app="web"), _key(3)
    await _interrupted(spool, first, b"1" * 60, "op-1")
    os.utime(spool.resume_dir / APP / first.filename(OWNER), (1, 1))
    await _interrupted(spool, second, b"2" * 60, "op-2")  # 120 > 100: the oldest goes
    assert spool.held(first, OWNER) == 0 and spool.held(second, OWNER) == 60
    assert await _interrupted(spool, big, b"3" * 101, "op-3") == 0  # alone over the cap
    assert spool.held(big, OWNER) == 0 and spool.held(second, OWNER) == 60
    assert list(spool.uploads_dir.iterdir()) == []


async def test_resuming_is_off_with_zero_partials_per_app(tmp_path: Path) -> None:
    spool = _spool(tmp_path, per_app=0)
    assert await _interrupted(spool, _key(1), b"x" * 10, "op") == 0
    assert _held(spool) == {} and list(spool.uploads_dir.iterdir()) == []


async def test_sweep_expires_by_last_byte_and_removes_only_its_own_files(tmp_path: Path) -> None:
    spool = _spool(tmp_path, ttl_s=100.0)
    key = _key(1)
    await _interrupted(spool, key, b"x" * 10, "op")
    part = spool.resume_dir / APP / key.filename(OWNER)
    foreign = [
        spool.resume_dir / APP / "notes.txt",
        spool.resume_dir / APP / f"{'0' * 64}_1.0.0.{OWNER}.part.bak",
        spool.resume_dir / "Not-An-App" / f"{'0' * 64}_1.0.0.{OWNER}.part",
    ]
    for f in foreign:
        f.parent.mkdir(exist_ok=True)
        f.write_bytes(b"mine")
    mtime = part.stat().st_mtime
    assert spool.sweep(now=mtime + 100) == []  # not yet: 100 s is the limit
    assert spool.sweep(now=mtime + 101) == [f"{APP}/{key.filename(OWNER)}"]
    assert not part.exists() and all(f.read_bytes() == b"mine" for f in foreign)


async def test_a_resume_appends_and_the_whole_file_must_hash_to_the_key(tmp_path: Path) -> None:
    spool = _spool(tmp_path)
    data = b"package bytes " * 20
    key = UploadKey(APP, "1.0.0", hashlib.sha256(data).hexdigest())
    await _interrupted(spool, key, data[:100], "op-1")
    with pytest.raises(UploadOffsetError) as wrong:
        await spool.open(key, 99, "op-2", OWNER)
    assert wrong.value.offset == 100 and spool.held(key, OWNER) == 100
    f = await spool.open(key, 100, "op-3", OWNER)
    with pytest.raises(LockedError) as busy:
        await spool.open(key, 100, "op-4", OWNER)
    assert busy.value.code == "upload_busy" and spool.busy(key)
    await f.write(data[100:])
    spool.check_complete(f)  # no error: the prefix held + the tail is the package
    await spool.complete(f)
    assert f.path.read_bytes() == data and not spool.busy(key) and spool.held(key, OWNER) == 0

    await _interrupted(spool, key, data[:50], "op-5")
    g = await spool.open(key, 50, "op-6", OWNER)
    await g.write(b"X" * (len(data) - 50))
    with pytest.raises(DigestMismatchError) as bad:
        spool.check_complete(g)
    assert bad.value.code == "package_digest"
    await spool.discard(g)
    assert not g.path.exists() and spool.held(key, OWNER) == 0 and not spool.busy(key)


async def test_a_bad_tail_is_cut_off_and_the_bytes_held_before_it_are_kept(tmp_path: Path) -> None:
    spool = _spool(tmp_path)
    data = b"package bytes " * 20
    key = UploadKey(APP, "1.0.0", hashlib.sha256(data).hexdigest())
    await _interrupted(spool, key, data[:50], "op-1")
    g = await spool.open(key, 50, "op-2", OWNER)
    await g.write(b"X" * (len(data) - 50))
    with pytest.raises(DigestMismatchError):
        spool.check_complete(g)
    assert await spool.rewind(g) == 50
    assert spool.held(key, OWNER) == 50 and not spool.busy(key)
    (part,) = spool.resume_dir.rglob("*.part")
    assert part.read_bytes() == data[:50] and list(spool.uploads_dir.iterdir()) == []
    h = await spool.open(key, 50, "op-3", OWNER)  # and it still resumes
    await h.write(data[50:])
    spool.check_complete(h)
    await spool.complete(h)
    assert h.path.read_bytes() == data and spool.held(key, OWNER) == 0


async def test_a_resume_by_another_key_is_refused_and_the_partial_is_unchanged(
    tmp_path: Path,
) -> None:
    spool = _spool(tmp_path)
    data = b"package bytes " * 20
    key = UploadKey(APP, "1.0.0", hashlib.sha256(data).hexdigest())
    await _interrupted(spool, key, data[:100], "op-1")
    assert spool.held(key, OTHER) == 0  # it cannot resume what it did not send
    with pytest.raises(UploadOffsetError) as refused:
        await spool.open(key, 100, "op-2", OTHER)
    assert refused.value.offset == 0 and "another key" in str(refused.value)
    assert spool.held(key, OWNER) == 100 and not spool.busy(key)
    assert list(spool.uploads_dir.iterdir()) == []


async def test_a_symlinked_app_folder_is_never_followed(tmp_path: Path) -> None:
    spool = _spool(tmp_path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (spool.resume_dir / APP).symlink_to(elsewhere)
    key = _key(1)
    assert await _interrupted(spool, key, b"x" * 10, "op") == 0
    assert list(elsewhere.iterdir()) == [] and spool.held(key, OWNER) == 0
    assert list(spool.uploads_dir.iterdir()) == []


async def test_a_fresh_spool_hashed_by_its_writer_is_checked_against_that_digest(
    tmp_path: Path,
) -> None:
    """``body_hashed`` (the daemon's uploads: the body's SHA-256 is computed once, for the
    Content-Digest): the file must still hash to the key, by the digest the writer passes."""
    spool = _spool(tmp_path)
    data = b"package bytes " * 20
    key = UploadKey(APP, "1.0.0", hashlib.sha256(data).hexdigest())
    f = await spool.open(key, 0, "op-1", OWNER, body_hashed=True)
    await f.write(b"not the package " * 20)
    with pytest.raises(DigestMismatchError) as bad:
        spool.check_complete(f, hashlib.sha256(b"not the package " * 20).digest())
    assert bad.value.code == "package_digest" and "nothing was kept" in str(bad.value)
    with pytest.raises(ValueError, match="body's SHA-256"):
        spool.check_complete(f)  # never taken as complete without the digest
    await spool.discard(f)
    assert list(spool.uploads_dir.iterdir()) == [] and not spool.busy(key)
    g = await spool.open(key, 0, "op-2", OWNER, body_hashed=True)
    await g.write(data)
    spool.check_complete(g, hashlib.sha256(data).digest())
    await spool.complete(g)
    assert g.path.read_bytes() == data and spool.held(key, OWNER) == 0


async def test_a_batch_of_chunks_is_appended_in_order_and_hashed_whole(tmp_path: Path) -> None:
    """The receive path hands the spool each batch's chunks as received (one writev, no joined
    copy): the file and its digest are the chunks' concatenation, across batches and a resume."""
    spool = _spool(tmp_path, max_bytes=1 << 30)
    chunks = [os.urandom(n) for n in (1, 0, 65536, 3, 300_000, 0, 17)]
    data = b"".join(chunks)
    key = UploadKey(APP, "1.0.0", hashlib.sha256(data + data).hexdigest())
    f = await spool.open(key, 0, "op-1", OWNER)
    await f.write(chunks)
    assert f.size == len(data) and f.path.read_bytes() == data
    assert await spool.keep(f) == len(data)
    g = await spool.open(key, len(data), "op-2", OWNER)  # a resume appends the same batch again
    await g.write(chunks[:3])
    await g.write(b"".join(chunks[3:]))
    assert g.path.read_bytes() == data + data and g.size == 2 * len(data)
    spool.check_complete(g)  # the whole file hashes to the key
    await spool.complete(g)
    assert g.path.read_bytes() == data + data


def _pipe_spool(tmp_path: Path) -> tuple[SpoolFile, int]:
    """A spool file whose descriptor is a pipe's write end (its read end returned): a write
    then blocks until the test reads, so "a write in flight" is a state, never a timing."""
    r, w = os.pipe()
    key = UploadKey(APP, "1.0.0", hashlib.sha256(b"").hexdigest())
    return SpoolFile(key, tmp_path / "op.cutover", 0, OWNER, os.fdopen(w, "wb"), None), r


def _drain(r: int) -> bytes:
    got = bytearray()
    while chunk := os.read(r, 1 << 16):
        got += chunk
    os.close(r)
    return bytes(got)


def test_closing_a_spool_waits_for_the_write_in_flight_and_no_write_follows_it(
    tmp_path: Path,
) -> None:
    """A receive cancelled mid-write (the agent stopping: RESUMABLE) leaves its append running
    in its thread while keep() closes the file. The close waits for that append, whose every
    writev goes to the spool: none to the descriptor number after the close, which the next
    open takes (another file would receive upload bytes). An append after the close fails."""
    f, r = _pipe_spool(tmp_path)
    chunks = [b"x" * 100] * 2000  # two writevs (IOV_MAX); the first fills the pipe and waits
    appending = threading.Thread(target=f._append, args=(chunks,))
    appending.start()
    capacity = fcntl.fcntl(r, fcntl.F_GETPIPE_SZ)
    queued = array.array("i", [0])
    for _ in range(1200):  # until the first writev waits on the full pipe (bounded)
        fcntl.ioctl(r, termios.FIONREAD, queued)
        if queued[0] >= capacity:
            break
        time.sleep(0.01)
    closing = threading.Thread(target=f.close)
    closing.start()
    closing.join(timeout=0.5)  # before the fix: closed at once, under the write in flight
    with open(tmp_path / "victim", "wb"):  # takes the lowest free descriptor number
        got = _drain(r)
        appending.join()
        closing.join()
    assert got == b"".join(chunks)  # every byte reached the spool, in order
    assert (tmp_path / "victim").read_bytes() == b""
    assert f.size == len(got)
    with pytest.raises(ValueError, match="closed"):
        f._append([b"late"])


@pytest.mark.parametrize(
    ("chunks", "cap"),
    [
        ([os.urandom(7) for _ in range(2500)], None),  # more buffers than one writev takes
        ([os.urandom(n) for n in (5000, 1, 70_000, 3)], 4096),  # each writev writes a prefix
        ([os.urandom(3) for _ in range(1500)], 1000),  # short, across the IOV_MAX cut
    ],
    ids=["over-iov-max", "short-writes", "short-over-iov-max"],
)
async def test_a_batch_written_in_several_writevs_lands_whole_and_in_order(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, chunks: list[bytes], cap: int | None
) -> None:
    """writev may take at most IOV_MAX buffers and may write less than it was given (a signal,
    a quota): the rest is written next, from where the kernel stopped. ``cap``: a real writev
    of at most that many bytes (the kernel's short write, made certain)."""
    calls: list[int] = []
    real = os.writev

    def writev(fd: int, buffers: list[bytes]) -> int:
        assert len(buffers) <= 1024
        if cap is not None:
            kept, room = [], cap
            for b in buffers:
                if room <= 0:
                    break
                kept.append(memoryview(b)[:room])
                room -= len(kept[-1])
            buffers = kept
        calls.append(real(fd, buffers))
        return calls[-1]

    monkeypatch.setattr(os, "writev", writev)
    spool = _spool(tmp_path, max_bytes=1 << 30)
    data = b"".join(chunks)
    f = await spool.open(UploadKey(APP, "1.0.0", hashlib.sha256(data).hexdigest()), 0, "op", OWNER)
    await f.write(chunks)
    assert len(calls) > 1 and sum(calls) == len(data)
    assert f.path.read_bytes() == data and f.size == len(data)
    spool.check_complete(f)
    await spool.complete(f)


async def test_a_writev_that_writes_nothing_fails_instead_of_looping(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(os, "writev", lambda fd, buffers: 0)
    spool = _spool(tmp_path, max_bytes=1 << 30)
    f = await spool.open(_key(1), 0, "op", OWNER)
    with pytest.raises(OSError, match="wrote nothing") as err:
        await f.write([b"abc", b"def"])
    assert err.value.errno == errno.EIO
    assert f.size == 0
    await spool.discard(f)
    assert list(spool.uploads_dir.iterdir()) == []
