"""Every wait of a rollout has a deadline, and every deadline an action (docs/rollouts.md).

* :func:`activate_within`: one host's activation must end within ``healthy_deadline_s``; while it
  runs, a heartbeat reads the app every second, and an agent silent for ``progress_deadline_s``
  is *unresponsive*. Either deadline marks the host failed (the failure budget decides the rest);
* :func:`bake`: for ``bake_s`` after a wave, each host must keep answering, keep running the
  version and keep its live health; the same progress deadline applies;
* :func:`answer_within`: any single question to an agent (read its app, its journal) waits at most
  the progress deadline.

These functions talk to one agent each through its :class:`AgentPort`; they decide nothing
beyond "this host met the deadline or did not".
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from cutover.agent.errors import CutoverError, OperationalError, UnreachableError
from cutover.controller.fleet.agents import AgentPort, OpRecord

__all__ = ["HEARTBEAT_S", "activate_within", "answer_within", "bake", "heartbeat"]

HEARTBEAT_S = 1.0

_T = TypeVar("_T")


async def answer_within(question: Awaitable[_T], deadline_s: float, host: str, what: str) -> _T:
    """``question``'s answer, or :class:`UnreachableError` (``unresponsive``) after the deadline."""
    try:
        return await asyncio.wait_for(question, deadline_s)
    except TimeoutError as exc:
        raise UnreachableError(
            f"{host}: no answer to {what} within the progress deadline ({deadline_s:g}s)",
            code="unresponsive",
        ) from exc


async def heartbeat(port: AgentPort, app: str, deadline_s: float) -> None:
    """Returns when the agent has not answered for ``deadline_s`` (never otherwise).

    The first read waits one interval: the request that started the wait just proved the agent
    answers (an activation that ends within a second costs no heartbeat at all).
    """
    last_ok = time.monotonic()
    while True:
        await asyncio.sleep(min(HEARTBEAT_S, deadline_s / 3))
        try:
            await asyncio.wait_for(port.app(app), timeout=deadline_s)
            last_ok = time.monotonic()
        except (CutoverError, TimeoutError):
            if time.monotonic() - last_ok >= deadline_s:
                return


async def activate_within(
    port: AgentPort,
    activation: Awaitable[OpRecord],
    app: str,
    *,
    healthy_deadline_s: float,
    progress_deadline_s: float,
) -> OpRecord:
    """The activation's final record, under both deadlines.

    Raises:
        UnreachableError: ``unresponsive``: the agent did not answer for the progress deadline.
        OperationalError: ``healthy_deadline``: the activation did not end in time.
    """
    name = getattr(port, "name", "")
    act: asyncio.Task[OpRecord] = asyncio.ensure_future(activation)
    watch = asyncio.create_task(heartbeat(port, app, progress_deadline_s))
    try:
        done, _ = await asyncio.wait(
            {act, watch}, timeout=healthy_deadline_s, return_when=asyncio.FIRST_COMPLETED
        )
    finally:
        watch.cancel()
    if act in done:
        return act.result()
    act.cancel()
    if watch in done:
        raise UnreachableError(
            f"{name}: the agent did not answer for {progress_deadline_s:g}s "
            "(progress deadline): host marked failed",
            code="unresponsive",
        )
    raise OperationalError(
        f"{name}: not healthy within {healthy_deadline_s:g}s (healthy deadline): "
        "host marked failed",
        code="healthy_deadline",
    )


async def bake(
    connect: Callable[[], AgentPort],
    host: str,
    app: str,
    version: str,
    *,
    bake_s: float,
    progress_deadline_s: float,
) -> tuple[str, str] | None:
    """Watch ``host`` for ``bake_s``: None if it stayed healthy, else (check, why)."""
    port = connect()
    try:
        end = time.monotonic() + bake_s
        last_ok = time.monotonic()
        while True:
            try:
                view = await asyncio.wait_for(port.app(app), timeout=progress_deadline_s)
                last_ok = time.monotonic()
                if view.current != version:
                    return ("bake", f"no longer runs {version} (current {view.current})")
                health = view.last_health() or ""
                if health.endswith("fail"):
                    return ("bake", f"health during the bake: {health}")
            except (CutoverError, TimeoutError) as exc:
                if time.monotonic() - last_ok >= progress_deadline_s:
                    return (
                        "unresponsive",
                        f"{host}: the agent did not answer for {progress_deadline_s:g}s "
                        f"during the bake ({exc or 'timeout'})",
                    )
            left = end - time.monotonic()
            if left <= 0:
                return None
            await asyncio.sleep(min(HEARTBEAT_S, left))
    finally:
        await port.close()
