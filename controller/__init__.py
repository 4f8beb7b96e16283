"""cutover: the fleet side of Cutover (build, sign, and the signing agent client)."""

from __future__ import annotations

from controller.build import AppConfig, BuildResult, build_package, load_app_config, sign_package

__all__ = ["AppConfig", "BuildResult", "build_package", "load_app_config", "sign_package"]
