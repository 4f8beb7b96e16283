"""Pure RFC 9421 request signatures: the one fixed, strict profile the agent API accepts.

No I/O happens here (``new_nonce`` draws from ``secrets``; nothing else touches the outside world).
Every rejection raises :class:`~agent.errors.AuthError` whose ``code`` is the short reason the API
returns with its 401. Replay protection (remembering nonces) lives in :mod:`agent.daemon.nonces`;
roles and the exclusion of release keys live in the server, which passes only controller keys in
``keys``.

Profile ``cutover-v1``: the normative text (headers, components, parameters, time rules, the
signature base, with a worked example) is ``docs/protocol.md``, section "Request signatures:
profile cutover-v1"; a third party implements a client from it. This module is that text as
code; the constants below are its fixed values. When the two disagree, that is a defect in both.

Callers (the server) must: verify before reading the body; build ``RequestTarget`` from the raw
request-target (``request.raw_path`` split at the first ``?``, never a decoded path or query) and
the configured agent name; then consume the nonce (agent.daemon.nonces) and stream the body,
refusing it unless its SHA-256 equals ``Verified.content_digest``.

Verification order (first failure wins): headers present -> Signature-Input syntax -> label ->
components -> parameters (set and types, ``alg``, ``tag``, ``nonce``) -> time -> Signature syntax ->
Content-Type -> Content-Digest -> request target -> key -> Ed25519 signature.
"""

from __future__ import annotations

import base64
import math
import re
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from cutover.agent.errors import AuthError
from cutover.agent.keys import PrivateKey, PublicKey
from cutover.agent.trust._sfv import (
    InnerList,
    Item,
    Member,
    Params,
    SFError,
    parse_dictionary,
    serialize_inner_list,
    serialize_string,
)

__all__ = [
    "ALG",
    "COMPONENTS",
    "LABEL",
    "MAX_LIFETIME_S",
    "MAX_SKEW_S",
    "PARAMS",
    "TAG",
    "RequestTarget",
    "SignedHeaders",
    "Verified",
    "build_signature_base",
    "claimed_keyid",
    "content_digest",
    "is_valid_nonce",
    "new_nonce",
    "parse_content_digest",
    "serialize_signature_params",
    "sign_request",
    "verify_request",
]

LABEL = "cutover"
ALG = "ed25519"
TAG = "cutover-v1"
COMPONENTS = ("@method", "@authority", "@path", "@query", "content-type", "content-digest")
PARAMS = ("created", "expires", "nonce", "keyid", "alg", "tag")  # the order signers emit
MAX_LIFETIME_S = 300
MAX_SKEW_S = 30

_INT_PARAMS = frozenset({"created", "expires"})
_MAX_SIG_FIELD_CHARS = 2048
_MAX_CONTENT_TYPE_CHARS = 256
_NONCE_RE = re.compile(r"[A-Za-z0-9_-]{22,64}")
_METHOD_RE = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_PATH_RE = re.compile(r"/[\x21-\x22\x24-\x3e\x40-\x7e]*")  # VCHAR minus '#' and '?'
_QUERY_RE = re.compile(r"[\x21-\x22\x24-\x7e]*")  # VCHAR minus '#'
_AUTHORITY_RE = re.compile(r"(?:[a-z0-9._~-]+|\[[0-9a-f:.]+\])(?::[0-9]{1,5})?")
_DUP_CODE = {
    "signature-input": "malformed_signature_input",
    "signature": "malformed_signature",
    "content-type": "bad_content_type",
    "content-digest": "bad_digest_header",
}


@dataclass(frozen=True)
class RequestTarget:
    """What a request addresses. ``query`` is raw, without its leading ``?``."""

    method: str
    authority: str
    path: str
    query: str


@dataclass(frozen=True)
class SignedHeaders:
    """Values for the ``Signature-Input`` and ``Signature`` headers."""

    signature_input: str
    signature: str


@dataclass(frozen=True)
class Verified:
    """A request whose signature checked out. The body must still hash to ``content_digest``."""

    keyid: str
    nonce: str
    created: int
    expires: int
    content_digest: bytes


# --- RFC 9421 signature base ---------------------------------------------------------------------


def serialize_signature_params(
    components: Sequence[str], params: Sequence[tuple[str, int | str]]
) -> str:
    """Serialise the ``@signature-params`` inner list (RFC 9421 §2.3, RFC 8941 §4.1.1.1).

    Args:
        components: covered component names, in order (no component parameters).
        params: signature parameters in the order they are to appear; ints and strings only.

    Raises:
        ValueError: a name is not an sf-key, or a value is not an sf-integer or printable string.
    """
    return serialize_inner_list(components, params)


