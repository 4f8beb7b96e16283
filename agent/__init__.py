"""cutover-agent: the host side of Cutover (package format, verification, release store, API)."""

from __future__ import annotations

__version__ = "0.1.0"
__all__ = ["__version__"]
