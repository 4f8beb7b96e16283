"""The persistent single-use nonce store behind request signatures (agent.httpsig).

Rules:

1. **Once.** A nonce is accepted once; a second :meth:`NonceStore.use` raises
   :class:`~agent.errors.AuthError` ``replayed``, in this process or after a restart.
2. **Never accepted twice, even after a crash.** A nonce is appended to the file before ``use``
   returns; a failed write refuses the request (:class:`~agent.errors.StorageError`): fail closed.
   The append is *not* fsynced when the kernel's boot id is known ("boot guard", group-commit's
   cheaper cousin; an fsync per request queued behind a stage's writeback cost ~100 ms of API
   latency, issue 14 item 8): an append survives any crash of the agent process (it is in the
   page cache), and only a crash of the kernel itself can lose it. That case is detected at open:
   the sidecar ``<file>.boot`` names the boot whose appends were not synced; if it names another
   boot, every signature ``created`` before ``open time + MAX_SKEW_S`` is refused (``expired``),
   which covers every nonce that could have been lost (each was accepted before the crash, with
   ``created`` at most ``MAX_SKEW_S`` ahead of the agent's clock then). The sidecar is written
   (durably) only after the file read at open is fsynced, and removed by a clean :meth:`close`
   after a final fsync, so a clean reboot costs nothing. Without a boot id (not Linux, or
   ``boot_id=None``) every append is fsynced before ``use`` returns. docs/security-model.md §3.
3. **Bounded.** An entry lives until its signature's ``expires`` plus ``retain_after_expiry_s``
   (60 s by default: a clock stepped back by NTP must not revive a used nonce), after which
   httpsig refuses the request as expired anyway. Past ``max_entries`` live entries
   (1,000,000 by default) new nonces are refused with ``nonce_store_full`` until entries expire.
4. **File.** ``<expires> <nonce>\\n`` lines, ASCII, mode 0600. On open, a torn final line (a crash
   during an append) is ignored, as is any other unreadable line; the file is then rewritten
   atomically (agent.fsutil.atomic_write) from the entries kept, so new appends never join a
   fragment. The file is also rewritten ("compacted") when it holds more than twice as many lines
   as live entries (and at least ``compact_min_lines``).
5. **Thread-safe.** One lock serialises ``use``; the server may call it from a worker thread.

Call :meth:`NonceStore.use` only after :func:`agent.httpsig.verify_request` succeeded, with the
verified ``nonce`` and ``expires``: unauthenticated callers must not be able to fill the store.
"""

from __future__ import annotations

import heapq
import math
import os
import re
import stat
import threading
import time
from pathlib import Path
from types import TracebackType

from cutover.agent._util.fsutil import atomic_write, fsync_dir
from cutover.agent.errors import AuthError, StorageError
from cutover.agent.trust.httpsig import MAX_LIFETIME_S, MAX_SKEW_S, is_valid_nonce

__all__ = ["NonceStore", "current_boot_id"]

_BOOT_ID = Path("/proc/sys/kernel/random/boot_id")


def current_boot_id() -> str | None:
    """This kernel boot's id (changes at every boot), or None where there is none."""
    try:
        return _BOOT_ID.read_text("ascii").strip() or None
    except (OSError, UnicodeDecodeError):
        return None


class _Auto:
    pass


_AUTO = _Auto()

_LINE_RE = re.compile(rb"(0|[1-9][0-9]{0,14}) ([\x21-\x7e]+)")
_FILE_MODE = 0o600