def build_signature_base(components: Sequence[tuple[str, str]], signature_params: str) -> bytes:
    """Build the RFC 9421 §2.5 signature base.

    Args:
        components: ``(name, value)`` pairs in covered order; names lowercase, values already
            resolved (e.g. ``("@query", "?a=1")``, ``("content-type", "application/json")``).
        signature_params: the output of :func:`serialize_signature_params`.

    Returns:
        The ASCII bytes that are signed: ``"name": value`` lines, then ``"@signature-params"``.

    Raises:
        ValueError: a name is not lowercase, or a value holds a control or non-ASCII character
            (which would let one line forge another).
    """
    lines = []
    for name, value in components:
        if not name or name != name.lower() or name == "@signature-params":
            raise ValueError(f"component name {name!r} is not allowed")
        if not all(" " <= c <= "~" or c == "\t" for c in value):
            raise ValueError(f"component {name!r} has a control or non-ASCII character")
        lines.append(f"{serialize_string(name)}: {value}")
    lines.append(f'"@signature-params": {signature_params}')
    return "\n".join(lines).encode("ascii")


# --- the profile ---------------------------------------------------------------------------------


def _fail(code: str, message: str) -> AuthError:
    return AuthError(message, code=code)


def content_digest(body_sha256: bytes) -> str:
    """The ``Content-Digest`` header value for a body whose SHA-256 is ``body_sha256``."""
    if len(body_sha256) != 32:
        raise ValueError("body_sha256 must be the 32-byte SHA-256 digest")
    return f"sha-256=:{base64.b64encode(body_sha256).decode('ascii')}:"


def parse_content_digest(value: str) -> bytes:
    """The raw 32-byte SHA-256 from a ``Content-Digest`` header value.

    Raises:
        AuthError: code ``bad_digest_header`` unless the value is exactly ``sha-256=:BASE64:``.
    """
    hint = "send exactly one member, sha-256=:BASE64:"
    try:
        members = parse_dictionary(value.strip(" \t"))
    except SFError as exc:
        raise _fail("bad_digest_header", f"Content-Digest is malformed ({exc}); {hint}") from exc
    if [key for key, _ in members] != ["sha-256"]:
        raise _fail("bad_digest_header", f"Content-Digest must hold sha-256 only; {hint}")
    item = members[0][1]
    if not isinstance(item, Item) or type(item.value) is not bytes or item.params:
        raise _fail("bad_digest_header", f"Content-Digest sha-256 is not a byte sequence; {hint}")
    if len(item.value) != 32:
        raise _fail("bad_digest_header", "Content-Digest sha-256 is not 32 bytes long")
    return item.value


def is_valid_nonce(nonce: str) -> bool:
    """True iff ``nonce`` has the profile's charset and length (22-64 base64url characters)."""
    return _NONCE_RE.fullmatch(nonce) is not None


def new_nonce() -> str:
    """A fresh 256-bit nonce (43 base64url characters)."""
    return secrets.token_urlsafe(32)


def _target_problem(target: RequestTarget) -> str | None:
    if _METHOD_RE.fullmatch(target.method) is None:
        return "method is not an HTTP token"
    if _PATH_RE.fullmatch(target.path) is None:
        return "path must start with '/' and be printable ASCII without spaces, '?' or '#'"
    if _QUERY_RE.fullmatch(target.query) is None:
        return "query must be printable ASCII without spaces or '#'"
    return None


def _check_authority(authority: str) -> None:
    if _AUTHORITY_RE.fullmatch(authority) is None:
        raise ValueError(
            f"authority {authority!r} is not a lowercase host or host:port; "
            "configure the agent name as the controller addresses it"
        )


def _component_values(
    target: RequestTarget, content_type: str, digest_value: str
) -> list[tuple[str, str]]:
    values = (target.method, target.authority, target.path, "?" + target.query)
    return list(zip(COMPONENTS, (*values, content_type, digest_value), strict=True))


