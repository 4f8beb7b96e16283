"""What an extraction wrote (:func:`agent.extract.extractor.extract_payload`'s result), for
the stage record and result."""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["ExtractStats"]


@dataclass(frozen=True)
class ExtractStats:
    """What an extraction wrote: counts, file bytes, and wall time in seconds.

    ``files``/``bytes`` count every regular file; ``reused`` maps a method (``reflink``,
    ``hardlink``, ``copy``) to the files and bytes taken from releases already on the host; the
    rest came from the payload. ``checks``: how those sources were proven (Reuser.report)."""

    files: int
    dirs: int
    symlinks: int
    bytes: int
    seconds: float
    reused: dict[str, tuple[int, int]] = field(default_factory=dict)
    checks: dict[str, int] = field(default_factory=dict)

    def content(self) -> dict[str, int]:
        """Where the files came from, flat (for the stage record and result)."""
        out = {"payload_files": self.files, "payload_bytes": self.bytes}
        for method, (files, size) in self.reused.items():
            out[f"{method}_files"], out[f"{method}_bytes"] = files, size
            out["payload_files"] -= files
            out["payload_bytes"] -= size
        return {**out, **self.checks}
