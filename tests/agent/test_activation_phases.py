"""The activation state machine's table: every legal transition allowed, every other refused."""

from __future__ import annotations

import itertools

import pytest

from cutover.agent.errors import StateError
from cutover.agent.host.phases import TRANSITIONS, ActivationPhase, check_transition

P = ActivationPhase
LEGAL = {
    (P.INTENT, P.FLIPPED),
    (P.INTENT, P.REVERTING),
    (P.FLIPPED, P.COMMITTING),
    (P.FLIPPED, P.REVERTING),
    (P.COMMITTING, P.COMMITTED),
    (P.COMMITTING, P.REVERTING),
    (P.REVERTING, P.REVERTED),
}
ALL = list(itertools.product(P, P))


@pytest.mark.parametrize(("old", "new"), ALL, ids=[f"{a.value}->{b.value}" for a, b in ALL])
def test_transition_table(old: ActivationPhase, new: ActivationPhase) -> None:
    if (old, new) in LEGAL:
        assert check_transition(old, new) is new
    else:
        with pytest.raises(StateError, match=f"from phase {old.value} to {new.value}"):
            check_transition(old, new)


def test_terminal_phases_lead_nowhere_and_every_phase_is_in_the_table() -> None:
    assert set(TRANSITIONS) == set(P)
    assert TRANSITIONS[P.COMMITTED] == TRANSITIONS[P.REVERTED] == frozenset()
