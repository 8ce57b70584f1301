"""Ed25519 signatures (the ``cryptography`` package) for bundles and update commands.

Keys: the private key is a PEM (PKCS #8) file that only the researcher holds, refused when other
users may read it; devices hold public keys only (``updates.trusted_keys``): a PEM public key
file, or ``ed25519:<base64 of the 32 raw bytes>`` written inline. A key is named by its *key
id*, the first 16 hex digits of the sha256 of its raw public bytes.

Bundles: ``signature.json`` next to ``manifest.json`` holds the key id and the Ed25519 signature
of the exact ``manifest.json`` bytes; the manifest holds the sha256 and size of every other file,
so the signature covers the whole bundle. ``signature.json`` itself is not listed in the
manifest (it cannot hash itself).

Documents (announcements, rollback commands): a JSON object whose ``signature`` member holds the
key id and the signature of the *canonical* JSON of every other member (sorted keys, no spaces,
ASCII), so re-serialising the object does not break it.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from agent.credentials import check_private_file
from agent.errors import BundleError, ChorusError
from agent.models.manifest import MANIFEST_NAME

SIGNATURE_NAME = "signature.json"
SIGNATURE_SCHEMA = "chorus.bundle-signature/1"
ALGORITHM = "ed25519"
_INLINE_PREFIX = "ed25519:"


class SignatureError(BundleError):
    """Unsigned, signed by an untrusted key, or the signature does not match."""


class SigningKeyError(ChorusError):
    """A key file is missing, unreadable or not an Ed25519 key."""

    exit_code = 2


def raw_public_bytes(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def key_id(key: Ed25519PublicKey) -> str:
    """First 16 hex digits of sha256(raw public key): short, stable, printable."""
    return hashlib.sha256(raw_public_bytes(key)).hexdigest()[:16]


def inline_public_key(key: Ed25519PublicKey) -> str:
    """``ed25519:<base64>``: the form a config file can hold inline."""
    return _INLINE_PREFIX + base64.b64encode(raw_public_bytes(key)).decode("ascii")


def generate_key(private_path: Path, public_path: Path | None = None) -> tuple[str, Path]:
    """Write a new private key (mode 0600, never overwritten) and its public key (PEM).

    ``public_path`` defaults to ``private_path`` with suffix ``.pub``. Returns (key id, public
    key path).
    """
    public_path = public_path or private_path.with_suffix(".pub")
    for p in (private_path, public_path):
        if p.exists():
            raise SigningKeyError(f"{p} exists; refusing to overwrite a key")
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    private_path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    public = key.public_key()
    public_path.write_bytes(
        public.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return key_id(public), public_path


def load_private_key(path: Path) -> Ed25519PrivateKey:
    """The Ed25519 private key in ``path``; refused if other users may read the file."""
    check_private_file(path, "signing key")
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise SigningKeyError(
            f"{path}: not a readable unencrypted PEM private key: {exc}"
        ) from None
    if not isinstance(key, Ed25519PrivateKey):
        raise SigningKeyError(f"{path}: not an Ed25519 key ({type(key).__name__})")
    return key


def load_public_key(spec: str) -> Ed25519PublicKey:
    """A public key from ``ed25519:<base64>`` or from a PEM file path."""
    if spec.startswith(_INLINE_PREFIX):
        try:
            raw = base64.b64decode(spec[len(_INLINE_PREFIX) :], validate=True)
            return Ed25519PublicKey.from_public_bytes(raw)
        except (binascii.Error, ValueError) as exc:
            raise SigningKeyError(f"{spec!r}: not an inline Ed25519 public key: {exc}") from None
    path = Path(spec)
    try:
        key = serialization.load_pem_public_key(path.read_bytes())
    except FileNotFoundError:
        raise SigningKeyError(f"public key file not found: {path}") from None
    except (OSError, ValueError) as exc:
        raise SigningKeyError(f"{path}: not a PEM public key: {exc}") from None
    if not isinstance(key, Ed25519PublicKey):
        raise SigningKeyError(f"{path}: not an Ed25519 public key ({type(key).__name__})")
    return key


@dataclass(frozen=True)
class TrustedKeys:
    """The public keys a device accepts signatures from, by key id."""

    keys: Mapping[str, Ed25519PublicKey]

    @classmethod
    def load(cls, specs: Iterable[str]) -> TrustedKeys:
        keys = {}
        for spec in specs:
            key = load_public_key(spec)
            keys[key_id(key)] = key
        return cls(keys)

    def verify(self, kid: str, signature_b64: str, data: bytes, what: str) -> str:
        """Check ``signature_b64`` over ``data`` with trusted key ``kid``; return ``kid``."""
        key = self.keys.get(kid)
        if key is None:
            raise SignatureError(f"{what} is signed by key {kid}, which this device does not trust")
        try:
            signature = base64.b64decode(signature_b64, validate=True)
            key.verify(signature, data)
        except (binascii.Error, ValueError, InvalidSignature):
            raise SignatureError(
                f"{what}: the signature does not match (altered after signing?)"
            ) from None
        return kid


# ---------------------------------------------------------------------------------------------
# Bundles


def sign_bundle(bundle_dir: Path, private_key: Ed25519PrivateKey) -> Path:
    """Sign ``bundle_dir/manifest.json`` and write ``signature.json``; returns its path.

    The bundle is checked first (every listed file's sha256 and size), so a signature is never
    put on a bundle that is already inconsistent.
    """
    from agent.models.manifest import load_bundle

    bundle = load_bundle(bundle_dir)
    if SIGNATURE_NAME in bundle.manifest.files:
        raise SignatureError(
            f"{bundle_dir}: the manifest lists {SIGNATURE_NAME} (it was written while an old "
            f"signature was there); delete {SIGNATURE_NAME}, rewrite the manifest, then sign"
        )
    manifest_bytes = (bundle_dir / MANIFEST_NAME).read_bytes()
    public = private_key.public_key()
    doc = {
        "schema": SIGNATURE_SCHEMA,
        "algorithm": ALGORITHM,
        "key_id": key_id(public),
        "manifest_sha256": hashlib.sha256(manifest_bytes).hexdigest(),
        "signature": base64.b64encode(private_key.sign(manifest_bytes)).decode("ascii"),
    }
    out = bundle_dir / SIGNATURE_NAME
    out.write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
    return out


def read_bundle_signature(bundle_dir: Path) -> dict[str, Any]:
    path = bundle_dir / SIGNATURE_NAME
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SignatureError(f"{bundle_dir}: bundle is not signed (no {SIGNATURE_NAME})") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SignatureError(f"{path}: not valid JSON: {exc}") from None
    if not isinstance(doc, dict) or doc.get("schema") != SIGNATURE_SCHEMA:
        raise SignatureError(f"{path}: not a {SIGNATURE_SCHEMA} document")
    if doc.get("algorithm") != ALGORITHM:
        raise SignatureError(f"{path}: unsupported algorithm {doc.get('algorithm')!r}")
    for field in ("key_id", "signature"):
        if not isinstance(doc.get(field), str):
            raise SignatureError(f"{path}: {field} missing")
    return doc


def verify_bundle_signature(bundle_dir: Path, trusted: TrustedKeys) -> str:
    """Check ``signature.json`` against the exact manifest bytes; return the signing key id.

    Only the signature: the caller then checks the files against the manifest
    (:func:`agent.models.manifest.load_bundle`).
    """
    doc = read_bundle_signature(bundle_dir)
    manifest_bytes = (bundle_dir / MANIFEST_NAME).read_bytes()
    return trusted.verify(
        doc["key_id"], doc["signature"], manifest_bytes, f"{bundle_dir.name}/{MANIFEST_NAME}"
    )


# ---------------------------------------------------------------------------------------------
# Signed JSON documents


def canonical_json(doc: Mapping[str, Any]) -> bytes:
    """The bytes a document signature covers: sorted keys, no whitespace, ASCII only."""
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def sign_document(doc: Mapping[str, Any], private_key: Ed25519PrivateKey) -> dict[str, Any]:
    """``doc`` plus a ``signature`` member over the canonical JSON of everything else."""
    body = {k: v for k, v in doc.items() if k != "signature"}
    signature = private_key.sign(canonical_json(body))
    return {
        **body,
        "signature": {
            "key_id": key_id(private_key.public_key()),
            "ed25519": base64.b64encode(signature).decode("ascii"),
        },
    }


def verify_document(doc: Mapping[str, Any], trusted: TrustedKeys, what: str) -> str:
    """Check a signed document; return the key id. Unsigned documents are refused."""
    sig = doc.get("signature")
    if not isinstance(sig, dict) or not isinstance(sig.get("key_id"), str):
        raise SignatureError(f"{what} is not signed")
    if not isinstance(sig.get("ed25519"), str):
        raise SignatureError(f"{what}: signature.ed25519 missing")
    body = {k: v for k, v in doc.items() if k != "signature"}
    return trusted.verify(sig["key_id"], sig["ed25519"], canonical_json(body), what)
