"""The RFC 9421 request-signature profile: round trips, every rejection, RFC and library interop."""

from __future__ import annotations

import base64
import dataclasses
import datetime
import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from multidict import CIMultiDict

from cutover.agent.errors import AuthError
from cutover.agent.keys import PrivateKey, PublicKey, keyid_of
from cutover.agent.trust import httpsig
from cutover.agent.trust.httpsig import (
    COMPONENTS,
    RequestTarget,
    build_signature_base,
    content_digest,
    new_nonce,
    parse_content_digest,
    serialize_signature_params,
    sign_request,
    verify_request,
)

NOW = 1_760_000_000
AGENT = "agent-1.example.net:8443"
BODY = b'{"version": "2026.03.7"}'
NONCE = "n0nce-" + "A" * 37  # 43 base64url characters, like new_nonce()


def make_key() -> PrivateKey:
    key = Ed25519PrivateKey.generate()
    return PrivateKey(keyid=keyid_of(key.public_key()), key=key)


KEY = make_key()
OTHER = make_key()  # trusted too
ATTACKER = make_key()  # never trusted
TRUSTED = {KEY.keyid: KEY.public, OTHER.keyid: OTHER.public}


@dataclass
class Req:
    """One request as the server would see it."""

    target: RequestTarget
    headers: dict[str, str]
    keys: dict[str, PublicKey] = field(default_factory=lambda: dict(TRUSTED))
    now: float = NOW

    def verify(self) -> httpsig.Verified:
        return verify_request(self.target, self.headers, keys=self.keys, now=self.now)


def signed(
    *,
    key: PrivateKey = KEY,
    method: str = "POST",
    path: str = "/v1/apps/ame/activate",
    query: str = "",
    body: bytes = BODY,
    content_type: str = "application/json",
    created: int = NOW - 10,
    expires: int = NOW + 110,
    nonce: str = NONCE,
) -> Req:
    target = RequestTarget(method=method, authority=AGENT, path=path, query=query)
    digest = content_digest(hashlib.sha256(body).digest())
    sig = sign_request(
        key,
        target,
        content_type=content_type,
        content_digest=digest,
        created=created,
        expires=expires,
        nonce=nonce,
    )
    headers = {
        "Content-Type": content_type,
        "Content-Digest": digest,
        "Signature-Input": sig.signature_input,
        "Signature": sig.signature,
    }
    return Req(target, headers)


def raw_params(**overrides: str | None) -> str:
    """A Signature-Input inner list from serialised pieces; None drops a parameter."""
    components = overrides.pop("components", None) or " ".join(f'"{c}"' for c in COMPONENTS)
    params: dict[str, str | None] = {
        "created": str(NOW - 10),
        "expires": str(NOW + 110),
        "nonce": f'"{NONCE}"',
        "keyid": f'"{KEY.keyid}"',
        "alg": '"ed25519"',
        "tag": '"cutover-v1"',
    }
    extra = overrides.pop("extra", "")
    params.update(overrides)
    return (
        f"({components})"
        + "".join(f";{k}={v}" for k, v in params.items() if v is not None)
        + (extra or "")
    )


def with_params(req: Req, key: PrivateKey = KEY, **overrides: str | None) -> Req:
    """``req`` with a Signature-Input built by raw_params and a signature over what it says.

    The signature is valid for the stated input, so a rejection proves the profile refused the
    input itself, not that the signature happened to be wrong.
    """
    return with_sig_params(req, raw_params(**overrides), key)


def with_sig_params(req: Req, sig_params: str, key: PrivateKey = KEY) -> Req:
    base = build_signature_base(
        [
            ("@method", req.target.method),
            ("@authority", req.target.authority),
            ("@path", req.target.path),
            ("@query", "?" + req.target.query),
            ("content-type", req.headers["Content-Type"]),
            ("content-digest", req.headers["Content-Digest"]),
        ],
        sig_params,
    )
    sig = base64.b64encode(key.sign(base)).decode()
    headers = dict(req.headers)
    headers.update({"Signature-Input": f"cutover={sig_params}", "Signature": f"cutover=:{sig}:"})
    return dataclasses.replace(req, headers=headers)


