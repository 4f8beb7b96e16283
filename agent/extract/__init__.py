"""The safe streaming extractor: a verified payload becomes a release tree."""

from __future__ import annotations

from cutover.agent.extract.extractor import (
    ExtractLimits,
    ExtractStats,
    extract_payload,
    verify_payload_digest,
)

__all__ = [
    "ExtractLimits",
    "ExtractStats",
    "extract_payload",
    "verify_payload_digest",
]
