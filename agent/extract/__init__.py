"""The safe streaming extractor: a verified payload becomes a release tree."""

from __future__ import annotations

import typing

from cutover.agent._util.lazy import lazy_exports as _lazy_exports

if typing.TYPE_CHECKING:
    from cutover.agent.extract.extractor import (
        ExtractLimits,
        ExtractStats,
        extract_payload,
        verify_payload_digest,
    )

# Loaded on first use (agent/_util/lazy.py): importing one module of the package
# does not import its siblings.
_EXPORTS = {
    "cutover.agent.extract.extractor": (
        "ExtractLimits",
        "ExtractStats",
        "extract_payload",
        "verify_payload_digest",
    ),
}
__getattr__, __dir__ = _lazy_exports(__name__, _EXPORTS)

__all__ = [
    "ExtractLimits",
    "ExtractStats",
    "extract_payload",
    "verify_payload_digest",
]