def set_header(req: Req, name: str, value: str | None) -> Req:
    headers = {k: v for k, v in req.headers.items() if k.lower() != name.lower()}
    if value is not None:
        headers[name] = value
    return dataclasses.replace(req, headers=headers)


def retarget(req: Req, **changes: str) -> Req:
    return dataclasses.replace(req, target=dataclasses.replace(req.target, **changes))


def flip_bit(req: Req) -> Req:
    raw = bytearray(base64.b64decode(req.headers["Signature"][len("cutover=:") : -1]))
    raw[10] ^= 0x01
    return set_header(req, "Signature", f"cutover=:{base64.b64encode(bytes(raw)).decode()}:")


def signature_of(req: Req) -> str:
    return req.headers["Signature"].split("=", 1)[1]


SIG_INPUT = "Signature-Input"
OTHER_DIGEST = content_digest(hashlib.sha256(b"other body").digest())

# (id, how the good request is altered, expected reason code)
REJECTIONS: list[tuple[str, Callable[[Req], Req], str]] = [
    # tampering with any covered part breaks the signature
    ("tampered-method", lambda r: retarget(r, method="PUT"), "bad_signature"),
    ("tampered-path", lambda r: retarget(r, path="/v1/apps/other/activate"), "bad_signature"),
    ("tampered-query", lambda r: retarget(r, query="force=1"), "bad_signature"),
    ("empty-query-marker-kept", lambda r: retarget(r, query="?"), "bad_signature"),
    ("other-agent", lambda r: retarget(r, authority="agent-2.example.net:8443"), "bad_signature"),
    ("tampered-content-type", lambda r: set_header(r, "Content-Type", "text/plain"), "bad_signature"),
    ("tampered-digest", lambda r: set_header(r, "Content-Digest", OTHER_DIGEST), "bad_signature"),
    ("tampered-created", lambda r: set_header(r, SIG_INPUT, "cutover=" + raw_params(created=str(NOW - 9))), "bad_signature"),
    ("bit-flipped-signature", flip_bit, "bad_signature"),
    ("wrong-key-for-keyid", lambda r: with_params(r, key=ATTACKER), "bad_signature"),
    ("other-trusted-key-for-keyid", lambda r: with_params(r, key=OTHER), "bad_signature"),
    ("unknown-keyid", lambda r: with_params(r, key=ATTACKER, keyid=f'"{ATTACKER.keyid}"'), "unknown_key"),
    # headers present, once
    ("no-signature-input", lambda r: set_header(r, SIG_INPUT, None), "missing_signature"),
    ("no-signature", lambda r: set_header(r, "Signature", None), "missing_signature"),
    ("no-content-digest", lambda r: set_header(r, "Content-Digest", None), "missing_content_digest"),
    ("no-content-type", lambda r: set_header(r, "Content-Type", None), "missing_content_type"),
    ("signature-twice-by-case", lambda r: dataclasses.replace(r, headers=dict(r.headers, signature=r.headers["Signature"])), "malformed_signature"),
    ("content-type-control-char", lambda r: set_header(r, "Content-Type", "application/json\x00"), "bad_content_type"),
    ("content-type-newline-injection", lambda r: set_header(r, "Content-Type", 'a\n"@method": GET'), "bad_content_type"),
    # Content-Digest (RFC 9530): exactly one sha-256 member
    ("digest-sha512-only", lambda r: set_header(r, "Content-Digest", "sha-512=:" + base64.b64encode(bytes(64)).decode() + ":"), "bad_digest_header"),
    ("digest-two-members", lambda r: set_header(r, "Content-Digest", r.headers["Content-Digest"] + ", sha-512=:" + base64.b64encode(bytes(64)).decode() + ":"), "bad_digest_header"),
    ("digest-short", lambda r: set_header(r, "Content-Digest", "sha-256=:" + base64.b64encode(bytes(31)).decode() + ":"), "bad_digest_header"),
    ("digest-as-string", lambda r: set_header(r, "Content-Digest", 'sha-256="abc"'), "bad_digest_header"),
    ("digest-with-param", lambda r: set_header(r, "Content-Digest", r.headers["Content-Digest"] + ";x=1"), "bad_digest_header"),
    # labels
    ("two-labels", lambda r: set_header(r, SIG_INPUT, r.headers[SIG_INPUT] + ", other=" + raw_params()), "wrong_label"),
    ("other-label", lambda r: set_header(r, SIG_INPUT, "sig1=" + raw_params()), "wrong_label"),
    ("signature-other-label", lambda r: set_header(r, "Signature", "sig1=" + signature_of(r)), "wrong_label"),
    ("signature-two-labels", lambda r: set_header(r, "Signature", r.headers["Signature"] + ", sig1=" + signature_of(r)), "wrong_label"),
    ("label-repeated", lambda r: set_header(r, SIG_INPUT, r.headers[SIG_INPUT] + ", " + r.headers[SIG_INPUT]), "malformed_signature_input"),
    # structured-field syntax (RFC 8941)
    ("sf-unterminated-list", lambda r: set_header(r, SIG_INPUT, r.headers[SIG_INPUT].replace(")", "", 1)), "malformed_signature_input"),
    ("sf-trailing-comma", lambda r: set_header(r, SIG_INPUT, r.headers[SIG_INPUT] + ","), "malformed_signature_input"),
    ("sf-tab-in-inner-list", lambda r: set_header(r, SIG_INPUT, r.headers[SIG_INPUT].replace('" "', '"\t"', 1)), "malformed_signature_input"),
    ("sf-space-before-param", lambda r: set_header(r, SIG_INPUT, r.headers[SIG_INPUT].replace(";created", " ;created")), "malformed_signature_input"),
    ("sf-uppercase-param-key", lambda r: set_header(r, SIG_INPUT, r.headers[SIG_INPUT].replace("created=", "Created=")), "malformed_signature_input"),
    ("sf-bad-escape", lambda r: set_header(r, SIG_INPUT, r.headers[SIG_INPUT].replace('"ed25519"', '"ed\\25519"')), "malformed_signature_input"),
    ("sf-member-is-item", lambda r: set_header(r, SIG_INPUT, 'cutover="@method"'), "malformed_signature_input"),
    ("sf-unicode-digit", lambda r: set_header(r, SIG_INPUT, "cutover=" + raw_params(created="١٧٦")), "malformed_signature_input"),
    ("sf-too-long", lambda r: set_header(r, SIG_INPUT, "cutover=" + raw_params(keyid='"' + "a" * 3000 + '"')), "malformed_signature_input"),
    ("sig-not-bytes", lambda r: set_header(r, "Signature", 'cutover="abc"'), "malformed_signature"),
    ("sig-unpadded-base64", lambda r: set_header(r, "Signature", r.headers["Signature"].replace("==:", ":")), "malformed_signature"),
    ("sig-63-bytes", lambda r: set_header(r, "Signature", "cutover=:" + base64.b64encode(bytes(63)).decode() + ":"), "malformed_signature"),
    ("sig-with-param", lambda r: set_header(r, "Signature", r.headers["Signature"] + ";alg=1"), "malformed_signature"),
    ("sig-inner-list", lambda r: set_header(r, "Signature", f"cutover=({signature_of(r)})"), "malformed_signature"),
    # covered components: exactly ours, in order, no component parameters
    ("components-missing-digest", lambda r: with_params(r, components='"@method" "@authority" "@path" "@query" "content-type"'), "bad_components"),
    ("components-reordered", lambda r: with_params(r, components='"@authority" "@method" "@path" "@query" "content-type" "content-digest"'), "bad_components"),
    ("components-extra-date", lambda r: with_params(r, components='"@method" "@authority" "@path" "@query" "content-type" "content-digest" "date"'), "bad_components"),
    ("components-sf-flag", lambda r: with_params(r, components='"@method" "@authority" "@path" "@query" "content-type" "content-digest";sf'), "bad_components"),
    ("components-target-uri", lambda r: with_params(r, components='"@method" "@target-uri" "@path" "@query" "content-type" "content-digest"'), "bad_components"),
    ("components-token", lambda r: with_params(r, components='"@method" "@authority" "@path" "@query" content-type "content-digest"'), "bad_components"),
    # parameters: exactly ours, once, with the right types
    ("param-missing-nonce", lambda r: with_params(r, nonce=None), "bad_params"),
    ("param-missing-expires", lambda r: with_params(r, expires=None), "bad_params"),
    ("param-missing-tag", lambda r: with_params(r, tag=None), "bad_params"),
    ("param-extra", lambda r: with_params(r, extra=';foo="bar"'), "bad_params"),
    ("param-duplicate-created", lambda r: with_params(r, extra=f";created={NOW - 10}"), "bad_params"),
    ("param-created-string", lambda r: with_params(r, created=f'"{NOW - 10}"'), "bad_params"),
    ("param-created-decimal", lambda r: with_params(r, created=f"{NOW - 10}.5"), "bad_params"),
    ("param-created-boolean", lambda r: with_params(r, created="?1"), "bad_params"),
    ("param-created-negative", lambda r: with_params(r, created="-1"), "bad_params"),
    ("param-keyid-token", lambda r: with_params(r, keyid=f"k{KEY.keyid}"), "bad_params"),
    ("param-alg-token", lambda r: with_params(r, alg="ed25519"), "bad_params"),
    ("param-nonce-bytes", lambda r: with_params(r, nonce=":" + base64.b64encode(bytes(16)).decode() + ":"), "bad_params"),
    ("param-expires-before-created", lambda r: with_params(r, expires=str(NOW - 20)), "bad_params"),
    ("alg-hmac-sha256", lambda r: with_params(r, alg='"hmac-sha256"'), "bad_alg"),
    ("alg-rsa-pss-sha512", lambda r: with_params(r, alg='"rsa-pss-sha512"'), "bad_alg"),
    ("alg-uppercase", lambda r: with_params(r, alg='"ED25519"'), "bad_alg"),
    ("tag-other-profile", lambda r: with_params(r, tag='"cutover-v2"'), "bad_tag"),
    ("tag-empty", lambda r: with_params(r, tag='""'), "bad_tag"),
    ("nonce-short", lambda r: with_params(r, nonce='"' + "A" * 21 + '"'), "bad_nonce"),
    ("nonce-bad-char", lambda r: with_params(r, nonce='"' + "A" * 30 + '+/"'), "bad_nonce"),
    ("nonce-too-long", lambda r: with_params(r, nonce='"' + "A" * 65 + '"'), "bad_nonce"),
    # time
    ("expired-at-expires", lambda r: dataclasses.replace(r, now=NOW + 110), "expired"),
    ("expired-long-ago", lambda r: dataclasses.replace(r, now=NOW + 10_000), "expired"),
    ("created-in-future", lambda r: with_params(r, created=str(NOW + 31), expires=str(NOW + 100)), "not_yet_valid"),
    ("lifetime-301s", lambda r: with_params(r, created=str(NOW - 10), expires=str(NOW + 291)), "lifetime_too_long"),
    ("lifetime-one-day", lambda r: with_params(r, created=str(NOW), expires=str(NOW + 86_400)), "lifetime_too_long"),
    # the request target itself must be safe to put in a signature base
    ("path-newline-injection", lambda r: retarget(r, path='/v1\n"@method": GET'), "bad_request_target"),
    ("path-not-absolute", lambda r: retarget(r, path="v1/apps"), "bad_request_target"),
    ("query-with-space", lambda r: retarget(r, query="a b"), "bad_request_target"),
    ("method-with-space", lambda r: retarget(r, method="GET /"), "bad_request_target"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("mutate", "code"), [(m, c) for _, m, c in REJECTIONS], ids=[i for i, _, _ in REJECTIONS]
)
def test_rejections_carry_their_reason_code(mutate: Callable[[Req], Req], code: str) -> None:
    """Each crafted request is refused with its precise reason code, never a Verified."""
    good = signed()
    good.verify()  # the unaltered request passes, so the alteration alone causes the refusal
    with pytest.raises(AuthError) as info:
        mutate(good).verify()
    assert info.value.code == code, info.value.message
    assert info.value.message


def test_round_trip_post_returns_the_verified_facts() -> None:
    """A signed POST verifies and yields keyid, nonce, times and the digest the body must match."""
    verified = signed().verify()
    assert verified == httpsig.Verified(
        keyid=KEY.keyid,
        nonce=NONCE,
        created=NOW - 10,
        expires=NOW + 110,
        content_digest=hashlib.sha256(BODY).digest(),
    )


def test_round_trip_bodiless_get_with_query() -> None:
    """A GET sends an empty Content-Type and the digest of the empty body; @query is covered."""
    req = signed(
        method="GET", path="/v1/apps/ame", query="limit=5&x=%2F", body=b"", content_type=""
    )
    assert req.headers["Content-Digest"] == "sha-256=:47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=:"
    assert req.verify().content_digest == hashlib.sha256(b"").digest()
    with pytest.raises(AuthError) as info:
        retarget(req, query="limit=5&x=/").verify()  # the raw query is signed, not a decoded one
    assert info.value.code == "bad_signature"


def test_signed_headers_have_the_documented_shape() -> None:
    """Signature-Input lists the components and parameters in the profile's order."""
    headers = signed().headers
    assert headers["Signature-Input"] == (
        'cutover=("@method" "@authority" "@path" "@query" "content-type" "content-digest")'
        f';created={NOW - 10};expires={NOW + 110};nonce="{NONCE}";keyid="{KEY.keyid}"'
        ';alg="ed25519";tag="cutover-v1"'
    )
    assert headers["Signature"].startswith("cutover=:") and headers["Signature"].endswith("==:")


@pytest.mark.parametrize(
    "variant",
    [
        pytest.param(lambda r: with_params(r, extra=""), id="same-inputs-resigned"),
        pytest.param(
            lambda r: dataclasses.replace(r, headers={k.upper(): v for k, v in r.headers.items()}),
            id="header-names-uppercase",
        ),
        pytest.param(
            lambda r: dataclasses.replace(r, headers={k: f" {v}\t" for k, v in r.headers.items()}),
            id="surrounding-whitespace",
        ),
        pytest.param(
            lambda r: set_header(
                r, SIG_INPUT, r.headers[SIG_INPUT].replace("(", "( ").replace(")", " )")
            ),
            id="sf-spaces-inside-inner-list",
        ),
        pytest.param(lambda r: dataclasses.replace(r, now=NOW + 109.999), id="just-before-expiry"),
        pytest.param(
            lambda r: with_params(r, created=str(NOW + 30), expires=str(NOW + 100)),
            id="created-within-skew",
        ),
        pytest.param(
            lambda r: with_params(r, created=str(NOW - 200), expires=str(NOW + 100)),
            id="lifetime-exactly-300s",
        ),
    ],
)
def test_accepted_variants(variant: Callable[[Req], Req]) -> None:
    """Variations RFC 8941/9110 allow, and limits at their boundary, still verify."""
    assert variant(signed()).verify().keyid == KEY.keyid


def test_parameters_in_another_order_are_accepted_and_bound() -> None:
    """Received parameter order is what the base serialises (RFC 9421 §2.3), as the library does."""
    req = signed()
    components = " ".join(f'"{c}"' for c in COMPONENTS)
    reordered = (
        f'({components});created={NOW - 10};keyid="{KEY.keyid}";alg="ed25519"'
        f';expires={NOW + 110};nonce="{NONCE}";tag="cutover-v1"'
    )
    assert with_sig_params(req, reordered).verify().nonce == NONCE
    with pytest.raises(AuthError) as info:  # same values in another order, original signature
        set_header(req, SIG_INPUT, f"cutover={reordered}").verify()
    assert info.value.code == "bad_signature"


def test_multidict_duplicate_header_lines_are_refused() -> None:
    """aiohttp's CIMultiDict may hold two Signature lines; the request is refused, not merged."""
    req = signed()
    headers = CIMultiDict(req.headers)
    assert verify_request(req.target, headers, keys=TRUSTED, now=NOW).keyid == KEY.keyid
    headers.add("signature", req.headers["Signature"])
    with pytest.raises(AuthError) as info:
        verify_request(req.target, headers, keys=TRUSTED, now=NOW)
    assert info.value.code == "malformed_signature"


def test_configured_authority_must_be_valid() -> None:
    """A misconfigured agent name is a configuration error, not a client's fault."""
    req = signed()
    for bad in ("Agent-1.example.net", "agent 1", "https://agent-1", ""):
        with pytest.raises(ValueError, match="authority"):
            retarget(req, authority=bad).verify()


def test_verifier_limits_are_bounded_by_the_profile() -> None:
    req = signed()
    with pytest.raises(ValueError, match="finite"):
        verify_request(req.target, req.headers, keys=TRUSTED, now=float("nan"))
    with pytest.raises(ValueError):
        verify_request(req.target, req.headers, keys=TRUSTED, now=NOW, max_lifetime_s=301)
    with pytest.raises(AuthError) as info:  # a stricter agent may shorten the lifetime
        verify_request(req.target, req.headers, keys=TRUSTED, now=NOW, max_lifetime_s=60)
    assert info.value.code == "lifetime_too_long"


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        pytest.param({"nonce": "short"}, "nonce", id="short-nonce"),
        pytest.param({"created": NOW, "expires": NOW + 301}, "expires", id="lifetime-301s"),
        pytest.param({"created": NOW, "expires": NOW}, "expires", id="zero-lifetime"),
        pytest.param({"content_type": "a\nb"}, "content_type", id="content-type-newline"),
        pytest.param({"content_type": " text/plain"}, "content_type", id="content-type-space"),
        pytest.param({"content_digest": "sha-512=:AAAA:"}, "Content-Digest", id="digest-sha512"),
        pytest.param(
            {"target": RequestTarget("POST", "Agent:1", "/", "")},
            "authority",
            id="authority-uppercase",
        ),
        pytest.param(
            {"target": RequestTarget("POST", "agent:1", "/a b", "")}, "path", id="path-space"
        ),
    ],
)
def test_signer_refuses_requests_no_agent_would_accept(
    kwargs: dict[str, object], match: str
) -> None:
    args: dict[str, object] = {
        "target": RequestTarget("POST", AGENT, "/v1/apps", ""),
        "content_type": "application/json",
        "content_digest": content_digest(hashlib.sha256(BODY).digest()),
        "created": NOW,
        "expires": NOW + 60,
        "nonce": NONCE,
    }
    args.update(kwargs)
    target = args.pop("target")
    with pytest.raises(ValueError, match=match):
        sign_request(KEY, target, **args)  # type: ignore[arg-type]


