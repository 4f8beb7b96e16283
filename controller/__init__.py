"""cutover: the fleet side of Cutover (build, sign, and the signing agent client).

The client's response types (the agent API's wire models, agent/api_models.py) and its transport
seam are importable from here, so fleet code needs one import::

    from cutover.controller import AgentClient, OperationRecord, Transport
"""

from __future__ import annotations

import typing

from cutover.agent._util.lazy import lazy_exports as _lazy_exports

if typing.TYPE_CHECKING:
    from cutover.agent.api_models import Accepted as Accepted
    from cutover.agent.api_models import AgentInfo as AgentInfo
    from cutover.agent.api_models import AppDetail as AppDetail
    from cutover.agent.api_models import AppsList as AppsList
    from cutover.agent.api_models import AppSummary as AppSummary
    from cutover.agent.api_models import ErrorBody as ErrorBody
    from cutover.agent.api_models import Event as Event
    from cutover.agent.api_models import Health as Health
    from cutover.agent.api_models import JournalEntry as JournalEntry
    from cutover.agent.api_models import OperationRecord as OperationRecord
    from cutover.agent.api_models import OperationResult as OperationResult
    from cutover.agent.api_models import PendingIntent as PendingIntent
    from cutover.agent.api_models import ReleaseInfo as ReleaseInfo
    from cutover.controller.build import AppConfig as AppConfig
    from cutover.controller.build import BuildResult as BuildResult
    from cutover.controller.build import build_package as build_package
    from cutover.controller.build import load_app_config as load_app_config
    from cutover.controller.build import sign_package as sign_package
    from cutover.controller.client import AgentClient as AgentClient
    from cutover.controller.transport import AiohttpTransport as AiohttpTransport
    from cutover.controller.transport import SignedRequest as SignedRequest
    from cutover.controller.transport import Transport as Transport
    from cutover.controller.transport import TransportResponse as TransportResponse

# Loaded on first use from the block above (agent/_util/lazy.py): importing one module
# of the package does not import its siblings.
__getattr__, __dir__ = _lazy_exports(__name__)
