"""``verify_release(earlier=...)``: a stage worker that streamed an upload decides again on the
spooled package (agent/worker/streamjob.py, agent/lifecycle/stagework.py). Only the parse of the
very same manifest bytes is reused; every check runs again with the policy and history given now.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from cutover.agent.errors import DowngradeError, ImmutableVersionError, SignatureError
from cutover.agent.package.container import open_package
from cutover.agent.trust.policy import HostHistory, TrustPolicy, VerifiedRelease, verify_release
from tests.agent.conftest import NOW, VERSION, Kit, reg


def _parts(pkg: Path) -> tuple[bytes, bytes]:
    parts, fh = open_package(pkg)
    fh.close()
    return parts.manifest_bytes, parts.signatures_bytes


def _verify(
    kit: Kit,
    pkg: Path,
    earlier: VerifiedRelease | None,
    policy: TrustPolicy | None = None,
    history: HostHistory | None = None,
) -> VerifiedRelease:
    manifest, signatures = _parts(pkg)
    return verify_release(
        manifest,
        signatures,
        policy or kit.policy(),
        expected_version=VERSION,
        history=history or HostHistory(),
        now=NOW,
        earlier=earlier,
    )


def test_the_same_bytes_reuse_the_parse_and_every_check_runs_again(kit: Kit) -> None:
    pkg = kit.evil([reg("a.txt", "one\n")])
    first = _verify(kit, pkg, None)
    again = _verify(kit, pkg, first)
    assert again.manifest is first.manifest  # the parse of those bytes, reused
    assert again.digest == first.digest and again.signers == first.signers
    # the history read under the lock now knows this version with another manifest
    with pytest.raises(ImmutableVersionError):
        _verify(kit, pkg, first, history=HostHistory(known_digests={VERSION: "0" * 64}))
    with pytest.raises(DowngradeError):
        _verify(kit, pkg, first, history=HostHistory(highest_version="9.0.0"))
    # a policy reloaded meanwhile that no longer trusts the key that signed it
    with pytest.raises(SignatureError):
        _verify(kit, pkg, first, policy=kit.policy([kit.other]))


def test_other_bytes_are_parsed_afresh(kit: Kit) -> None:
    streamed = _verify(kit, kit.evil([reg("a.txt", "one\n")]), None)
    other = kit.evil([reg("b.txt", "two\n")])
    decided = _verify(kit, other, streamed)
    assert decided.manifest is not streamed.manifest
    assert [f.path for f in decided.manifest.files] == ["b.txt"]
    assert decided.digest != streamed.digest