def test_content_digest_round_trip_and_strictness() -> None:
    digest = hashlib.sha256(BODY).digest()
    assert parse_content_digest(content_digest(digest)) == digest
    assert parse_content_digest(" " + content_digest(digest) + " ") == digest
    with pytest.raises(ValueError):
        content_digest(digest[:31])
    for bad in ("", "sha-256", "sha-256=:", "SHA-256=:" + base64.b64encode(digest).decode() + ":"):
        with pytest.raises(AuthError) as info:
            parse_content_digest(bad)
        assert info.value.code == "bad_digest_header"
    noncanonical = base64.b64encode(bytes(32)).decode()[:-2] + "B="  # unused bits set
    with pytest.raises(AuthError):
        parse_content_digest(f"sha-256=:{noncanonical}:")


def test_new_nonce_is_valid_and_fresh() -> None:
    nonces = {new_nonce() for _ in range(100)}
    assert len(nonces) == 100
    assert all(httpsig.is_valid_nonce(n) and len(n) == 43 for n in nonces)


def test_signature_base_refuses_line_injection() -> None:
    """A value with a newline could forge a component line; the builder refuses it."""
    with pytest.raises(ValueError):
        build_signature_base([("@path", '/a\n"@method": GET')], "()")
    with pytest.raises(ValueError):
        build_signature_base([("Content-Type", "x")], "()")
    with pytest.raises(ValueError):
        serialize_signature_params(["@method"], [("created", True)])


