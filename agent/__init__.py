"""cutover-agent: the host side of Cutover.

Public API (everything else is an implementation detail)::

    from cutover.agent import AppManager, load_config, verify_release, parse_manifest, ...
"""

from __future__ import annotations

import typing

from cutover.agent._util.lazy import lazy_exports as _lazy_exports

if typing.TYPE_CHECKING:
    from cutover.agent.config import AgentConfig, LoadedConfig, load_config
    from cutover.agent.errors import (
        CutoverError,
        ExitCode,
        OperationalError,
        RejectedError,
    )
    from cutover.agent.keys import (
        PrivateKey,
        PublicKey,
        generate_keypair,
        load_private_key,
        load_public_key,
    )
    from cutover.agent.package.manifest import Manifest, parse_manifest
    from cutover.agent.trust.policy import HostHistory, TrustPolicy, VerifiedRelease, verify_release

# Loaded on first use (agent/_util/lazy.py): importing one module of the package
# does not import its siblings.
_EXPORTS = {
    "cutover.agent.config": (
        "AgentConfig",
        "LoadedConfig",
        "load_config",
    ),
    "cutover.agent.errors": (
        "CutoverError",
        "ExitCode",
        "OperationalError",
        "RejectedError",
    ),
    "cutover.agent.keys": (
        "PrivateKey",
        "PublicKey",
        "generate_keypair",
        "load_private_key",
        "load_public_key",
    ),
    "cutover.agent.package.manifest": (
        "Manifest",
        "parse_manifest",
    ),
    "cutover.agent.trust.policy": (
        "HostHistory",
        "TrustPolicy",
        "VerifiedRelease",
        "verify_release",
    ),
}
__getattr__, __dir__ = _lazy_exports(__name__, _EXPORTS)

__version__ = "0.1.0"

__all__ = [
    "AgentConfig",
    "CutoverError",
    "ExitCode",
    "HostHistory",
    "LoadedConfig",
    "Manifest",
    "OperationalError",
    "PrivateKey",
    "PublicKey",
    "RejectedError",
    "TrustPolicy",
    "VerifiedRelease",
    "__version__",
    "generate_keypair",
    "load_config",
    "load_private_key",
    "load_public_key",
    "parse_manifest",
    "verify_release",
]
