"""Pure trust decisions: release policy and the RFC 9421 request-signature profile. No I/O."""

from __future__ import annotations

import typing

from cutover.agent._util.lazy import lazy_exports as _lazy_exports

if typing.TYPE_CHECKING:
    from cutover.agent.trust.approvals import ApprovalMatrix as ApprovalMatrix
    from cutover.agent.trust.approvals import ApprovalReport as ApprovalReport
    from cutover.agent.trust.approvals import evaluate_approvals as evaluate_approvals
    from cutover.agent.trust.approvals import require_approvals as require_approvals
    from cutover.agent.trust.httpsig import RequestTarget as RequestTarget
    from cutover.agent.trust.httpsig import content_digest as content_digest
    from cutover.agent.trust.httpsig import new_nonce as new_nonce
    from cutover.agent.trust.httpsig import sign_request as sign_request
    from cutover.agent.trust.httpsig import verify_request as verify_request
    from cutover.agent.trust.policy import HostHistory as HostHistory
    from cutover.agent.trust.policy import SignatureVerdict as SignatureVerdict
    from cutover.agent.trust.policy import TrustPolicy as TrustPolicy
    from cutover.agent.trust.policy import VerifiedRelease as VerifiedRelease
    from cutover.agent.trust.policy import peek_app as peek_app
    from cutover.agent.trust.policy import signature_verdict as signature_verdict
    from cutover.agent.trust.policy import verify_release as verify_release
    from cutover.agent.trust.rules import check_branch as check_branch
    from cutover.agent.trust.rules import check_release_type as check_release_type
    from cutover.agent.trust.rules import implied_type as implied_type

# Loaded on first use from the block above (agent/_util/lazy.py): importing one module
# of the package does not import its siblings.
__getattr__, __dir__ = _lazy_exports(__name__)