# --- RFC 9421 Appendix B.2.6 and an independent implementation ----------------------------------

# RFC 9421 Appendix B.1.4, test-key-ed25519 (published test key; never use it for anything else).
RFC_TEST_KEY_PEM = b"""-----BEGIN PRIVATE KEY-----
MC4CAQAwBQYDK2VwBCIEIJ+DYvh6SEqVTm50DFtMDoQikTmiCqirVv9mWG9qfSnF
-----END PRIVATE KEY-----
"""
RFC_TEST_PUB_PEM = b"""-----BEGIN PUBLIC KEY-----
MCowBQYDK2VwAyEAJrQLj5P/89iXES9+vFgrIy29clF9CC/oPPsw3c5D0bs=
-----END PUBLIC KEY-----
"""
RFC_B26_BASE = (
    b'"date": Tue, 20 Apr 2021 02:07:55 GMT\n'
    b'"@method": POST\n'
    b'"@path": /foo\n'
    b'"@authority": example.com\n'
    b'"content-type": application/json\n'
    b'"content-length": 18\n'
    b'"@signature-params": ("date" "@method" "@path" "@authority" "content-type" '
    b'"content-length");created=1618884473;keyid="test-key-ed25519"'
)
RFC_B26_SIGNATURE = (
    "wqcAqbmYJ2ji2glfAMaRy4gruYYnx2nEFN2HN6jrnDnQCK1u02Gb04v9EDgwUPiu4A0w6vuQv5lIp5WPpBKRCw=="
)


