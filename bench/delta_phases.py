#!/usr/bin/env python3
"""Where one ``cutover-agent stage`` spends its time (bench/delta.py runs it on a delta container).

    .venv/bin/python bench/delta_phases.py CONFIG PACKAGE

Runs the real CLI (``cutover.agent.cli`` ``main``, the same code path as the ``cutover-agent``
script) in this fresh process, with a timer around each phase below, and prints one JSON line:
``imports`` (of the CLI and the stage's modules), each phase's seconds (in order; labels starting with two spaces are
inside the one above), and ``command`` (the whole command after the imports). No module of the
project is imported before the timer starts.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import json
import os
import sys
import time
from collections.abc import Callable
from typing import Any

PHASES = {  # label -> (module, attribute)
    "verify the package (signatures, 20k-entry manifest)": (
        "cutover.agent.lifecycle.stagework",  # StageJob.verify's (the CLI's local stage work)
        "verify_release",
    ),
    "content index: which installed releases to read": (
        "cutover.agent.host.content",
        "ContentIndex.build",
    ),
    "extract: directories, thin payload, placing": (
        "cutover.agent.extract.extractor",
        "extract_payload",
    ),
    "  of which placing reused files (lstat, link, lstat; [open, hash])": (
        "cutover.agent.extract.reuse",
        "Reuser.place",
    ),
    "    of which reading seals (the content index, as lookups need them)": (
        "cutover.agent.host.content",
        "ContentIndex._read_next",
    ),
    "install (shared links, kept manifest, rename)": ("cutover.agent.host.installer", "install"),
    "read-only + seal (its syncfs first)": ("cutover.agent.host.installer", "seal"),
    "syncfs": ("cutover.agent.host.installer", "make_durable"),
}


# The CLI imports a command's modules when the command runs (agent/cli/_main.py) and AppManager
# an operation's when it first runs: these are the stage's, imported inside the "imports" timer so
# that row stays the whole import cost of a stage (and the phases can be wrapped beforehand).
STAGE_MODULES = (
    "cutover.agent.cli._commands",
    "cutover.agent.lifecycle.stage",
    "cutover.agent.lifecycle.housekeeping",
    *dict.fromkeys(module for module, _ in PHASES.values()),
)


def main(config: str, package: str) -> int:
    t0 = time.perf_counter()
    from cutover.agent.cli._main import main as cli_main

    for module in STAGE_MODULES:
        importlib.import_module(module)
    seconds: dict[str, float] = {"imports": time.perf_counter() - t0}
    seconds.update(dict.fromkeys(PHASES, 0.0))

    def timed(label: str, func: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(func)
        def wrapper(*a: Any, **kw: Any) -> Any:
            t = time.perf_counter()
            try:
                return func(*a, **kw)
            finally:
                seconds[label] += time.perf_counter() - t

        return wrapper

    for label, (module, attr) in PHASES.items():
        owner: Any = importlib.import_module(module)
        *path, name = attr.split(".")
        for part in path:
            owner = getattr(owner, part)
        func = vars(owner)[name] if isinstance(owner, type) else getattr(owner, name)
        if isinstance(func, classmethod):
            setattr(owner, name, classmethod(timed(label, func.__func__)))
        else:
            setattr(owner, name, timed(label, func))
    t1 = time.perf_counter()
    with open(os.devnull, "w") as null, contextlib.redirect_stdout(null):
        rc = cli_main(["--config", config, "--json", "stage", package])
    seconds["command"] = time.perf_counter() - t1
    print(json.dumps(seconds), flush=True)
    sys.stderr.flush()
    os._exit(rc)  # as the `cutover-agent` script ends (agent/cli/_main.py: no teardown)


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:3]))
