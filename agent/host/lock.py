"""One operation per app at a time: ``flock(2)`` on ``<root>/.cutover/lock``.

The kernel drops the lock when its holder dies, so it can never go stale. The holder writes who it
is (pid, operation, since) into the lock file after acquiring it, so a refused operation can name
the holder. flock locks belong to an open file description, so two operations inside one daemon
process exclude each other exactly like two processes do.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from pathlib import Path
from types import TracebackType

from cutover.agent.errors import LockedError, StorageError

__all__ = ["AppLock"]


class AppLock:
    """Non-blocking exclusive lock for one app root; use as a context manager."""

    def __init__(self, path: Path, app: str, operation: str) -> None:
        self.path = path
        self.app = app
        self.operation = operation
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock or raise :class:`LockedError` naming the holder.

        Raises:
            LockedError: another operation holds the lock.
            StorageError: the lock file cannot be opened.
        """
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
        except OSError as exc:
            raise StorageError(f"cannot open lock file {self.path}: {exc.strerror}") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = self._read_holder(fd)
            os.close(fd)
            since = holder.get("since")
            since_txt = (
                time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(float(since)))
                if isinstance(since, int | float)
                else "?"
            )
            raise LockedError(
                f"app {self.app!r} is busy: {holder.get('operation', '?')} by pid "
                f"{holder.get('pid', '?')} on {holder.get('host', '?')} since {since_txt}; "
                "wait for it to finish, then retry",
                holder=holder,
            ) from None
        holder_info = {
            "pid": os.getpid(),
            "operation": self.operation,
            "since": time.time(),
            "host": socket.gethostname(),
        }
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(holder_info).encode(), 0)
        except OSError:
            pass  # disk full: the lock itself holds; only the holder's name is missing
        self._fd = fd

    @staticmethod
    def _read_holder(fd: int) -> dict[str, object]:
        try:
            data = os.pread(fd, 4096, 0)
            obj = json.loads(data) if data else {}
        except (OSError, ValueError):
            return {}
        return obj if isinstance(obj, dict) else {}

    def release(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            try:
                os.ftruncate(fd, 0)
            except OSError:
                pass
            finally:
                os.close(fd)  # closing the last fd of the description drops the flock

    @property
    def held(self) -> bool:
        return self._fd is not None

    def __enter__(self) -> AppLock:
        self.acquire()
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()