def test_rfc9421_b26_signature_base_and_signature_reproduced() -> None:
    """Our base builder and Ed25519 reproduce RFC 9421 B.2.6 byte for byte."""
    components = ["date", "@method", "@path", "@authority", "content-type", "content-length"]
    values = [
        "Tue, 20 Apr 2021 02:07:55 GMT",
        "POST",
        "/foo",
        "example.com",
        "application/json",
        "18",
    ]
    params = serialize_signature_params(
        components, [("created", 1618884473), ("keyid", "test-key-ed25519")]
    )
    base = build_signature_base(list(zip(components, values, strict=True)), params)
    assert base == RFC_B26_BASE
    private = serialization.load_pem_private_key(RFC_TEST_KEY_PEM, password=None)
    assert isinstance(private, Ed25519PrivateKey)
    assert base64.b64encode(private.sign(base)).decode() == RFC_B26_SIGNATURE
    public = PublicKey.from_pem(RFC_TEST_PUB_PEM)
    assert public.verify(base64.b64decode(RFC_B26_SIGNATURE), base)


@pytest.fixture
def hms() -> Any:
    """The independent implementation (test dependency only; never imported by agent code)."""
    return pytest.importorskip("http_message_signatures")


def _message(method: str, query: str, body: bytes, content_type: str) -> SimpleNamespace:
    url = f"https://{AGENT}/v1/apps/ame/releases/2026.03.7" + (f"?{query}" if query else "")
    headers = {"Content-Type": content_type}
    return SimpleNamespace(method=method, url=url, headers=headers, body=body)


