"""The activation state machine: its phases and the table of legal transitions.

An activation moves through these phases; the ones marked *saved* are written into the state
file's write-ahead ``pending`` intent before the step they announce, so recovery knows where a
killed activation stood (:mod:`agent.host.recovery`)::

    intent ──flip──▶ flipped ──checks pass──▶ committing ──state saved──▶ committed
      │                 │                         │
      └─────────────────┴────── failure ──────────┴──▶ reverting ──flip back──▶ reverted

    intent      saved   the intent is recorded; ``current`` is still the old release
    flipped     saved   ``current`` is the new release, which is being judged (post_activate
                        hooks, live checks, version probe): a failure here is the release's own
                        and marks it ``bad``
    committing  memory  the release passed; the commit is being written (a failure here, e.g. a
                        full disk, reverts without blaming the release)
    reverting   saved   flipping back to the old release (the ``bad`` mark is saved with it)
    committed / reverted: terminal; ``pending`` is cleared in the same state write
"""

from __future__ import annotations

from enum import StrEnum

from cutover.agent.errors import StateError

__all__ = ["TRANSITIONS", "ActivationPhase", "check_transition"]


class ActivationPhase(StrEnum):
    INTENT = "intent"
    FLIPPED = "flipped"
    COMMITTING = "committing"
    REVERTING = "reverting"
    COMMITTED = "committed"
    REVERTED = "reverted"


P = ActivationPhase

TRANSITIONS: dict[ActivationPhase, frozenset[ActivationPhase]] = {
    P.INTENT: frozenset({P.FLIPPED, P.REVERTING}),
    P.FLIPPED: frozenset({P.COMMITTING, P.REVERTING}),
    P.COMMITTING: frozenset({P.COMMITTED, P.REVERTING}),
    P.REVERTING: frozenset({P.REVERTED}),
    P.COMMITTED: frozenset(),
    P.REVERTED: frozenset(),
}


def check_transition(old: ActivationPhase, new: ActivationPhase) -> ActivationPhase:
    """Return ``new`` if the table allows ``old`` → ``new``.

    Raises:
        StateError: an illegal transition (a bug in the caller: nothing was changed).
    """
    if new not in TRANSITIONS[old]:
        raise StateError(
            f"internal error: an activation cannot go from phase {old.value} to {new.value}; "
            "nothing was changed by this step, please report it"
        )
    return new
