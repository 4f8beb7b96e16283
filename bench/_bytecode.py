"""Benchmarks time our processes with their modules byte-compiled, as an installed wheel has them.

``pip install`` of the wheel writes a ``.pyc`` for every module, and so does the interpreter at the
first run of an editable install, unless ``PYTHONDONTWRITEBYTECODE`` is set, as it is on the
project's build machine. There, every ``cutover-agent`` process (and every stage worker) compiled
our ~150 modules from source at start: 0.06-0.08 s of CPU that no installed host pays
(``bench/startup.py`` measures both). So the whole-process benchmarks byte-compile the project's
own packages once, before they time anything (into their ``__pycache__/``, git-ignored), and say
so; ``--from-source`` measures the uncompiled case instead.
"""

from __future__ import annotations

import argparse
import compileall
import sys
from pathlib import Path

__all__ = ["add_bytecode_flag", "prepare_bytecode"]

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("agent", "controller")


def add_bytecode_flag(ap: argparse.ArgumentParser) -> None:
    """The ``--from-source`` flag of a whole-process benchmark."""
    ap.add_argument(
        "--from-source",
        action="store_true",
        help="time our processes compiling the project's modules from source at each start\n"
        "(default: byte-compiled first, as `pip install` of the wheel leaves them)",
    )


def prepare_bytecode(from_source: bool) -> str:
    """Byte-compile the project's packages unless ``from_source``; the line that says which."""
    if from_source:
        return "our modules: compiled from source at each process start (--from-source)"
    for name in PACKAGES:
        if not compileall.compile_dir(ROOT / name, quiet=1):
            sys.exit(f"bench: byte-compiling {ROOT / name} failed (see above)")
    return "our modules: byte-compiled beforehand (.pyc, as `pip install` of the wheel leaves them)"
