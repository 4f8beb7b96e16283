"""Base used by every layer: durable file writes, strict JSON, logging setup, test fault points."""

from __future__ import annotations

from cutover.agent._util.fsutil import (
    atomic_write,
    fsync_dir,
    random_suffix,
    start_writeback,
    syncfs,
)
from cutover.agent._util.strict_json import canonical_json, strict_json_loads

__all__ = [
    "atomic_write",
    "canonical_json",
    "fsync_dir",
    "random_suffix",
    "start_writeback",
    "strict_json_loads",
    "syncfs",
]
