"""The persistent nonce store: single use across restarts, expiry, crash tolerance, compaction."""

from __future__ import annotations

import os
import stat
import threading
from pathlib import Path

import pytest

from cutover.agent.daemon.nonces import NonceStore
from cutover.agent.errors import AuthError, StorageError
from cutover.agent.trust.httpsig import MAX_SKEW_S

NOW = 1_760_000_000


def nonce(i: int) -> str:
    return f"nonce-{i:016d}-" + "x" * 20


def lines(path: Path) -> list[str]:
    return path.read_text("ascii").splitlines()


def refused(store: NonceStore, n: str, expires: int, now: float) -> str:
    with pytest.raises(AuthError) as info:
        store.use(n, expires, now)
    return info.value.code


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "nonces"


def test_replay_in_process_is_refused_and_writes_nothing(path: Path) -> None:
    with NonceStore(path, now=NOW) as store:
        store.use(nonce(1), NOW + 100, NOW)
        before = path.read_bytes()
        assert refused(store, nonce(1), NOW + 100, NOW + 1) == "replayed"
        assert path.read_bytes() == before
        assert lines(path) == [f"{NOW + 100} {nonce(1)}"]


def test_replay_after_reopen_is_refused(path: Path) -> None:
    """A used nonce is durable: a new store on the same file (a restarted agent) refuses it."""
    store = NonceStore(path, now=NOW)
    store.use(nonce(1), NOW + 100, NOW)
    store.close()
    with NonceStore(path, now=NOW + 5) as reopened:
        assert refused(reopened, nonce(1), NOW + 100, NOW + 5) == "replayed"
        reopened.use(nonce(2), NOW + 100, NOW + 5)
    assert len(lines(path)) == 2


def test_file_is_private(path: Path, tmp_path: Path) -> None:
    with NonceStore(path, now=NOW) as store:
        store.use(nonce(1), NOW + 100, NOW)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    path.chmod(0o644)
    with NonceStore(path, now=NOW):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["nonces"]  # no temp files left


def test_expired_entries_are_dropped_after_the_retention_margin(path: Path) -> None:
    """Entries live until expires + retain_after_expiry_s, then memory and file forget them."""
    with NonceStore(path, retain_after_expiry_s=60, now=NOW) as store:
        store.use(nonce(1), NOW + 10, NOW)
        store.use(nonce(2), NOW + 320, NOW + 30)
        assert len(store) == 2
        # expired, but a clock stepped back could make it look valid: still remembered
        assert refused(store, nonce(1), NOW + 10, NOW + 69) == "replayed"
        store.use(nonce(3), NOW + 200, NOW + 70)  # triggers pruning
        assert len(store) == 2
    with NonceStore(path, retain_after_expiry_s=60, now=NOW + 70) as reopened:
        assert len(reopened) == 2  # nonce 1 was not loaded back
        assert refused(reopened, nonce(2), NOW + 320, NOW + 71) == "replayed"


def test_expired_signature_is_refused_without_recording(path: Path) -> None:
    with NonceStore(path, now=NOW) as store:
        assert refused(store, nonce(1), NOW, NOW) == "expired"
        assert len(store) == 0
    assert path.read_bytes() == b""


def test_malformed_nonce_is_refused_before_touching_the_file(path: Path) -> None:
    with NonceStore(path, now=NOW) as store:
        for bad in ("short", nonce(1) + "\n1 x", nonce(1).replace("x", " ")):
            assert refused(store, bad, NOW + 10, NOW) == "bad_nonce"
        with pytest.raises(ValueError):
            store.use(nonce(1), NOW + 100_000, NOW)
        with pytest.raises(ValueError):
            store.use(nonce(1), NOW + 100, float("nan"))
    assert path.read_bytes() == b""


def test_torn_last_line_is_ignored_and_the_rest_kept(path: Path) -> None:
    """A crash mid-append leaves a fragment; it is dropped, earlier lines stay, appends are clean."""
    good = f"{NOW + 100} {nonce(1)}\n{NOW + 100} {nonce(2)}\n"
    path.write_text(good + f"{NOW + 100} {nonce(3)}"[:25], "ascii")
    with NonceStore(path, now=NOW) as store:
        assert len(store) == 2
        assert path.read_text("ascii") == good  # rewritten without the fragment
        assert refused(store, nonce(2), NOW + 100, NOW) == "replayed"
        store.use(nonce(3), NOW + 100, NOW)
    assert lines(path) == [*good.splitlines(), f"{NOW + 100} {nonce(3)}"]


