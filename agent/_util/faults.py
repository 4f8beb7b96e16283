"""Test-only fault injection at named steps (crash-safety tests).

``CUTOVER_TEST_CRASH_AT=<step>`` makes the process SIGKILL itself when it reaches ``step``;
``CUTOVER_TEST_PAUSE_AT=<step>`` makes it create ``$CUTOVER_TEST_PAUSE_FILE`` and sleep until
killed. Both are read at each call, do nothing when unset, and exist so tests can kill an
operation at every named step. Production never sets them.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

__all__ = ["checkpoint"]


def checkpoint(step: str) -> None:
    if os.environ.get("CUTOVER_TEST_CRASH_AT") == step:
        os.kill(os.getpid(), signal.SIGKILL)
    if os.environ.get("CUTOVER_TEST_PAUSE_AT") == step:
        marker = os.environ.get("CUTOVER_TEST_PAUSE_FILE")
        if marker:
            Path(marker).write_text(step)
        while True:  # until the test kills us
            time.sleep(0.05)
