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
    from cutover.controller.fleet.agents import AgentPort as AgentPort
    from cutover.controller.fleet.agents import AppView as AppView
    from cutover.controller.fleet.agents import ClientAgent as ClientAgent
    from cutover.controller.fleet.agents import JournalEntry as JournalEntry
    from cutover.controller.fleet.agents import OpRecord as OpRecord
    from cutover.controller.fleet.agents import connect as connect
    from cutover.controller.fleet.agents import error_from_code as error_from_code
    from cutover.controller.fleet.inventory import FLEET_ENV as FLEET_ENV
    from cutover.controller.fleet.inventory import Concurrency as Concurrency
    from cutover.controller.fleet.inventory import Fleet as Fleet
    from cutover.controller.fleet.inventory import HostSpec as HostSpec
    from cutover.controller.fleet.inventory import WebhookSpec as WebhookSpec
    from cutover.controller.fleet.inventory import fleet_path as fleet_path
    from cutover.controller.fleet.inventory import load_fleet as load_fleet
    from cutover.controller.fleet.notify import Delivery as Delivery
    from cutover.controller.fleet.notify import Notifier as Notifier
    from cutover.controller.fleet.notify import message_for as message_for
    from cutover.controller.fleet.release_log import ReleaseRow as ReleaseRow
    from cutover.controller.fleet.results import FleetOutcome as FleetOutcome
    from cutover.controller.fleet.results import FleetResult as FleetResult
    from cutover.controller.fleet.results import HostResult as HostResult
    from cutover.controller.fleet.results import HostStatus as HostStatus
    from cutover.controller.fleet.results import classify as classify
    from cutover.controller.fleet.results import exit_code_of as exit_code_of
    from cutover.controller.fleet.results import outcome_of as outcome_of
    from cutover.controller.fleet.runner import Done as Done
    from cutover.controller.fleet.runner import FleetRunner as FleetRunner
    from cutover.controller.fleet.selection import parse_host_list as parse_host_list
    from cutover.controller.fleet.selection import select_hosts as select_hosts
    from cutover.controller.fleet.steps import activate_step as activate_step
    from cutover.controller.fleet.steps import rollback_step as rollback_step
    from cutover.controller.fleet.steps import stage_step as stage_step
    from cutover.controller.fleet.strategy import ActivationStrategy as ActivationStrategy
    from cutover.controller.fleet.strategy import AllAtOnce as AllAtOnce
    from cutover.controller.fleet.views import LogRow as LogRow
    from cutover.controller.fleet.views import StatusRow as StatusRow
    from cutover.controller.fleet.views import merge_journals as merge_journals
    from cutover.controller.fleet.views import status_rows as status_rows

# Loaded on first use from the block above (agent/_util/lazy.py): importing one module
# of the package does not import its siblings.
__getattr__, __dir__ = _lazy_exports(__name__)
