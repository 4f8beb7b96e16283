"""What crosses the pipes between the daemon and a stage worker, as JSON-able values (one owner of
that format): the trust policy and host history going in; the verified release's head, the
extraction's stats and any error coming back.

The worker is our own code inside the host's trust boundary: these are plain conversions of
values the daemon already trusts, not a parser of untrusted input. Every conversion has its
inverse here, and ``from_*(to_*(x)) == x`` (tests/agent/test_stage_worker.py).
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from cutover.agent.errors import CutoverError, InternalError, from_wire
from cutover.agent.extract.extractor import ExtractStats
from cutover.agent.keys import PublicKey
from cutover.agent.lifecycle.stagework import StageHead
from cutover.agent.package.manifest import manifest_head
from cutover.agent.trust.approvals import ApprovalMatrix, ApprovalReport
from cutover.agent.trust.policy import HostHistory, TrustPolicy, VerifiedRelease
from cutover.agent.trust.requirements import Requirements

__all__ = [
    "Json",
    "dumps",
    "error_from_wire",
    "error_to_wire",
    "head_from_wire",
    "head_to_wire",
    "history_from_wire",
    "history_to_wire",
    "policy_from_wire",
    "policy_to_wire",
    "stats_from_wire",
    "stats_to_wire",
]

Json = dict[str, Any]


def _raw(key: Ed25519PublicKey) -> str:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw).hex()


def policy_to_wire(policy: TrustPolicy) -> Json:
    return {
        "app": policy.app,
        "keys": {k: {"raw": _raw(v.key), "source": v.source} for k, v in policy.keys.items()},
        "threshold": policy.threshold,
        "key_roles": {k: sorted(r) for k, r in policy.key_roles.items()},
        "approvals": policy.approvals.model_dump(mode="json"),
        "versioning": policy.versioning,
        "allowed_branches": (
            None if policy.allowed_branches is None else list(policy.allowed_branches)
        ),
        "requirements": policy.requirements.model_dump(mode="json"),
    }


def policy_from_wire(obj: Json) -> TrustPolicy:
    keys = {
        k: PublicKey(k, Ed25519PublicKey.from_public_bytes(bytes.fromhex(v["raw"])), v["source"])
        for k, v in obj["keys"].items()
    }
    branches = obj["allowed_branches"]
    return TrustPolicy(
        app=obj["app"],
        keys=keys,
        threshold=obj["threshold"],
        key_roles={k: frozenset(r) for k, r in obj["key_roles"].items()},
        approvals=ApprovalMatrix.model_validate(obj["approvals"]),
        versioning=obj["versioning"],
        allowed_branches=None if branches is None else tuple(branches),
        requirements=Requirements.model_validate(obj["requirements"]),
    )


def history_to_wire(history: HostHistory) -> Json:
    return {
        "known_digests": dict(history.known_digests),
        "highest_version": history.highest_version,
        "allow_downgrade": history.allow_downgrade,
    }


def history_from_wire(obj: Json) -> HostHistory:
    return HostHistory(
        known_digests=dict(obj["known_digests"]),
        highest_version=obj["highest_version"],
        allow_downgrade=obj["allow_downgrade"],
    )


def stats_to_wire(stats: ExtractStats) -> Json:
    return dataclasses.asdict(stats)


def stats_from_wire(obj: Json) -> ExtractStats:
    return ExtractStats(
        files=obj["files"],
        dirs=obj["dirs"],
        symlinks=obj["symlinks"],
        bytes=obj["bytes"],
        seconds=obj["seconds"],
        reused={m: (f, b) for m, (f, b) in obj["reused"].items()},
        checks=dict(obj["checks"]),
    )


def head_to_wire(head: StageHead) -> Json:
    """The verified release without its file list and its bytes (the daemon reads those
    from the package itself and checks them against ``digest``)."""
    v = head.verified
    return {
        "manifest": v.manifest.model_dump_json(exclude={"files"}),
        "digest": v.digest,
        "signers": list(v.signers),
        "ignored_keyids": list(v.ignored_keyids),
        "already_known": v.already_known,
        "approvals": None if v.approvals is None else dataclasses.asdict(v.approvals),
        "space_needed": head.space_needed,
        "total_bytes": head.total_bytes,
    }


def head_from_wire(obj: Json, manifest_bytes: bytes) -> StageHead:
    a = obj["approvals"]
    approvals = (
        None
        if a is None
        else ApprovalReport(
            rule=a["rule"],
            required=dict(a["required"]),
            signed_roles={r: tuple(k) for r, k in a["signed_roles"].items()},
            missing=dict(a["missing"]),
            signers=tuple(a["signers"]),
        )
    )
    verified = VerifiedRelease(
        manifest=manifest_head(obj["manifest"]),
        manifest_bytes=manifest_bytes,
        digest=obj["digest"],
        signers=tuple(obj["signers"]),
        ignored_keyids=tuple(obj["ignored_keyids"]),
        already_known=obj["already_known"],
        approvals=approvals,
    )
    return StageHead(verified, obj["space_needed"], obj["total_bytes"])


def error_to_wire(exc: BaseException) -> Json:
    """An error of the job as the daemon will raise it again: a registry error keeps its
    class, code and message; anything else (a bug) becomes ``internal``, naming its type."""
    if isinstance(exc, CutoverError):
        return {"error": exc.code, "kind": exc.kind, "message": exc.message, **exc.wire_extra()}
    return {
        "error": InternalError.code,
        "kind": InternalError.code,
        "message": f"the stage worker failed: {type(exc).__name__}: {exc}",
    }


def error_from_wire(obj: Json) -> CutoverError:
    return from_wire(
        obj["error"],
        obj["message"],
        kind=obj.get("kind"),
        holder=obj.get("holder"),
        offset=obj.get("offset"),
        health=obj.get("health"),
    )


def dumps(obj: Json) -> bytes:
    """One protocol line."""
    return json.dumps(obj, separators=(",", ":")).encode() + b"\n"
