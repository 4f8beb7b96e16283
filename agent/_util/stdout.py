"""Standard output whose reader went away (``cutover-agent status | head -c0``).

A command that meets the closed pipe is not at fault: both command-line programs then end with
120, as Python's own exit does when its final flush fails, say nothing more on stdout, and never
call it a bug. :func:`reader_gone` tells that case from a broken pipe elsewhere (a hook's, a
socket's), which stays an error."""

from __future__ import annotations

import os
import select

__all__ = ["CLOSED_STDOUT_EXIT", "print_last", "reader_gone", "silence"]

CLOSED_STDOUT_EXIT = 120


def reader_gone() -> bool:
    """Whether descriptor 1 is a pipe or socket whose reader has closed it."""
    poller = select.poll()
    try:
        poller.register(1, select.POLLOUT)
        return any(ev & (select.POLLERR | select.POLLHUP) for _, ev in poller.poll(0))
    except (OSError, ValueError):  # no descriptor 1
        return False


def silence() -> None:
    """Send later writes to stdout, and the final flush, to /dev/null."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.close(devnull)


def print_last(line: str) -> None:
    """Print a command's last line (its ``--json`` error): if the reader is gone, the exit code
    the caller returns still says what happened."""
    try:
        print(line)
    except BrokenPipeError:
        if not reader_gone():
            raise
        silence()
