"""systemd readiness and watchdog notifications (``sd_notify(3)`` without libsystemd).

The unit runs the agent with ``Type=notify`` and ``WatchdogSec=``: the agent sends ``READY=1``
once its socket is bound and startup recovery is done, ``WATCHDOG=1`` every half watchdog period
from the event loop (so a wedged loop gets the service restarted), ``RELOADING=1``/``READY=1``
around a config reload and ``STOPPING=1`` when it begins to drain.

Outside systemd (``$NOTIFY_SOCKET`` unset) every call is a no-op that returns False.
"""

from __future__ import annotations

import asyncio
import os
import socket

import structlog

__all__ = ["notify", "watchdog_interval_s", "watchdog_loop"]

log = structlog.get_logger(__name__)


def _address() -> str | None:
    addr = os.environ.get("NOTIFY_SOCKET")
    if not addr or addr[0] not in ("/", "@"):
        return None
    # A leading '@' names a socket in the abstract namespace: the kernel wants a NUL byte there.
    return "\0" + addr[1:] if addr[0] == "@" else addr


def notify(*states: str) -> bool:
    """Send ``states`` (e.g. ``"READY=1"``, ``"STATUS=serving"``) to the service manager.

    Args:
        states: ``KEY=VALUE`` assignments, sent as one datagram separated by newlines.

    Returns:
        True if the datagram was sent, False outside systemd or on a send error (logged).
    """
    addr = _address()
    if addr is None:
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.sendto("\n".join(states).encode(), addr)
    except OSError as exc:
        log.warning("sd_notify_failed", states=list(states), error=str(exc))
        return False
    return True


def watchdog_interval_s() -> float | None:
    """Half the watchdog period systemd expects, or None when no watchdog is armed for us."""
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec or not usec.isdigit() or int(usec) <= 0:
        return None
    if pid and pid.isdigit() and int(pid) != os.getpid():
        return None
    return int(usec) / 1_000_000 / 2


async def watchdog_loop(interval_s: float) -> None:
    """Send ``WATCHDOG=1`` every ``interval_s`` seconds until cancelled."""
    while True:
        notify("WATCHDOG=1")
        await asyncio.sleep(interval_s)
