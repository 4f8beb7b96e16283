"""What the engine does after a wave (pure): the decision table of docs/rollouts.md.

========================================  ==========================================
after a wave                              decision
========================================  ==========================================
a canary host failed                      revert every touched host (``--no-auto-revert``: halt)
more failures than the budget             the same
a freeze window refused (or will refuse)  pause: resume with ``cutover rollout --resume ID``
an inconclusive live health result        pause: an operator decides (promote or abort)
failures within the budget                isolate those hosts, go on
nothing failed                            go on
========================================  ==========================================

A host refused by a freeze window or whose live checks were *inconclusive* (they could not be
carried out: a dependency the host could not reach) is **not** a failure: it counts against no
budget and triggers no revert; the wave is retried when the rollout resumes.
"""

from __future__ import annotations

from enum import StrEnum

__all__ = ["Decision", "decide"]


class Decision(StrEnum):
    GO_ON = "go_on"  # next wave
    ISOLATE = "isolate"  # failures within the budget: revert those hosts, go on
    REVERT_ALL = "revert_all"  # canary failed or budget exceeded
    HALT = "halt"  # the same, with --no-auto-revert: stop and leave hosts as they are
    PAUSE = "pause"  # inconclusive health or a freeze window: an operator decides


def decide(
    *, wave: int, new_failures: int, total_failures: int, budget: int, auto_revert: bool,
    inconclusive: bool, frozen: bool = False,
) -> Decision:  # fmt: skip
    """What to do after a wave (pure; the module docstring has the table).

    A pause after failures within the budget isolates those hosts first (the engine does).
    """
    if new_failures and (wave == 0 or total_failures > budget):
        return Decision.REVERT_ALL if auto_revert else Decision.HALT
    if inconclusive or frozen:
        return Decision.PAUSE
    return Decision.ISOLATE if new_failures else Decision.GO_ON
