"""Pause the cyclic garbage collector while a large, acyclic structure is built.

Parsing a 20,000-entry manifest or a seal allocates ~60,000 long-lived objects (dicts, models,
tuples); each 700 allocations the collector scans the young ones, and every tenth of those scans
the older generations too, the whole heap of a freshly imported process: ~30 % of the parse
(``bench/delta_phases.py``). These structures hold no reference cycles, so nothing is left for the
collector to find: it runs again, as usual, once the block ends.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["gc_paused"]


@contextmanager
def gc_paused() -> Iterator[None]:
    """No automatic collection inside the block (nested and concurrent use are safe: only the
    outermost block that disabled the collector enables it again)."""
    if not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()
