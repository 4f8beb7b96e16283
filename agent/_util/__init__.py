"""Base used by every layer: durable file writes, strict JSON, logging setup, test fault points."""

from __future__ import annotations

import typing

from cutover.agent._util.lazy import lazy_exports as _lazy_exports

if typing.TYPE_CHECKING:
    from cutover.agent._util.fsutil import atomic_write as atomic_write
    from cutover.agent._util.fsutil import fsync_dir as fsync_dir
    from cutover.agent._util.fsutil import random_suffix as random_suffix
    from cutover.agent._util.fsutil import start_writeback as start_writeback
    from cutover.agent._util.fsutil import syncfs as syncfs
    from cutover.agent._util.privileges import Owner as Owner
    from cutover.agent._util.privileges import acting_as as acting_as
    from cutover.agent._util.privileges import current_user as current_user
    from cutover.agent._util.privileges import drop_to as drop_to
    from cutover.agent._util.privileges import owner_of as owner_of
    from cutover.agent._util.strict_json import canonical_json as canonical_json
    from cutover.agent._util.strict_json import strict_json_loads as strict_json_loads

# Loaded on first use from the block above (agent/_util/lazy.py): importing one module
# of the package does not import its siblings.
__getattr__, __dir__ = _lazy_exports(__name__)
