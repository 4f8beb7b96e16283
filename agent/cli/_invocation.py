"""One run of ``cutover-agent``: who ran it, its command line, and where its output goes.

Kept apart from agent/cli/_common.py (the manager, the config, the views) so the entry point
imports only this before it knows which command runs.
"""

from __future__ import annotations

import json
import os
import pwd
import sys
from collections.abc import Callable, Sequence
from typing import Any

_INVOKER: list[str] = []  # who ran the command, before any privilege drop
_ARGV: list[str] = []  # the command line, for the `sudo -u OWNER ...` a permission error suggests


def _actor() -> str:
    if not _INVOKER:
        try:
            _INVOKER.append(pwd.getpwuid(os.getuid()).pw_name)
        except KeyError:
            _INVOKER.append(str(os.getuid()))
    return f"cli:{os.environ.get('SUDO_USER', _INVOKER[0])}"


class _Out:
    def __init__(self, as_json: bool) -> None:
        self.json = as_json

    def result(self, data: dict[str, Any], human: Callable[[], None]) -> None:
        if self.json:
            print(json.dumps(data, indent=2, default=str))
        else:
            human()

    def recovered(self, actions: Sequence[str]) -> None:
        if actions and not self.json:
            for a in actions:
                print(f"recovered: {a}", file=sys.stderr)