class NonceStore:
    """Remembers used request nonces in ``path`` until they expire.

    Args:
        path: the store file (created with mode 0600 if absent; its directory must exist).
        max_entries: live entries beyond which new nonces are refused.
        retain_after_expiry_s: how long past ``expires`` an entry is kept.
        compact_min_lines: never compact a file shorter than this.
        now: the clock used to drop expired entries on open (default: ``time.time()``).
        boot_id: this boot's id (default: :func:`current_boot_id`); ``None`` fsyncs every append.

    Raises:
        StorageError: the file cannot be read, created or rewritten.
    """

    def __init__(
        self,
        path: Path,
        *,
        max_entries: int = 1_000_000,
        retain_after_expiry_s: int = 60,
        compact_min_lines: int = 4096,
        now: float | None = None,
        boot_id: str | _Auto | None = _AUTO,
    ) -> None:
        if max_entries < 1 or retain_after_expiry_s < 0 or compact_min_lines < 1:
            raise ValueError("max_entries and compact_min_lines must be >= 1, retention >= 0")
        self._path = path
        self._max_entries = max_entries
        self._retain_s = retain_after_expiry_s
        self._compact_min = compact_min_lines
        self._lock = threading.Lock()
        self._live: dict[str, int] = {}
        self._heap: list[tuple[int, str]] = []  # (expires, nonce), for pruning in order
        self._lines = 0  # complete lines in the file
        self._size = 0  # bytes in the file, to cut off a failed append
        self._fd = -1
        self._closed = False
        self._needs_rewrite = False
        self._boot_id = current_boot_id() if isinstance(boot_id, _Auto) else boot_id
        self._boot_file = path.with_name(path.name + ".boot")
        self._created_floor: int | None = None
        opened_at = time.time() if now is None else now
        clean = self._load(opened_at)
        try:
            unsynced_boot = self._read_boot_file()
            if unsynced_boot is not None and unsynced_boot != self._boot_id:
                # the kernel crashed since unsynced appends were made: some may be lost
                self._created_floor = math.ceil(opened_at) + MAX_SKEW_S
            if not clean or self._too_long():
                self._rewrite()
            else:
                self._open_append()
                os.fsync(self._fd)  # what we read is durable before appends go unsynced
            if self._boot_id is not None:
                atomic_write(self._boot_file, self._boot_id.encode("ascii"), mode=_FILE_MODE)
            elif unsynced_boot is not None:
                self._boot_file.unlink()
                fsync_dir(path.parent)
        except OSError as exc:
            raise self._storage_error("open", exc) from exc

    def __enter__(self) -> NonceStore:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __len__(self) -> int:
        """Entries currently remembered (live or within the retention margin)."""
        with self._lock:
            return len(self._live)

    @property
    def created_floor(self) -> int | None:
        """Signatures ``created`` before this are refused (after a kernel crash), else None."""
        return self._created_floor

    def close(self) -> None:
        """Make the file durable and close it. Further ``use`` calls raise StorageError.

        A clean close removes the boot sidecar: nothing unsynced remains, so the next boot needs
        no guard. If the final fsync fails the sidecar stays (the guard applies after a reboot).
        """
        with self._lock:
            self._closed = True
            if self._fd >= 0:
                try:
                    os.fsync(self._fd)
                    self._boot_file.unlink(missing_ok=True)
                    fsync_dir(self._path.parent)
                except OSError:
                    pass  # the sidecar (if any) keeps the guard for the next boot
                finally:
                    os.close(self._fd)
                    self._fd = -1

    def use(self, nonce: str, expires: int, now: float, created: int | None = None) -> None:
        """Accept ``nonce`` once: record it (rule 2), or refuse it.

        Args:
            nonce: the verified nonce (agent.httpsig.Verified.nonce).
            expires: the verified ``expires`` (Unix seconds).
            now: the same clock reading used to verify the request.
            created: the verified ``created``; needed after a kernel crash (``created_floor``),
                where a request without it is refused.

        Raises:
            AuthError: ``replayed`` (seen before), ``nonce_store_full``, ``bad_nonce`` (malformed),
                ``expired`` (``expires <= now``). Nothing is written.
            StorageError: the nonce could not be made durable; the request must be refused.
            ValueError: ``now`` is not finite, or ``expires`` lies further ahead than any valid
                signature allows.
        """
        if not is_valid_nonce(nonce):
            raise AuthError("nonce must be 22-64 base64url characters", code="bad_nonce")
        if not math.isfinite(now):  # NaN would never prune and never expire
            raise ValueError("now must be a finite Unix time")
        if expires > now + MAX_LIFETIME_S + MAX_SKEW_S:
            raise ValueError("expires is beyond any valid signature; pass Verified.expires")
        with self._lock:
            if self._closed:
                raise StorageError(f"nonce store {self._path} is closed")
            self._prune(now)
            if nonce in self._live:
                raise AuthError(
                    "request nonce was used before (replayed request); sign a new request",
                    code="replayed",
                )
            if expires <= now:
                raise AuthError("signature has expired; sign a fresh request", code="expired")
            floor = self._created_floor
            if floor is not None and (created is None or created < floor):
                raise AuthError(
                    "signature was created before the agent restarted after a system crash "
                    f"(nonces used before it may be lost; created must be >= {floor}); sign a "
                    "fresh request",
                    code="expired",
                )
            if len(self._live) >= self._max_entries:
                raise AuthError(
                    f"more than {self._max_entries} requests in flight; retry later",
                    code="nonce_store_full",
                )
            try:
                if self._fd < 0 or self._needs_rewrite:  # repair after an earlier failure
                    self._rewrite()
                self._append(f"{expires} {nonce}\n".encode("ascii"))
            except OSError as exc:
                raise self._storage_error("record a nonce in", exc) from exc
            self._live[nonce] = expires
            heapq.heappush(self._heap, (expires, nonce))
            self._lines += 1
            if self._too_long():
                try:
                    self._rewrite()
                except OSError as exc:  # the nonce is durable; the next use retries
                    raise self._storage_error("compact", exc) from exc

    # -- internals (called with the lock held, or from __init__) ---------------------------------

    def _storage_error(self, what: str, exc: OSError) -> StorageError:
        return StorageError(
            f"cannot {what} nonce store {self._path}: {exc.strerror or exc}; "
            "check the disk and the permissions of the agent state directory"
        )

    def _load(self, now: float) -> bool:
        """Read the file into memory. Returns False if a line was torn or unreadable."""
        try:
            fd = os.open(self._path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
        except FileNotFoundError:
            return True
        except OSError as exc:
            raise self._storage_error("open", exc) from exc
        clean = True
        try:
            with os.fdopen(fd, "rb") as fh:
                if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):
                    raise StorageError(f"nonce store {self._path} is not a regular file")
                for line in fh:
                    m = _LINE_RE.fullmatch(line[:-1]) if line.endswith(b"\n") else None
                    nonce = m[2].decode("ascii") if m else ""
                    if m is None or not is_valid_nonce(nonce):
                        clean = False  # a torn tail, or damage: drop it and rewrite the file
                        continue
                    self._lines += 1
                    expires = int(m[1])
                    if expires + self._retain_s > now and expires > self._live.get(nonce, -1):
                        self._live[nonce] = expires
        except OSError as exc:
            raise self._storage_error("read", exc) from exc
        self._heap = [(expires, nonce) for nonce, expires in self._live.items()]
        heapq.heapify(self._heap)
        return clean

    def _prune(self, now: float) -> None:
        while self._heap and self._heap[0][0] + self._retain_s <= now:
            expires, nonce = heapq.heappop(self._heap)
            if self._live.get(nonce) == expires:
                del self._live[nonce]

    def _too_long(self) -> bool:
        return self._lines >= self._compact_min and self._lines > 2 * len(self._live)

    def _rewrite(self) -> None:
        data = "".join(f"{e} {n}\n" for n, e in self._live.items()).encode("ascii")
        atomic_write(self._path, data, mode=_FILE_MODE)
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        self._lines = len(self._live)
        self._needs_rewrite = False
        self._open_append()

    def _read_boot_file(self) -> str | None:
        try:
            return self._boot_file.read_text("ascii").strip()
        except FileNotFoundError:
            return None
        except UnicodeDecodeError:
            return ""  # damaged: treat as another boot (the guard applies)

    def _open_append(self) -> None:
        existed = os.path.lexists(self._path)
        flags = (
            os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
        )
        fd = os.open(self._path, flags, _FILE_MODE)
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise StorageError(f"nonce store {self._path} is not a regular file")
            if stat.S_IMODE(st.st_mode) != _FILE_MODE:
                os.fchmod(fd, _FILE_MODE)
            if not existed:
                fsync_dir(self._path.parent)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        self._size = st.st_size

    def _append(self, line: bytes) -> None:
        try:
            view = memoryview(line)
            while view:
                view = view[os.write(self._fd, view) :]
            if self._boot_id is None:  # no boot guard: durable before accepted
                os.fsync(self._fd)
        except OSError:
            try:  # cut a partial line off, so the next append does not join it
                os.ftruncate(self._fd, self._size)
            except OSError:
                self._needs_rewrite = True
            raise
        self._size += len(line)