def sign_request(
    key: PrivateKey,
    target: RequestTarget,
    *,
    content_type: str,
    content_digest: str,
    created: int,
    expires: int,
    nonce: str,
) -> SignedHeaders:
    """Sign a request under the profile.

    Args:
        key: the controller key; its ``keyid`` goes into the signature.
        target: method, the agent's name as authority, and the raw path and query sent on the wire.
        content_type: the exact ``Content-Type`` value sent (``""`` for a bodiless request).
        content_digest: the exact ``Content-Digest`` value sent (see :func:`content_digest`).
        created: Unix seconds now; expires: at most ``MAX_LIFETIME_S`` later; nonce: new_nonce().

    Returns:
        The ``Signature-Input`` and ``Signature`` header values.

    Raises:
        ValueError: an argument would produce a request every agent refuses.
    """
    _check_authority(target.authority)
    problem = _target_problem(target)
    if problem is not None:
        raise ValueError(f"cannot sign request: {problem}")
    if not is_valid_nonce(nonce):
        raise ValueError("nonce must be 22-64 base64url characters; use new_nonce()")
    if created < 0 or not 0 < expires - created <= MAX_LIFETIME_S:
        raise ValueError(f"need 0 <= created < expires <= created + {MAX_LIFETIME_S}")
    if _content_type_problem(content_type) or content_type != content_type.strip(" \t"):
        raise ValueError("content_type must be printable ASCII without surrounding spaces")
    try:
        parse_content_digest(content_digest)
    except AuthError as exc:
        raise ValueError(str(exc)) from exc
    if content_digest != content_digest.strip(" \t"):
        raise ValueError("content_digest must not have surrounding spaces")
    params: list[tuple[str, int | str]] = [
        ("created", created),
        ("expires", expires),
        ("nonce", nonce),
        ("keyid", key.keyid),
        ("alg", ALG),
        ("tag", TAG),
    ]
    sig_params = serialize_signature_params(COMPONENTS, params)
    base = build_signature_base(_component_values(target, content_type, content_digest), sig_params)
    signature = base64.b64encode(key.sign(base)).decode("ascii")
    return SignedHeaders(
        signature_input=f"{LABEL}={sig_params}", signature=f"{LABEL}=:{signature}:"
    )


def _content_type_problem(value: str) -> bool:
    return len(value) > _MAX_CONTENT_TYPE_CHARS or not all(" " <= c <= "~" for c in value)


def _lookup(headers: Mapping[str, str]) -> dict[str, str]:
    found: dict[str, str] = {}
    for name, value in headers.items():
        lname = name.lower()
        if lname in _DUP_CODE:
            if lname in found:
                raise _fail(_DUP_CODE[lname], f"{lname} header sent more than once; send it once")
            found[lname] = value.strip(" \t")
    return found


_KEYID_SHAPE = re.compile(r"[0-9a-f]{16,64}")


def claimed_keyid(headers: Mapping[str, str]) -> str | None:
    """The keyid a request's Signature-Input claims, unverified, for the log line of a refusal.

    Only the shape of a keyid (lowercase hex, 16-64 characters) is returned, so a hostile value
    never reaches a log line; anything unparsable is ``None``.
    """
    try:
        text = _lookup(headers).get("signature-input")
        if text is None:
            return None
        member = _single_member(text, "Signature-Input", "malformed_signature_input")
    except AuthError:
        return None
    keyid = dict(member.params).get("keyid")
    return keyid if isinstance(keyid, str) and _KEYID_SHAPE.fullmatch(keyid) else None


def _single_member(text: str, field: str, malformed: str) -> Member:
    if len(text) > _MAX_SIG_FIELD_CHARS:
        raise _fail(malformed, f"{field} is longer than {_MAX_SIG_FIELD_CHARS} characters")
    try:
        members = parse_dictionary(text)
    except SFError as exc:
        raise _fail(
            malformed, f"{field} is not a valid structured-field dictionary ({exc})"
        ) from exc
    labels = [label for label, _ in members]
    if len(set(labels)) != len(labels):
        raise _fail(malformed, f"{field} repeats a label")
    if labels != [LABEL]:
        raise _fail(
            "wrong_label",
            f"{field} must hold exactly one signature, labelled {LABEL!r}; got {labels}",
        )
    return members[0][1]


def _check_components(member: Member) -> InnerList:
    if not isinstance(member, InnerList):
        raise _fail("malformed_signature_input", "Signature-Input member is not an inner list")
    names = [item.value for item in member.items]
    if (
        any(type(item.value) is not str or item.params for item in member.items)
        or tuple(names) != COMPONENTS
    ):
        raise _fail("bad_components", f"covered components must be exactly {' '.join(COMPONENTS)}")
    return member


def _check_params(params: Params) -> list[tuple[str, int | str]]:
    names = [name for name, _ in params]
    if len(set(names)) != len(names):
        raise _fail("bad_params", "a signature parameter is repeated")
    if set(names) != set(PARAMS):
        missing, extra = sorted(set(PARAMS) - set(names)), sorted(set(names) - set(PARAMS))
        raise _fail(
            "bad_params",
            f"signature parameters must be exactly {', '.join(PARAMS)} (missing {missing}, unexpected {extra})",
        )
    typed: list[tuple[str, int | str]] = []
    for name, value in params:
        if name in _INT_PARAMS:
            if type(value) is not int or value < 0:
                raise _fail("bad_params", f"{name} must be a non-negative sf-integer")
            typed.append((name, value))
        else:
            if type(value) is not str:
                raise _fail("bad_params", f"{name} must be an sf-string")
            typed.append((name, value))
    return typed


