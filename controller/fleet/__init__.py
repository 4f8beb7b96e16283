"""The fleet: inventory (``fleet.toml``), host selection, the operations runner, notifications.

Layers, top to bottom: :mod:`.strategy` (how deploy activates) → :mod:`.steps` (per-host stage,
activate, rollback) → :mod:`.runner` (bounded concurrency, per-host results and events) →
:mod:`.agents` (the only module that touches the agent client) ; beside them :mod:`.inventory`,
:mod:`.selection`, :mod:`.results` (exit-code rule), :mod:`.views` (status, log history),
:mod:`.release_log` (the release log, fleet-wide integrity) and
:mod:`.notify` (webhooks). The CLI commands live in :mod:`cutover.controller.commands`.
"""

from __future__ import annotations

import typing

from cutover.agent._util.lazy import lazy_exports as _lazy_exports

if typing.TYPE_CHECKING:
    from cutover.controller.fleet.agents import (
        AgentPort,
        AppView,
        ClientAgent,
        JournalEntry,
        OpRecord,
        connect,
        error_from_code,
    )
    from cutover.controller.fleet.inventory import (
        FLEET_ENV,
        Concurrency,
        Fleet,
        HostSpec,
        WebhookSpec,
        fleet_path,
        load_fleet,
    )
    from cutover.controller.fleet.notify import Delivery, Notifier, message_for
    from cutover.controller.fleet.release_log import ReleaseRow, release_log
    from cutover.controller.fleet.results import (
        FleetOutcome,
        FleetResult,
        HostResult,
        HostStatus,
        classify,
        exit_code_of,
        outcome_of,
    )
    from cutover.controller.fleet.runner import Done, FleetRunner
    from cutover.controller.fleet.selection import parse_host_list, select_hosts
    from cutover.controller.fleet.steps import activate_step, rollback_step, stage_step
    from cutover.controller.fleet.strategy import ActivationStrategy, AllAtOnce
    from cutover.controller.fleet.views import LogRow, StatusRow, merge_journals, status_rows

# Loaded on first use (agent/_util/lazy.py): importing one module of the package
# does not import its siblings.
_EXPORTS = {
    "cutover.controller.fleet.agents": (
        "AgentPort",
        "AppView",
        "ClientAgent",
        "JournalEntry",
        "OpRecord",
        "connect",
        "error_from_code",
    ),
    "cutover.controller.fleet.inventory": (
        "FLEET_ENV",
        "Concurrency",
        "Fleet",
        "HostSpec",
        "WebhookSpec",
        "fleet_path",
        "load_fleet",
    ),
    "cutover.controller.fleet.notify": (
        "Delivery",
        "Notifier",
        "message_for",
    ),
    "cutover.controller.fleet.release_log": (
        "ReleaseRow",
        "release_log",
    ),
    "cutover.controller.fleet.results": (
        "FleetOutcome",
        "FleetResult",
        "HostResult",
        "HostStatus",
        "classify",
        "exit_code_of",
        "outcome_of",
    ),
    "cutover.controller.fleet.runner": (
        "Done",
        "FleetRunner",
    ),
    "cutover.controller.fleet.selection": (
        "parse_host_list",
        "select_hosts",
    ),
    "cutover.controller.fleet.steps": (
        "activate_step",
        "rollback_step",
        "stage_step",
    ),
    "cutover.controller.fleet.strategy": (
        "ActivationStrategy",
        "AllAtOnce",
    ),
    "cutover.controller.fleet.views": (
        "LogRow",
        "StatusRow",
        "merge_journals",
        "status_rows",
    ),
}
__getattr__, __dir__ = _lazy_exports(__name__, _EXPORTS)

__all__ = [
    "FLEET_ENV",
    "ActivationStrategy",
    "AgentPort",
    "AllAtOnce",
    "AppView",
    "ClientAgent",
    "Concurrency",
    "Delivery",
    "Done",
    "Fleet",
    "FleetOutcome",
    "FleetResult",
    "FleetRunner",
    "HostResult",
    "HostSpec",
    "HostStatus",
    "JournalEntry",
    "LogRow",
    "Notifier",
    "OpRecord",
    "ReleaseRow",
    "StatusRow",
    "WebhookSpec",
    "activate_step",
    "classify",
    "connect",
    "error_from_code",
    "exit_code_of",
    "fleet_path",
    "load_fleet",
    "merge_journals",
    "message_for",
    "outcome_of",
    "parse_host_list",
    "release_log",
    "rollback_step",
    "select_hosts",
    "stage_step",
    "status_rows",
]
