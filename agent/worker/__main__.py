"""``python -m cutover.agent.worker <daemon pid>``: a stage worker (agent/worker/child.py)."""

from __future__ import annotations

import sys

from cutover.agent.worker.child import main

if __name__ == "__main__":
    sys.exit(main(sys.argv))
