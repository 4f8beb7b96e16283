"""The fleet commands of ``cutover``, one module each: push, activate, rollback, status, log,
deploy. :func:`register` adds them to the CLI's parser; controller/cli.py only calls it."""

from __future__ import annotations

import argparse

from cutover.controller.commands import activate, deploy, log, push, rollback, rollout, status

__all__ = ["FLEET_COMMANDS", "register"]

FLEET_COMMANDS = (
    "push", "activate", "rollback", "status", "log", "deploy", "rollout", "rollouts", "promote",
    "abort",
)  # fmt: skip


def register(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser
) -> None:
    """Add every fleet command to ``sub`` (``common`` carries ``--json``)."""
    for module in (push, activate, rollback, status, log, deploy, rollout):
        module.register(sub, common)