INTEROP = [
    pytest.param(
        "PUT", "", b"package bytes" * 100, "application/vnd.cutover.package", id="put-body"
    ),
    pytest.param("GET", "limit=5", b"", "", id="get-empty-body"),
]


@pytest.mark.parametrize(("method", "query", "body", "content_type"), INTEROP)
def test_library_verifies_what_we_sign(
    hms: Any, method: str, query: str, body: bytes, content_type: str
) -> None:
    """http-message-signatures accepts our signature, with our tag and all six components."""
    now = int(time.time())
    msg = _message(method, query, body, content_type)
    msg.headers["Content-Digest"] = content_digest(hashlib.sha256(body).digest())
    target = RequestTarget(method, AGENT, "/v1/apps/ame/releases/2026.03.7", query)
    sig = sign_request(
        KEY,
        target,
        content_type=content_type,
        content_digest=msg.headers["Content-Digest"],
        created=now,
        expires=now + 60,
        nonce=new_nonce(),
    )
    msg.headers.update({"Signature-Input": sig.signature_input, "Signature": sig.signature})
    verifier = hms.HTTPMessageVerifier(
        signature_algorithm=hms.algorithms.ED25519,
        key_resolver=hms.MappingKeyResolver(
            public_keys={KEY.keyid: KEY.public.key}, private_keys={}
        ),
    )
    (result,) = verifier.verify(
        msg, expect_tag="cutover-v1", require_components=COMPONENTS, body=body
    )
    assert result.label == "cutover"
    assert result.parameters["keyid"] == KEY.keyid
    assert result.body == body
    tampered = _message(method, query + "&x=1" if query else "x=1", body, content_type)
    tampered.headers.update({k: v for k, v in msg.headers.items() if k != "Content-Type"})
    with pytest.raises(hms.InvalidSignature):
        verifier.verify(tampered, expect_tag="cutover-v1")


