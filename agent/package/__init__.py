"""The package format: manifest models, signatures, the container, the one tar codec and the
writer. One owner for each format: builders and inspectors call these, never re-implement them."""

from __future__ import annotations

import typing

from cutover.agent._util.lazy import lazy_exports as _lazy_exports

if typing.TYPE_CHECKING:
    from cutover.agent.package.container import PAYLOAD_NAMES as PAYLOAD_NAMES
    from cutover.agent.package.container import PackageParts as PackageParts
    from cutover.agent.package.container import hash_payload as hash_payload
    from cutover.agent.package.container import open_package as open_package
    from cutover.agent.package.container import read_package as read_package
    from cutover.agent.package.container import write_package as write_package
    from cutover.agent.package.manifest import APP_RE as APP_RE
    from cutover.agent.package.manifest import FORMAT_VERSION as FORMAT_VERSION
    from cutover.agent.package.manifest import MAX_MANIFEST_BYTES as MAX_MANIFEST_BYTES
    from cutover.agent.package.manifest import CommandCheck as CommandCheck
    from cutover.agent.package.manifest import DirEntry as DirEntry
    from cutover.agent.package.manifest import FileEntry as FileEntry
    from cutover.agent.package.manifest import HealthPhase as HealthPhase
    from cutover.agent.package.manifest import HealthSpec as HealthSpec
    from cutover.agent.package.manifest import Hook as Hook
    from cutover.agent.package.manifest import Hooks as Hooks
    from cutover.agent.package.manifest import HttpCheck as HttpCheck
    from cutover.agent.package.manifest import LogCheck as LogCheck
    from cutover.agent.package.manifest import Manifest as Manifest
    from cutover.agent.package.manifest import Payload as Payload
    from cutover.agent.package.manifest import ReleaseType as ReleaseType
    from cutover.agent.package.manifest import SharedPaths as SharedPaths
    from cutover.agent.package.manifest import SymlinkEntry as SymlinkEntry
    from cutover.agent.package.manifest import TcpCheck as TcpCheck
    from cutover.agent.package.manifest import VersionProbe as VersionProbe
    from cutover.agent.package.manifest import check_relpath as check_relpath
    from cutover.agent.package.manifest import parse_manifest as parse_manifest
    from cutover.agent.package.manifest import render_manifest as render_manifest
    from cutover.agent.package.signatures import SignatureEntry as SignatureEntry
    from cutover.agent.package.signatures import parse_signatures as parse_signatures
    from cutover.agent.package.signatures import render_signatures as render_signatures
    from cutover.agent.package.writer import PayloadWriter as PayloadWriter
    from cutover.agent.package.writer import add_signature as add_signature
    from cutover.agent.package.writer import write_package_file as write_package_file

# Loaded on first use from the block above (agent/_util/lazy.py): importing one module
# of the package does not import its siblings.
__getattr__, __dir__ = _lazy_exports(__name__)
