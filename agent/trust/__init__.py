"""Pure trust decisions: release policy and the RFC 9421 request-signature profile. No I/O."""

from __future__ import annotations

import typing

from cutover.agent._util.lazy import lazy_exports as _lazy_exports

if typing.TYPE_CHECKING:
    from cutover.agent.trust.approvals import (
        ApprovalMatrix,
        ApprovalReport,
        evaluate_approvals,
        require_approvals,
    )
    from cutover.agent.trust.httpsig import (
        RequestTarget,
        content_digest,
        new_nonce,
        sign_request,
        verify_request,
    )
    from cutover.agent.trust.policy import (
        HostHistory,
        SignatureVerdict,
        TrustPolicy,
        VerifiedRelease,
        peek_app,
        signature_verdict,
        verify_release,
    )
    from cutover.agent.trust.rules import check_branch, check_release_type, implied_type

# Loaded on first use (agent/_util/lazy.py): importing one module of the package
# does not import its siblings.
_EXPORTS = {
    "cutover.agent.trust.approvals": (
        "ApprovalMatrix",
        "ApprovalReport",
        "evaluate_approvals",
        "require_approvals",
    ),
    "cutover.agent.trust.httpsig": (
        "RequestTarget",
        "content_digest",
        "new_nonce",
        "sign_request",
        "verify_request",
    ),
    "cutover.agent.trust.policy": (
        "HostHistory",
        "SignatureVerdict",
        "TrustPolicy",
        "VerifiedRelease",
        "peek_app",
        "signature_verdict",
        "verify_release",
    ),
    "cutover.agent.trust.rules": (
        "check_branch",
        "check_release_type",
        "implied_type",
    ),
}
__getattr__, __dir__ = _lazy_exports(__name__, _EXPORTS)

__all__ = [
    "ApprovalMatrix",
    "ApprovalReport",
    "HostHistory",
    "RequestTarget",
    "SignatureVerdict",
    "TrustPolicy",
    "VerifiedRelease",
    "check_branch",
    "check_release_type",
    "content_digest",
    "evaluate_approvals",
    "implied_type",
    "new_nonce",
    "peek_app",
    "require_approvals",
    "sign_request",
    "signature_verdict",
    "verify_release",
    "verify_request",
]