@pytest.mark.parametrize(("method", "query", "body", "content_type"), INTEROP)
def test_we_verify_what_the_library_signs(
    hms: Any, method: str, query: str, body: bytes, content_type: str
) -> None:
    """Our verifier accepts the library's signature (its own parameter order and serialisation)."""
    created = datetime.datetime.now(datetime.UTC).replace(microsecond=0)
    msg = _message(method, query, body, content_type)
    signer = hms.HTTPMessageSigner(
        signature_algorithm=hms.algorithms.ED25519,
        key_resolver=hms.MappingKeyResolver(public_keys={}, private_keys={KEY.keyid: KEY.key}),
    )
    nonce = new_nonce()
    signer.sign(
        msg,
        key_id=KEY.keyid,
        created=created,
        expires=created + datetime.timedelta(seconds=120),
        nonce=nonce,
        label="cutover",
        tag="cutover-v1",
        covered_component_ids=COMPONENTS,
        body=body,
    )
    assert msg.headers["Signature-Input"].startswith("cutover=(")
    target = RequestTarget(method, AGENT, "/v1/apps/ame/releases/2026.03.7", query)
    verified = verify_request(target, msg.headers, keys=TRUSTED, now=created.timestamp() + 1)
    assert verified.nonce == nonce
    assert verified.content_digest == hashlib.sha256(body).digest()
    with pytest.raises(AuthError) as info:
        verify_request(
            retarget(Req(target, {}), authority="agent-2.example.net:8443").target,
            msg.headers,
            keys=TRUSTED,
            now=created.timestamp() + 1,
        )
    assert info.value.code == "bad_signature"


