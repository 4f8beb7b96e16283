"""Ed25519 key files: generation, loading and key ids.

Formats (docs/package-format.md): private keys are PEM PKCS#8 written with mode 0600; public keys are PEM
SubjectPublicKeyInfo. ``keyid`` is the lowercase hex SHA-256 of the raw 32-byte public key, so any
tool can derive it (``openssl pkey -pubin -outform DER | tail -c 32 | sha256sum``).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from cutover.agent.errors import KeyFileError

__all__ = [
    "PrivateKey",
    "PublicKey",
    "generate_keypair",
    "keyid_of",
    "load_private_key",
    "load_public_key",
]

_MAX_KEY_FILE_BYTES = 16 * 1024


def keyid_of(public: Ed25519PublicKey) -> str:
    """Lowercase hex SHA-256 of the raw 32-byte public key."""
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()


@dataclass(frozen=True)
class PublicKey:
    """A trusted Ed25519 public key with its id and where it came from."""

    keyid: str
    key: Ed25519PublicKey
    source: str = ""

    def verify(self, signature: bytes, data: bytes) -> bool:
        """Return True iff ``signature`` is a valid Ed25519 signature of ``data``."""
        try:
            self.key.verify(signature, data)
        except InvalidSignature:
            return False
        return True

    @classmethod
    def from_pem(cls, pem: bytes, source: str = "") -> PublicKey:
        try:
            key = serialization.load_pem_public_key(pem)
        except (ValueError, TypeError) as exc:
            raise KeyFileError(
                f"{source or 'public key'}: not a PEM SubjectPublicKeyInfo public key ({exc})"
            ) from exc
        if not isinstance(key, Ed25519PublicKey):
            raise KeyFileError(
                f"{source or 'public key'}: not an Ed25519 key; Cutover uses Ed25519"
            )
        return cls(keyid=keyid_of(key), key=key, source=source)

    def to_pem(self) -> bytes:
        return self.key.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )


@dataclass(frozen=True)
class PrivateKey:
    """An Ed25519 signing key."""

    keyid: str
    key: Ed25519PrivateKey

    def sign(self, data: bytes) -> bytes:
        return self.key.sign(data)

    @property
    def public(self) -> PublicKey:
        return PublicKey(keyid=self.keyid, key=self.key.public_key())


def _read_small(path: Path, what: str) -> bytes:
    try:
        with path.open("rb") as fh:
            data = fh.read(_MAX_KEY_FILE_BYTES + 1)
    except OSError as exc:
        raise KeyFileError(f"cannot read {what} {path}: {exc.strerror}") from exc
    if len(data) > _MAX_KEY_FILE_BYTES:
        raise KeyFileError(f"{what} {path} is larger than {_MAX_KEY_FILE_BYTES} bytes: not a key")
    return data


def load_public_key(path: str | os.PathLike[str]) -> PublicKey:
    """Load a PEM public key file.

    Raises:
        KeyFileError: unreadable, not PEM, or not Ed25519.
    """
    p = Path(path)
    return PublicKey.from_pem(_read_small(p, "public key"), source=str(p))


def load_private_key(path: str | os.PathLike[str]) -> PrivateKey:
    """Load a PEM PKCS#8 Ed25519 private key (unencrypted).

    Raises:
        KeyFileError: unreadable, not PEM PKCS#8, or not Ed25519.
    """
    p = Path(path)
    data = _read_small(p, "private key")
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise KeyFileError(
            f"{p}: not an unencrypted PEM PKCS#8 private key ({exc}); "
            "create one with `cutover keygen PATH`"
        ) from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyFileError(f"{p}: not an Ed25519 private key; Cutover uses Ed25519")
    return PrivateKey(keyid=keyid_of(key.public_key()), key=key)


def generate_keypair(path: str | os.PathLike[str]) -> PrivateKey:
    """Write a new key pair: ``path`` (private, 0600) and ``path.pub`` (public).

    Refuses to overwrite either file.

    Raises:
        KeyFileError: a file exists already or cannot be written.
    """
    priv_path = Path(path)
    pub_path = Path(f"{priv_path}.pub")
    for p in (priv_path, pub_path):
        if p.exists() or p.is_symlink():
            raise KeyFileError(
                f"{p} exists already; refusing to overwrite a key (choose another path)"
            )
    key = Ed25519PrivateKey.generate()
    priv_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    pub_pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    written: list[Path] = []
    try:
        for p, data, mode in ((priv_path, priv_pem, 0o600), (pub_path, pub_pem, 0o644)):
            fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
            written.append(p)
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            p.chmod(mode)  # umask may have narrowed the public key; the private stays 0600
    except OSError as exc:
        for p in written:
            p.unlink(missing_ok=True)
        raise KeyFileError(f"cannot write key {exc.filename}: {exc.strerror}") from exc
    return PrivateKey(keyid=keyid_of(key.public_key()), key=key)
