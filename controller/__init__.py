"""cutover: the fleet side of Cutover (build, sign, and the signing agent client).

The client's response types (the agent API's wire models, agent/api_models.py) and its transport
seam are importable from here, so fleet code needs one import::

    from cutover.controller import AgentClient, OperationRecord, Transport
"""

from __future__ import annotations

import typing

from cutover.agent._util.lazy import lazy_exports as _lazy_exports

if typing.TYPE_CHECKING:
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

# Loaded on first use (agent/_util/lazy.py): importing one module of the package
# does not import its siblings.
_EXPORTS = {
    "cutover.agent.api_models": (
        "Accepted",
        "AgentInfo",
        "AppDetail",
        "AppsList",
        "AppSummary",
        "ErrorBody",
        "Event",
        "Health",
        "JournalEntry",
        "OperationRecord",
        "OperationResult",
        "PendingIntent",
        "ReleaseInfo",
    ),
    "cutover.controller.build": (
        "AppConfig",
        "BuildResult",
        "build_package",
        "load_app_config",
        "sign_package",
    ),
    "cutover.controller.client": ("AgentClient",),
    "cutover.controller.transport": (
        "AiohttpTransport",
        "SignedRequest",
        "Transport",
        "TransportResponse",
    ),
}
__getattr__, __dir__ = _lazy_exports(__name__, _EXPORTS)

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