def test_exports() -> None:
    """The public names the server and controller use are exported and exist."""
    assert {"RequestTarget", "SignedHeaders", "Verified", "content_digest", "new_nonce",
            "parse_content_digest", "sign_request", "verify_request"} <= set(httpsig.__all__)  # fmt: skip
    assert all(hasattr(httpsig, name) for name in httpsig.__all__)


def test_mutated_headers_only_ever_raise_auth_error() -> None:
    """Mutated headers never crash the verifier: it refuses with AuthError, or (for a change
    RFC 8941 deems insignificant, such as a space inside the inner list) yields the same facts."""
    import random

    rng = random.Random(9421)  # noqa: S311  # deterministic fuzzing, not cryptography
    good = signed()
    expected = good.verify()
    accepted = 0
    alphabet = ' \t"\\()*,-.:;=?@abcdefz019AZ+/~\x00\x7f\u0661\n'
    for _ in range(3000):
        name = rng.choice(["Signature-Input", "Signature", "Content-Digest", "Content-Type"])
        value = list(good.headers[name])
        for _ in range(rng.randint(1, 3)):
            pos = rng.randrange(len(value) + 1)
            op = rng.randrange(3)
            if op == 0 and pos < len(value):
                del value[pos]
            elif op == 1 and pos < len(value):
                value[pos] = rng.choice(alphabet)
            else:
                value.insert(pos, rng.choice(alphabet))
        mutated = set_header(good, name, "".join(value))
        if mutated.headers[name].strip(" \t") == good.headers[name]:
            continue
        try:
            verified = mutated.verify()
        except AuthError:
            continue
        assert verified == expected, mutated.headers[name]
        accepted += 1
    assert accepted < 30
