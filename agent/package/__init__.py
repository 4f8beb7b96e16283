"""The package format: manifest models, signatures, the container, the one tar codec and the
writer. One owner for each format: builders and inspectors call these, never re-implement them."""

from __future__ import annotations

import typing

from cutover.agent._util.lazy import lazy_exports as _lazy_exports

if typing.TYPE_CHECKING:
    from cutover.agent.package.container import (
        PAYLOAD_NAMES,
        PackageParts,
        hash_payload,
        open_package,
        read_package,
        write_package,
    )
    from cutover.agent.package.manifest import (
        APP_RE,
        FORMAT_VERSION,
        MAX_MANIFEST_BYTES,
        CommandCheck,
        DirEntry,
        FileEntry,
        HealthPhase,
        HealthSpec,
        Hook,
        Hooks,
        HttpCheck,
        LogCheck,
        Manifest,
        Payload,
        ReleaseType,
        SharedPaths,
        SymlinkEntry,
        TcpCheck,
        VersionProbe,
        check_relpath,
        parse_manifest,
        render_manifest,
    )
    from cutover.agent.package.signatures import (
        SignatureEntry,
        parse_signatures,
        render_signatures,
    )
    from cutover.agent.package.writer import PayloadWriter, add_signature, write_package_file

# Loaded on first use (agent/_util/lazy.py): importing one module of the package
# does not import its siblings.
_EXPORTS = {
    "cutover.agent.package.container": (
        "PAYLOAD_NAMES",
        "PackageParts",
        "hash_payload",
        "open_package",
        "read_package",
        "write_package",
    ),
    "cutover.agent.package.manifest": (
        "APP_RE",
        "FORMAT_VERSION",
        "MAX_MANIFEST_BYTES",
        "CommandCheck",
        "DirEntry",
        "FileEntry",
        "HealthPhase",
        "HealthSpec",
        "Hook",
        "Hooks",
        "HttpCheck",
        "LogCheck",
        "Manifest",
        "Payload",
        "ReleaseType",
        "SharedPaths",
        "SymlinkEntry",
        "TcpCheck",
        "VersionProbe",
        "check_relpath",
        "parse_manifest",
        "render_manifest",
    ),
    "cutover.agent.package.signatures": (
        "SignatureEntry",
        "parse_signatures",
        "render_signatures",
    ),
    "cutover.agent.package.writer": (
        "PayloadWriter",
        "add_signature",
        "write_package_file",
    ),
}
__getattr__, __dir__ = _lazy_exports(__name__, _EXPORTS)

__all__ = [
    "APP_RE",
    "FORMAT_VERSION",
    "MAX_MANIFEST_BYTES",
    "PAYLOAD_NAMES",
    "CommandCheck",
    "DirEntry",
    "FileEntry",
    "HealthPhase",
    "HealthSpec",
    "Hook",
    "Hooks",
    "HttpCheck",
    "LogCheck",
    "Manifest",
    "PackageParts",
    "Payload",
    "PayloadWriter",
    "ReleaseType",
    "SharedPaths",
    "SignatureEntry",
    "SymlinkEntry",
    "TcpCheck",
    "VersionProbe",
    "add_signature",
    "check_relpath",
    "hash_payload",
    "open_package",
    "parse_manifest",
    "parse_signatures",
    "read_package",
    "render_manifest",
    "render_signatures",
    "write_package",
    "write_package_file",
]
