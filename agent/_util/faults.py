"""Test-only fault injection at named points (crash-safety tests). Not the database checkpoint.

``CUTOVER_TEST_CRASH_AT=<point>`` makes the process SIGKILL itself when it reaches ``point``;
``CUTOVER_TEST_PAUSE_AT=<point>`` makes it create ``$CUTOVER_TEST_PAUSE_FILE`` and sleep until
killed. Both are read at each call, do nothing when unset, and exist so tests can kill an
operation at every named point. Production never sets them.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

__all__ = ["fault_point"]


def fault_point(name: str) -> None:
    """Crash or pause here if a test asked for it (see the module docstring)."""
    if os.environ.get("CUTOVER_TEST_CRASH_AT") == name:
        os.kill(os.getpid(), signal.SIGKILL)
    if os.environ.get("CUTOVER_TEST_PAUSE_AT") == name:
        marker = os.environ.get("CUTOVER_TEST_PAUSE_FILE")
        if marker:
            Path(marker).write_text(name)
        while True:  # until the test kills us
            time.sleep(0.05)
