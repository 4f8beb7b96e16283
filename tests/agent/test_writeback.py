"""Progressive writeback (agent/_util/fsutil.py ``start_writeback``) on real files."""

from __future__ import annotations

import os
from pathlib import Path

from cutover.agent._util.fsutil import start_writeback


def test_start_writeback_keeps_the_data_and_is_only_a_hint(tmp_path: Path) -> None:
    path = tmp_path / "f"
    data = os.urandom(3 * 1024 * 1024)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, data)
        start_writeback(fd)  # dirty pages handed to writeback; the fd stays usable
        os.write(fd, b"tail")
    finally:
        os.close(fd)
    assert path.read_bytes() == data + b"tail"
    start_writeback(fd)  # a closed fd: ignored (syncfs after extraction reports real errors)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f"]