def test_damaged_lines_are_skipped(path: Path) -> None:
    path.write_bytes(
        f"{NOW + 100} {nonce(1)}\n".encode()
        + b"\x00\x00\x00\x00\n"
        + b"123 short\n"
        + f"{NOW + 100} {nonce(2)}\n".encode()
    )
    with NonceStore(path, now=NOW) as store:
        assert len(store) == 2
    assert lines(path) == [f"{NOW + 100} {nonce(1)}", f"{NOW + 100} {nonce(2)}"]


def test_compaction_keeps_live_entries_only(path: Path) -> None:
    """When the file holds more than twice the live entries it is rewritten atomically."""
    with NonceStore(path, compact_min_lines=8, retain_after_expiry_s=0, now=NOW) as store:
        for i in range(6):
            store.use(nonce(i), NOW + 10, NOW)
        for i in range(6, 9):  # the first six have expired by now
            store.use(nonce(i), NOW + 300, NOW + 20)
        assert len(store) == 3
        assert sorted(lines(path)) == [f"{NOW + 300} {nonce(i)}" for i in range(6, 9)]
        assert refused(store, nonce(7), NOW + 300, NOW + 21) == "replayed"
        store.use(nonce(9), NOW + 300, NOW + 21)  # appends go to the new file
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    with NonceStore(path, now=NOW + 21) as reopened:
        assert len(reopened) == 4
        assert refused(reopened, nonce(9), NOW + 300, NOW + 22) == "replayed"


def test_store_full_refuses_until_entries_expire(path: Path) -> None:
    with NonceStore(path, max_entries=3, retain_after_expiry_s=0, now=NOW) as store:
        for i in range(3):
            store.use(nonce(i), NOW + 10, NOW)
        assert refused(store, nonce(3), NOW + 10, NOW) == "nonce_store_full"
        store.use(nonce(3), NOW + 100, NOW + 10)  # the three expired at NOW + 10
        assert len(store) == 1


