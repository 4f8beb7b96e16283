"""The safe streaming extractor: a verified payload becomes a release tree."""

from __future__ import annotations

import typing

from cutover.agent._util.lazy import lazy_exports as _lazy_exports

if typing.TYPE_CHECKING:
    from cutover.agent.extract.extractor import ExtractLimits as ExtractLimits
    from cutover.agent.extract.extractor import ExtractStats as ExtractStats
    from cutover.agent.extract.extractor import extract_payload as extract_payload
    from cutover.agent.extract.extractor import verify_payload_digest as verify_payload_digest

# Loaded on first use from the block above (agent/_util/lazy.py): importing one module
# of the package does not import its siblings.
__getattr__, __dir__ = _lazy_exports(__name__)
