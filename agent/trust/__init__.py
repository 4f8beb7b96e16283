"""Pure trust decisions: release policy and the RFC 9421 request-signature profile. No I/O."""

from __future__ import annotations

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

__all__ = [
    "HostHistory",
    "RequestTarget",
    "SignatureVerdict",
    "TrustPolicy",
    "VerifiedRelease",
    "content_digest",
    "new_nonce",
    "peek_app",
    "sign_request",
    "signature_verdict",
    "verify_release",
    "verify_request",
]
