"""The books of one app: its state file and its journal, kept consistent with each other.

Every state write records the journal's head (seq and hash), so a journal cut or rewritten
outside Cutover is noticed by the next recovery; every write derives the release statuses from
``current``/``previous`` first (:func:`agent.host.state.normalise`).
"""

from __future__ import annotations

from typing import Any

from cutover.agent.host.journal import Journal, JournalHead
from cutover.agent.host.layout import Layout
from cutover.agent.host.state import AppState, StateFile, normalise

__all__ = ["Ledger"]


class Ledger:
    """State and journal of one app. Synchronous: async callers use threads."""

    def __init__(self, app: str, layout: Layout) -> None:
        self.app = app
        self.state_file = StateFile(layout.state_file, app)
        self.journal = Journal(layout.journal_file)

    def load(self) -> AppState:
        return self.state_file.load()

    def save(self, state: AppState) -> None:
        """Normalise and write the state, recording the journal head it follows."""
        head = self.journal.head
        state.journal_seq, state.journal_hash = head.seq, head.hash
        normalise(state)
        self.state_file.save(state)

    def log(self, event: str, **fields: Any) -> dict[str, Any]:
        """Append one journal entry (fsynced)."""
        return self.journal.append(event, app=self.app, **fields)

    def forget_head(self) -> None:
        """Re-read the journal's head at the next append (call once the app lock is held)."""
        self.journal.invalidate()

    @staticmethod
    def recorded_head(state: AppState) -> JournalHead:
        """The journal head the state file recorded at its last write."""
        return JournalHead(state.journal_seq, state.journal_hash)
