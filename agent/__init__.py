"""cutover-agent: the host side of Cutover.

Public API (everything else is an implementation detail)::

    from cutover.agent import AppManager, load_config, verify_release, parse_manifest, ...
"""

from __future__ import annotations

import typing

from cutover.agent._util.lazy import lazy_exports as _lazy_exports

if typing.TYPE_CHECKING:
    from cutover.agent.config import AgentConfig as AgentConfig
    from cutover.agent.config import LoadedConfig as LoadedConfig
    from cutover.agent.config import load_config as load_config
    from cutover.agent.errors import CutoverError as CutoverError
    from cutover.agent.errors import ExitCode as ExitCode
    from cutover.agent.errors import OperationalError as OperationalError
    from cutover.agent.errors import RejectedError as RejectedError
    from cutover.agent.keys import PrivateKey as PrivateKey
    from cutover.agent.keys import PublicKey as PublicKey
    from cutover.agent.keys import generate_keypair as generate_keypair
    from cutover.agent.keys import load_private_key as load_private_key
    from cutover.agent.keys import load_public_key as load_public_key
    from cutover.agent.package.manifest import Manifest as Manifest
    from cutover.agent.package.manifest import parse_manifest as parse_manifest
    from cutover.agent.trust.policy import HostHistory as HostHistory
    from cutover.agent.trust.policy import TrustPolicy as TrustPolicy
    from cutover.agent.trust.policy import VerifiedRelease as VerifiedRelease
    from cutover.agent.trust.policy import verify_release as verify_release

# Loaded on first use from the block above (agent/_util/lazy.py): importing one module
# of the package does not import its siblings.
__getattr__, __dir__ = _lazy_exports(__name__, eager=("__version__",))

__version__ = "0.1.0"