def verify_request(
    target: RequestTarget,
    headers: Mapping[str, str],
    *,
    keys: Mapping[str, PublicKey],
    now: float,
    max_lifetime_s: int = MAX_LIFETIME_S,
    max_skew_s: int = MAX_SKEW_S,
) -> Verified:
    """Check a request's signature under the profile (module docstring), in the order given there.

    Args:
        target: the request's method, raw path and raw query, and as ``authority`` the agent's
            configured name (never the Host header).
        headers: the request headers; names are matched case-insensitively and each of
            ``signature-input``, ``signature``, ``content-type``, ``content-digest`` must occur once.
        keys: trusted controller keys by keyid.
        now: the agent's clock, Unix seconds.
        max_lifetime_s: the longest ``expires - created`` accepted (1 to 300).
        max_skew_s: how far ``created`` may be in the future (0 to 300).

    Returns:
        The verified facts. The caller must still consume the nonce (agent.daemon.nonces) and
        compare the body's SHA-256 with ``content_digest``.

    Raises:
        AuthError: with ``code`` one of missing_signature, malformed_signature_input, wrong_label,
            bad_components, bad_params, bad_alg, bad_tag, bad_nonce, lifetime_too_long,
            not_yet_valid, expired, malformed_signature, missing_content_type, bad_content_type,
            missing_content_digest, bad_digest_header, bad_request_target, unknown_key,
            bad_signature.
        ValueError: ``target.authority``, ``now`` or a limit is invalid (a caller's error).
    """
    if not 0 < max_lifetime_s <= MAX_LIFETIME_S or not 0 <= max_skew_s <= MAX_LIFETIME_S:
        raise ValueError("max_lifetime_s must be 1-300 and max_skew_s 0-300")
    if not math.isfinite(now):  # NaN would pass every time comparison
        raise ValueError("now must be a finite Unix time")
    _check_authority(target.authority)
    fields = _lookup(headers)
    if "signature-input" not in fields or "signature" not in fields:
        raise _fail(
            "missing_signature", "request is not signed: send Signature-Input and Signature"
        )

    member = _single_member(
        fields["signature-input"], "Signature-Input", "malformed_signature_input"
    )
    params = _check_params(_check_components(member).params)
    p = dict(params)
    if p["alg"] != ALG:
        raise _fail("bad_alg", f"alg must be {ALG!r}")
    if p["tag"] != TAG:
        raise _fail("bad_tag", f"tag must be {TAG!r}; the signer speaks another profile")
    nonce, keyid = str(p["nonce"]), str(p["keyid"])
    if not is_valid_nonce(nonce):
        raise _fail("bad_nonce", "nonce must be 22-64 base64url characters (>= 128 random bits)")
    created, expires = int(p["created"]), int(p["expires"])
    if expires <= created:
        raise _fail("bad_params", "expires must be later than created")
    if expires - created > max_lifetime_s:
        raise _fail(
            "lifetime_too_long",
            f"expires - created exceeds {max_lifetime_s} s; sign with a shorter lifetime",
        )
    if created > now + max_skew_s:
        raise _fail(
            "not_yet_valid",
            f"created is more than {max_skew_s} s in the agent's future; check the signer's clock",
        )
    if now >= expires:
        raise _fail("expired", "signature has expired; sign a fresh request (check clocks)")

    sig_member = _single_member(fields["signature"], "Signature", "malformed_signature")
    if (
        not isinstance(sig_member, Item)
        or type(sig_member.value) is not bytes
        or sig_member.params
        or len(sig_member.value) != 64
    ):
        raise _fail("malformed_signature", "Signature must be cutover=:BASE64: of 64 bytes")
    signature = sig_member.value

    content_type = fields.get("content-type")
    if content_type is None:
        raise _fail("missing_content_type", "send Content-Type (empty for a bodiless request)")
    if _content_type_problem(content_type):
        raise _fail(
            "bad_content_type", "Content-Type must be at most 256 printable ASCII characters"
        )
    digest_value = fields.get("content-digest")
    if digest_value is None:
        raise _fail(
            "missing_content_digest", "send Content-Digest (sha-256, also for an empty body)"
        )
    digest = parse_content_digest(digest_value)

    problem = _target_problem(target)
    if problem is not None:
        raise _fail("bad_request_target", problem)
    key = keys.get(keyid)
    if key is None:
        raise _fail(
            "unknown_key", f"keyid {keyid[:16]!r} is not a trusted controller key on this agent"
        )
    base = build_signature_base(
        _component_values(target, content_type, digest_value),
        serialize_signature_params(COMPONENTS, params),
    )
    if not key.verify(signature, base):
        raise _fail(
            "bad_signature",
            "signature does not match the request (altered, signed for another agent, or wrong key)",
        )
    return Verified(
        keyid=keyid, nonce=nonce, created=created, expires=expires, content_digest=digest
    )
