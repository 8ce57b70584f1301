"""Ed25519 keys, bundle signatures and signed documents (agent/ota/signing.py)."""

from __future__ import annotations

import json
import stat
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("cryptography")

from agent.credentials import CredentialError
from agent.errors import BundleError
from agent.models.manifest import load_bundle, write_manifest
from agent.ota.signing import (
    SIGNATURE_NAME,
    SignatureError,
    SigningKeyError,
    TrustedKeys,
    generate_key,
    inline_public_key,
    load_private_key,
    load_public_key,
    sign_bundle,
    sign_document,
    verify_bundle_signature,
    verify_document,
)


def fake_bundle(root: Path, version: str = "1.0.0", **changes: Any) -> Path:
    """A valid bundle whose "models" are placeholder bytes: enough for everything that does
    not run an interpreter (manifest, hashes, signatures, archives, the store)."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "clf.tflite").write_bytes(b"TFL3" + bytes(range(256)) * 4)
    (root / "labels.csv").write_text("species_code,scientific_name,common_name\nsp0,Avis,Bird\n")
    fields: dict[str, Any] = {
        "name": "tiny",
        "version": version,
        "sample_rate_hz": 8000,
        "window_samples": 8,
        "separator": None,
        "classifiers": [
            {"name": "tiny", "members": [{"file": "clf.tflite"}], "labels": "labels.csv"}
        ],
    }
    fields.update(changes)
    write_manifest(root, fields)
    return root


@pytest.fixture
def key(tmp_path: Path) -> tuple[Path, TrustedKeys]:
    private = tmp_path / "keys" / "lab.key"
    _, public = generate_key(private)
    return private, TrustedKeys.load([str(public)])


def test_generated_private_key_is_private_and_never_overwritten(tmp_path: Path) -> None:
    private = tmp_path / "lab.key"
    kid, public = generate_key(private)
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    assert public == tmp_path / "lab.pub" and len(kid) == 16
    with pytest.raises(SigningKeyError, match="refusing to overwrite"):
        generate_key(private)
    # The inline form a config can hold names the same key.
    inline = inline_public_key(load_public_key(str(public)))
    assert TrustedKeys.load([inline]).keys.keys() == TrustedKeys.load([str(public)]).keys.keys()


def test_world_readable_private_key_is_refused(tmp_path: Path) -> None:
    private = tmp_path / "lab.key"
    generate_key(private)
    private.chmod(0o644)
    with pytest.raises(CredentialError, match="readable by every user"):
        load_private_key(private)


def test_bad_public_keys_are_refused(tmp_path: Path) -> None:
    with pytest.raises(SigningKeyError, match="not found"):
        load_public_key(str(tmp_path / "missing.pub"))
    with pytest.raises(SigningKeyError, match="inline Ed25519"):
        load_public_key("ed25519:not-base64!")


def test_signed_bundle_verifies(tmp_path: Path, key: tuple[Path, TrustedKeys]) -> None:
    private, trusted = key
    bundle = fake_bundle(tmp_path / "b")
    sign_bundle(bundle, load_private_key(private))
    assert verify_bundle_signature(bundle, trusted) in trusted.keys
    # The signature file is not part of the manifest, and the bundle still loads.
    assert SIGNATURE_NAME not in load_bundle(bundle).manifest.files


def test_unsigned_bundle_is_refused(tmp_path: Path, key: tuple[Path, TrustedKeys]) -> None:
    bundle = fake_bundle(tmp_path / "b")
    with pytest.raises(SignatureError, match="not signed"):
        verify_bundle_signature(bundle, key[1])


def test_signature_by_an_untrusted_key_is_refused(
    tmp_path: Path, key: tuple[Path, TrustedKeys]
) -> None:
    other = tmp_path / "other.key"
    generate_key(other)
    bundle = fake_bundle(tmp_path / "b")
    sign_bundle(bundle, load_private_key(other))
    with pytest.raises(SignatureError, match="does not trust"):
        verify_bundle_signature(bundle, key[1])


def test_file_altered_after_signing_is_refused(
    tmp_path: Path, key: tuple[Path, TrustedKeys]
) -> None:
    private, trusted = key
    bundle = fake_bundle(tmp_path / "b")
    sign_bundle(bundle, load_private_key(private))
    data = bytearray((bundle / "clf.tflite").read_bytes())
    data[10] ^= 0xFF
    (bundle / "clf.tflite").write_bytes(bytes(data))
    verify_bundle_signature(bundle, trusted)  # the manifest is intact...
    with pytest.raises(BundleError, match="does not match its sha256"):
        load_bundle(bundle)  # ...and it no longer matches the file


def test_manifest_altered_after_signing_is_refused(
    tmp_path: Path, key: tuple[Path, TrustedKeys]
) -> None:
    private, trusted = key
    bundle = fake_bundle(tmp_path / "b")
    sign_bundle(bundle, load_private_key(private))
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["version"] = "9.9.9"
    (bundle / "manifest.json").write_text(json.dumps(manifest, indent=2))
    with pytest.raises(SignatureError, match="does not match"):
        verify_bundle_signature(bundle, trusted)


def test_sign_refuses_a_manifest_that_lists_an_old_signature(
    tmp_path: Path, key: tuple[Path, TrustedKeys]
) -> None:
    bundle = tmp_path / "b"
    bundle.mkdir()
    (bundle / SIGNATURE_NAME).write_text("{}")
    fake_bundle(bundle)  # write_manifest lists the stray signature.json
    with pytest.raises(SignatureError, match=r"lists signature\.json"):
        sign_bundle(bundle, load_private_key(key[0]))


def test_signed_document_round_trip_and_tampering(
    tmp_path: Path, key: tuple[Path, TrustedKeys]
) -> None:
    private, trusted = key
    doc = sign_document({"request_id": "r1", "force": False}, load_private_key(private))
    assert verify_document(json.loads(json.dumps(doc)), trusted, "doc") in trusted.keys
    forged = {**doc, "force": True}  # e.g. turning a replay into a forced downgrade
    with pytest.raises(SignatureError, match="does not match"):
        verify_document(forged, trusted, "doc")
    unsigned = {k: v for k, v in doc.items() if k != "signature"}
    with pytest.raises(SignatureError, match="not signed"):
        verify_document(unsigned, trusted, "doc")
