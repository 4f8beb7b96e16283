"""Pure trust decisions: release policy and the RFC 9421 request-signature profile. No I/O."""

from __future__ import annotations

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
