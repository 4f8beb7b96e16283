"""The append-only, hash-chained audit journal of one app (``.cutover/journal.jsonl``).

Each line is one JSON object. ``seq`` counts from 1; ``prev`` is the SHA-256 (hex) of the previous
line's exact bytes (without its newline), ``0``*64 for the first. Editing, removing or reordering
any line breaks the chain at the next line. Truncating the tail is caught by comparing against the
head (seq and hash) that every state-file write records. Each append is fsynced.

A crash in the middle of an append can leave a torn last line (no trailing newline); the next
open drops it and the caller records that in the journal.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO

from cutover.agent.errors import DriftError, StorageError

__all__ = ["GENESIS", "Journal", "JournalHead", "line_hash"]

GENESIS = "0" * 64


def line_hash(line: bytes) -> str:
    return hashlib.sha256(line).hexdigest()


@dataclass(frozen=True)
class JournalHead:
    seq: int
    hash: str


class Journal:
    """Append-only hash-chained JSON-lines log."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._head: JournalHead | None = None
        self.dropped_torn_line = False

    @staticmethod
    def _rfind_newline(fh: BinaryIO, end: int) -> int:
        """Offset of the last ``\n`` before ``end``, or -1; scans backwards in chunks, so a line
        of any length is found whole."""
        chunk = 1 << 16
        pos = end
        while pos > 0:
            start = max(0, pos - chunk)
            fh.seek(start)
            idx = fh.read(pos - start).rfind(b"\n")
            if idx >= 0:
                return start + idx
            pos = start
        return -1

    def _load_head(self) -> JournalHead:
        if self._head is not None:
            return self._head
        head = JournalHead(0, GENESIS)
        try:
            with self.path.open("r+b") as fh:
                size = fh.seek(0, os.SEEK_END)
                last_nl = self._rfind_newline(fh, size) if size else -1
                if size and last_nl != size - 1:
                    # A crash mid-append left a torn final line: drop exactly that fragment.
                    fh.truncate(last_nl + 1)
                    os.fsync(fh.fileno())
                    self.dropped_torn_line = True
                    size = last_nl + 1
                if size:
                    prev_nl = self._rfind_newline(fh, size - 1)
                    fh.seek(prev_nl + 1)
                    last = fh.read(size - 1 - (prev_nl + 1))
                    head = JournalHead(int(json.loads(last)["seq"]), line_hash(last))
        except FileNotFoundError:
            pass
        except (OSError, ValueError, KeyError) as exc:
            raise StorageError(f"cannot read journal {self.path}: {exc}") from exc
        self._head = head
        return head

    def invalidate(self) -> None:
        """Forget the cached head: another process may have appended since (call under the
        app lock, before appending)."""
        with self._lock:
            self._head = None

    @property
    def head(self) -> JournalHead:
        with self._lock:
            return self._load_head()

    def append(self, event: str, **fields: Any) -> dict[str, Any]:
        """Append one entry (fsynced) and return it.

        Raises:
            StorageError: the journal cannot be written (disk full, permissions).
        """
        with self._lock:
            head = self._load_head()
            entry: dict[str, Any] = {
                "seq": head.seq + 1,
                "ts": datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
                "event": event,
                **fields,
                "prev": head.hash,
            }
            line = json.dumps(entry, sort_keys=True, separators=(",", ":"), default=str).encode()
            try:
                fd = os.open(
                    self.path,
                    os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW,
                    0o640,
                )
                try:
                    os.write(fd, line + b"\n")
                    os.fsync(fd)
                finally:
                    os.close(fd)
            except OSError as exc:
                raise StorageError(
                    f"cannot append to journal {self.path}: {exc.strerror}; free disk space"
                ) from exc
            self._head = JournalHead(head.seq + 1, line_hash(line))
            return entry

    def entries(self) -> Iterator[dict[str, Any]]:
        try:
            with self.path.open("rb") as fh:
                for raw in fh:
                    if raw.endswith(b"\n"):
                        yield json.loads(raw)
        except FileNotFoundError:
            return

    def tail(self, limit: int) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for e in self.entries():
            out.append(e)
            if len(out) > limit:
                out.pop(0)
        return out

    def check_chain(self, expected_head: JournalHead | None = None) -> int:
        """Check the whole chain; return the number of entries.

        Raises:
            DriftError: a line was altered, removed, reordered, or the tail was cut.
        """
        prev, seq = GENESIS, 0
        try:
            with self.path.open("rb") as fh:
                for lineno, raw in enumerate(fh, 1):
                    line = raw.rstrip(b"\n")
                    try:
                        entry = json.loads(line)
                    except ValueError as exc:
                        raise DriftError(
                            f"journal {self.path} line {lineno} is not JSON: tampered or corrupt"
                        ) from exc
                    if entry.get("prev") != prev or entry.get("seq") != seq + 1:
                        raise DriftError(
                            f"journal {self.path} line {lineno} (seq {entry.get('seq')}) does not "
                            "chain to the line before it: the journal was edited, reordered or "
                            "had lines removed"
                        )
                    prev, seq = line_hash(line), seq + 1
                    if (
                        expected_head is not None
                        and seq == expected_head.seq
                        and prev != expected_head.hash
                    ):
                        raise DriftError(
                            f"journal {self.path} line {lineno} differs from the entry the "
                            "state file recorded: the journal was rewritten"
                        )
        except FileNotFoundError:
            pass
        if expected_head is not None and seq < expected_head.seq:
            raise DriftError(
                f"journal {self.path} ends at seq {seq}, but the state file recorded seq "
                f"{expected_head.seq}: entries were cut from its end"
            )
        return seq