def test_concurrent_use_of_one_nonce_succeeds_once(path: Path) -> None:
    results: list[str] = []
    barrier = threading.Barrier(8)

    def worker(store: NonceStore) -> None:
        barrier.wait()
        try:
            store.use(nonce(1), NOW + 100, NOW)
            results.append("ok")
        except AuthError as exc:
            results.append(exc.code)

    with NonceStore(path, now=NOW) as store:
        threads = [threading.Thread(target=worker, args=(store,)) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert sorted(results) == ["ok"] + ["replayed"] * 7
    assert len(lines(path)) == 1


def test_closed_store_refuses(path: Path) -> None:
    store = NonceStore(path, now=NOW)
    store.close()
    with pytest.raises(StorageError):
        store.use(nonce(1), NOW + 100, NOW)


def test_not_a_regular_file_is_refused(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(StorageError, match="regular file"):
        NonceStore(fifo, now=NOW)
    link = tmp_path / "link"
    link.symlink_to(tmp_path / "elsewhere")
    with pytest.raises(StorageError):
        NonceStore(link, now=NOW)
    assert not (tmp_path / "elsewhere").exists()


def test_failed_write_refuses_and_leaves_no_fragment(
    path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """If the nonce cannot be made durable the request is refused (fail closed), the partial line
    is cut off, and the nonce stays usable for a retry (no boot id: every append is fsynced)."""
    with NonceStore(path, now=NOW, boot_id=None) as store:
        store.use(nonce(1), NOW + 100, NOW)
        before = path.read_bytes()

        def no_space(fd: int) -> None:
            raise OSError(28, "No space left on device")

        monkeypatch.setattr(os, "fsync", no_space)
        with pytest.raises(StorageError, match="No space left"):
            store.use(nonce(2), NOW + 100, NOW)
        monkeypatch.undo()
        assert path.read_bytes() == before
        assert len(store) == 1
        store.use(nonce(2), NOW + 100, NOW)
    assert lines(path) == [f"{NOW + 100} {nonce(1)}", f"{NOW + 100} {nonce(2)}"]


def test_failed_append_under_the_boot_guard_refuses_and_leaves_no_fragment(
    path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With a boot id the append is not fsynced; a failed write still refuses (fail closed)."""
    with NonceStore(path, now=NOW, boot_id="boot-1") as store:
        store.use(nonce(1), NOW + 100, NOW, NOW)
        before = path.read_bytes()
        real_write = os.write

        def short_then_full(fd: int, data: bytes) -> int:
            real_write(fd, bytes(data[:5]))
            monkeypatch.setattr(os, "write", no_space)
            return 5

        def no_space(fd: int, data: bytes) -> int:
            raise OSError(28, "No space left on device")

        monkeypatch.setattr(os, "write", short_then_full)
        with pytest.raises(StorageError, match="No space left"):
            store.use(nonce(2), NOW + 100, NOW, NOW)
        monkeypatch.undo()
        assert path.read_bytes() == before
        store.use(nonce(2), NOW + 100, NOW, NOW)
    assert lines(path) == [f"{NOW + 100} {nonce(1)}", f"{NOW + 100} {nonce(2)}"]


def _crash(store: NonceStore) -> None:
    """The process dies: nothing is closed or synced (the fd is reclaimed by the kernel)."""
    os.close(store._fd)
    store._fd = -1


def test_agent_crash_on_the_same_boot_keeps_every_nonce(path: Path) -> None:
    store = NonceStore(path, now=NOW, boot_id="boot-1")
    store.use(nonce(1), NOW + 100, NOW, NOW)
    _crash(store)  # the unsynced append is in the page cache: the same kernel still has it
    with NonceStore(path, now=NOW + 1, boot_id="boot-1") as again:
        assert again.created_floor is None
        assert refused(again, nonce(1), NOW + 100, NOW + 1) == "replayed"


def test_kernel_crash_refuses_every_signature_made_before_the_restart(path: Path) -> None:
    """The unsynced append is lost with the kernel; the sidecar names the old boot, so every
    request created before open + MAX_SKEW_S is refused: the lost nonce cannot be replayed."""
    store = NonceStore(path, now=NOW, boot_id="boot-1")
    durable = path.read_bytes()
    store.use(nonce(1), NOW + 100, NOW + 1, NOW + 1)
    _crash(store)
    path.write_bytes(durable)  # what a power cut leaves: the append never reached the disk
    assert (path.parent / "nonces.boot").read_text() == "boot-1"

    with NonceStore(path, now=NOW + 5, boot_id="boot-2") as rebooted:
        assert rebooted.created_floor == NOW + 5 + MAX_SKEW_S
        assert len(rebooted) == 0  # the nonce is really gone from the file
        # the replay: its signature was created before the crash (even skewed ahead 30 s)
        for created in (NOW + 1, NOW + 1 + MAX_SKEW_S):
            assert refused_created(rebooted, nonce(1), NOW + 100, NOW + 6, created) == "expired"
        assert refused(rebooted, nonce(3), NOW + 100, NOW + 6) == "expired"  # created unknown
        assert path.read_bytes() == durable
        # a request signed after the restart is served
        fresh = NOW + 5 + MAX_SKEW_S
        rebooted.use(nonce(2), fresh + 100, fresh, fresh)
    assert (path.parent / "nonces.boot").exists() is False  # closed cleanly
    assert lines(path) == [f"{fresh + 100} {nonce(2)}"]


def test_clean_close_then_reboot_needs_no_guard(path: Path) -> None:
    with NonceStore(path, now=NOW, boot_id="boot-1") as store:
        store.use(nonce(1), NOW + 100, NOW, NOW)
        assert (path.parent / "nonces.boot").read_text() == "boot-1"
    assert not (path.parent / "nonces.boot").exists()
    with NonceStore(path, now=NOW + 5, boot_id="boot-2") as rebooted:
        assert rebooted.created_floor is None
        assert refused_created(rebooted, nonce(1), NOW + 100, NOW + 5, NOW) == "replayed"


def refused_created(store: NonceStore, n: str, expires: int, now: float, created: int) -> str:
    with pytest.raises(AuthError) as info:
        store.use(n, expires, now, created)
    return info.value.code
