"""Base used by every layer: durable file writes, strict JSON, logging setup, test fault points."""

from __future__ import annotations

from cutover.agent._util.fsutil import (
    atomic_write,
    fsync_dir,
    random_suffix,
    start_writeback,
    syncfs,
)
from cutover.agent._util.privileges import Owner, acting_as, current_user, drop_to, owner_of
from cutover.agent._util.strict_json import canonical_json, strict_json_loads

__all__ = [
    "Owner",
    "acting_as",
    "atomic_write",
    "canonical_json",
    "current_user",
    "drop_to",
    "fsync_dir",
    "owner_of",
    "random_suffix",
    "start_writeback",
    "strict_json_loads",
    "syncfs",
]
