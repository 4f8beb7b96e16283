"""cutover: the fleet side of Cutover (build, sign, and the signing agent client).

The client's response types (the agent API's wire models, agent/api_models.py) and its transport
seam are importable from here, so fleet code needs one import::

    from cutover.controller import AgentClient, OperationRecord, Transport
"""

from __future__ import annotations

from cutover.agent.api_models import (
    Accepted,
    AgentInfo,
    AppDetail,
    AppsList,
    AppSummary,
    ErrorBody,
    Event,
    Health,
    JournalEntry,
    OperationRecord,
    OperationResult,
    PendingIntent,
    ReleaseInfo,
)
from cutover.controller.build import (
    AppConfig,
    BuildResult,
    build_package,
    load_app_config,
    sign_package,
)
from cutover.controller.client import AgentClient
from cutover.controller.transport import (
    AiohttpTransport,
    SignedRequest,
    Transport,
    TransportResponse,
)

__all__ = [
    "Accepted",
    "AgentClient",
    "AgentInfo",
    "AiohttpTransport",
    "AppConfig",
    "AppDetail",
    "AppSummary",
    "AppsList",
    "BuildResult",
    "ErrorBody",
    "Event",
    "Health",
    "JournalEntry",
    "OperationRecord",
    "OperationResult",
    "PendingIntent",
    "ReleaseInfo",
    "SignedRequest",
    "Transport",
    "TransportResponse",
    "build_package",
    "load_app_config",
    "sign_package",
]
