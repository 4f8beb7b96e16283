"""The journal's head survives lines of any length, and a torn tail of any length is cut exactly."""

from __future__ import annotations

from pathlib import Path

import pytest

from cutover.agent.errors import DriftError
from cutover.agent.host.journal import Journal


def test_head_after_a_line_longer_than_any_read_window(tmp_path: Path) -> None:
    path = tmp_path / "journal.jsonl"
    j = Journal(path)
    for i in range(20):
        j.append("e", i=i)
    j.append("hooks.done", output="\u0000" * 400_000)  # ~2.4 MB escaped
    fresh = Journal(path)
    assert fresh.head.seq == 21
    fresh.append("next")
    assert Journal(path).check_chain() == 22


def test_a_long_torn_tail_is_dropped_and_nothing_else(tmp_path: Path) -> None:
    path = tmp_path / "journal.jsonl"
    j = Journal(path)
    for i in range(50):
        j.append("e", i=i)
    intact = path.read_bytes()
    with path.open("ab") as fh:
        fh.write(b'{"seq": 51, "event": "' + b"y" * 1_500_000)
    fresh = Journal(path)
    assert fresh.head.seq == 50 and fresh.dropped_torn_line
    assert path.read_bytes() == intact
    assert fresh.check_chain() == 50


def test_a_lone_torn_line_empties_the_journal(tmp_path: Path) -> None:
    path = tmp_path / "journal.jsonl"
    path.write_bytes(b'{"seq": 1, "half')
    j = Journal(path)
    assert j.head.seq == 0 and j.dropped_torn_line and path.read_bytes() == b""


def test_editing_a_line_breaks_the_chain(tmp_path: Path) -> None:
    path = tmp_path / "journal.jsonl"
    j = Journal(path)
    for i in range(3):
        j.append("e", i=i)
    path.write_text(path.read_text().replace('"i":0', '"i":7'))
    with pytest.raises(DriftError, match="does not chain"):
        Journal(path).check_chain()
