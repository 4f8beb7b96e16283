"""cutover: the fleet side of Cutover (build, sign, and the signing agent client)."""

from __future__ import annotations

from cutover.controller.build import (
    AppConfig,
    BuildResult,
    build_package,
    load_app_config,
    sign_package,
)
from cutover.controller.client import AgentClient

__all__ = [
    "AgentClient",
    "AppConfig",
    "BuildResult",
    "build_package",
    "load_app_config",
    "sign_package",
]
