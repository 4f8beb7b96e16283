"""Base used by every layer: durable file writes, strict JSON, logging setup, test fault points."""

from __future__ import annotations

import typing

from cutover.agent._util.lazy import lazy_exports as _lazy_exports

if typing.TYPE_CHECKING:
    from cutover.agent._util.fsutil import (
        atomic_write,
        fsync_dir,
        random_suffix,
        start_writeback,
        syncfs,
    )
    from cutover.agent._util.privileges import Owner, acting_as, current_user, drop_to, owner_of
    from cutover.agent._util.strict_json import canonical_json, strict_json_loads

# Loaded on first use (agent/_util/lazy.py): importing one module of the package
# does not import its siblings.
_EXPORTS = {
    "cutover.agent._util.fsutil": (
        "atomic_write",
        "fsync_dir",
        "random_suffix",
        "start_writeback",
        "syncfs",
    ),
    "cutover.agent._util.privileges": (
        "Owner",
        "acting_as",
        "current_user",
        "drop_to",
        "owner_of",
    ),
    "cutover.agent._util.strict_json": (
        "canonical_json",
        "strict_json_loads",
    ),
}
__getattr__, __dir__ = _lazy_exports(__name__, _EXPORTS)

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
