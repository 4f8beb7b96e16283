"""cutover: the fleet side of Cutover (build, sign, push, rollout)."""

from __future__ import annotations

__all__: list[str] = []
