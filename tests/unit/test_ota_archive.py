"""The transfer archive: deterministic packing, a careful unpacker, and the checks between
"received" and "installed" (agent/ota/archive.py, agent/ota/install.py)."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import tarfile
from pathlib import Path

import pytest

pytest.importorskip("cryptography")

from test_ota_signing import fake_bundle

from agent.errors import BundleError
from agent.models.manifest import MANIFEST_NAME
from agent.ota.announce import build_announcement, parse_announcement
from agent.ota.archive import ArchiveError, pack_bundle, unpack_archive
from agent.ota.install import verify_archive
from agent.ota.signing import (
    SIGNATURE_NAME,
    SignatureError,
    TrustedKeys,
    generate_key,
    load_private_key,
    sign_bundle,
    sign_document,
)


@pytest.fixture
def signer(tmp_path: Path) -> tuple[object, TrustedKeys]:
    private = tmp_path / "keys" / "lab.key"
    _, public = generate_key(private)
    return load_private_key(private), TrustedKeys.load([str(public)])


def _signed(tmp_path: Path, signer: tuple, version: str = "1.0.0") -> Path:
    bundle = fake_bundle(tmp_path / f"bundle-{version}", version)
    sign_bundle(bundle, signer[0])
    return bundle


def _announce(archive: Path, signer: tuple, name: str = "tiny", version: str = "1.0.0"):
    data = archive.read_bytes()
    doc = build_announcement(
        name=name,
        version=version,
        sha256=hashlib.sha256(data).hexdigest(),
        size_bytes=len(data),
        chunk_sha256=[hashlib.sha256(data).hexdigest()],
        chunk_bytes=len(data),
        target="all",
    )
    return parse_announcement(sign_document(doc, signer[0]), signer[1])


def _tar(path: Path, members: list[tuple[tarfile.TarInfo, bytes | None]]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for info, data in members:
            if data is not None:
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return path


def _file(name: str, data: bytes = b"x") -> tuple[tarfile.TarInfo, bytes]:
    return tarfile.TarInfo(name), data


def test_packing_is_deterministic_and_round_trips(tmp_path: Path, signer: tuple) -> None:
    bundle = _signed(tmp_path, signer)
    sha_a, size_a = pack_bundle(bundle, tmp_path / "a.tar.gz")
    sha_b, size_b = pack_bundle(bundle, tmp_path / "b.tar.gz")
    assert (sha_a, size_a) == (sha_b, size_b)
    written = unpack_archive(tmp_path / "a.tar.gz", tmp_path / "out", max_bytes=1 << 20)
    assert sorted(written) == sorted([MANIFEST_NAME, SIGNATURE_NAME, "clf.tflite", "labels.csv"])
    for rel in written:
        assert (tmp_path / "out" / rel).read_bytes() == (bundle / rel).read_bytes()


def test_packing_refuses_an_unsigned_bundle(tmp_path: Path) -> None:
    bundle = fake_bundle(tmp_path / "b")
    with pytest.raises(ArchiveError, match="not signed"):
        pack_bundle(bundle, tmp_path / "a.tar.gz")


@pytest.mark.parametrize(
    ("members", "reason"),
    [
        ([_file("/etc/evil")], "absolute path"),
        ([_file("../evil")], "path traversal"),
        ([_file("golden/../../evil")], "path traversal"),
        ([_file("a\\b")], "invalid name"),
        ([_file("a"), _file("a")], "appears twice"),
    ],
    ids=["absolute", "dotdot", "nested-dotdot", "backslash", "duplicate"],
)
def test_unpack_refuses_bad_paths(
    tmp_path: Path, members: list[tuple[tarfile.TarInfo, bytes]], reason: str
) -> None:
    archive = _tar(tmp_path / "bad.tar.gz", members)
    with pytest.raises(ArchiveError, match=reason):
        unpack_archive(archive, tmp_path / "out", max_bytes=1 << 20)
    assert not (tmp_path / "evil").exists()
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").rglob("*"))


@pytest.mark.parametrize("kind", [tarfile.SYMTYPE, tarfile.LNKTYPE])
def test_unpack_refuses_links(tmp_path: Path, kind: bytes) -> None:
    link = tarfile.TarInfo("labels.csv")
    link.type, link.linkname = kind, "/etc/passwd"
    archive = _tar(tmp_path / "bad.tar.gz", [_file("manifest.json", b"{}"), (link, None)])
    with pytest.raises(ArchiveError, match="links are refused"):
        unpack_archive(archive, tmp_path / "out", max_bytes=1 << 20)


def test_unpack_refuses_devices_and_fifos(tmp_path: Path) -> None:
    fifo = tarfile.TarInfo("pipe")
    fifo.type = tarfile.FIFOTYPE
    archive = _tar(tmp_path / "bad.tar.gz", [(fifo, None)])
    with pytest.raises(ArchiveError, match="not a regular file"):
        unpack_archive(archive, tmp_path / "out", max_bytes=1 << 20)


def test_unpack_refuses_too_much_content(tmp_path: Path) -> None:
    archive = _tar(tmp_path / "big.tar.gz", [_file("a", bytes(4096)), _file("b", bytes(4096))])
    with pytest.raises(ArchiveError, match="exceeds 6000 bytes"):
        unpack_archive(archive, tmp_path / "out", max_bytes=6000)


def test_unpack_refuses_garbage(tmp_path: Path) -> None:
    junk = tmp_path / "junk.tar.gz"
    junk.write_bytes(b"not an archive at all")
    with pytest.raises(ArchiveError, match="not a gzip tar archive"):
        unpack_archive(junk, tmp_path / "out", max_bytes=1 << 20)


def test_verify_archive_accepts_a_signed_bundle(tmp_path: Path, signer: tuple) -> None:
    bundle = _signed(tmp_path, signer)
    pack_bundle(bundle, tmp_path / "a.tar.gz")
    unpacked, loaded = verify_archive(
        tmp_path / "a.tar.gz", tmp_path / "job", _announce(tmp_path / "a.tar.gz", signer), signer[1]
    )
    assert loaded.manifest.version == "1.0.0" and (unpacked / "clf.tflite").is_file()


def test_verify_archive_refuses_an_unlisted_file(tmp_path: Path, signer: tuple) -> None:
    bundle = _signed(tmp_path, signer)
    members = [_file(p.name, p.read_bytes()) for p in sorted(bundle.iterdir())]
    archive = _tar(tmp_path / "a.tar.gz", [*members, _file("extra.py", b"import os")])
    with pytest.raises(ArchiveError, match=r"does not list: extra\.py"):
        verify_archive(archive, tmp_path / "job", _announce(archive, signer), signer[1])


def test_verify_archive_refuses_an_unsigned_bundle(tmp_path: Path, signer: tuple) -> None:
    bundle = fake_bundle(tmp_path / "b")
    archive = _tar(tmp_path / "a.tar.gz", [_file(p.name, p.read_bytes()) for p in bundle.iterdir()])
    with pytest.raises(SignatureError, match="not signed"):
        verify_archive(archive, tmp_path / "job", _announce(archive, signer), signer[1])


def test_verify_archive_refuses_a_signed_manifest_with_path_traversal(
    tmp_path: Path, signer: tuple
) -> None:
    """A manifest naming ``../evil`` is refused even when it carries a valid signature."""
    bundle = _signed(tmp_path, signer)
    manifest = json.loads((bundle / MANIFEST_NAME).read_text())
    entry = manifest["files"]["labels.csv"]
    manifest["files"]["../../home/pi/.bashrc"] = entry
    manifest_bytes = json.dumps(manifest).encode()
    signature = json.loads((bundle / SIGNATURE_NAME).read_text())
    signature["signature"] = base64.b64encode(signer[0].sign(manifest_bytes)).decode()
    members = [
        _file(MANIFEST_NAME, manifest_bytes),
        _file(SIGNATURE_NAME, json.dumps(signature).encode()),
        _file("clf.tflite", (bundle / "clf.tflite").read_bytes()),
        _file("labels.csv", (bundle / "labels.csv").read_bytes()),
    ]
    archive = _tar(tmp_path / "a.tar.gz", members)
    with pytest.raises(BundleError, match="paths must be relative and stay inside the bundle"):
        verify_archive(archive, tmp_path / "job", _announce(archive, signer), signer[1])
    assert not (tmp_path / "home").exists()


def test_verify_archive_refuses_a_bundle_other_than_announced(
    tmp_path: Path, signer: tuple
) -> None:
    bundle = _signed(tmp_path, signer, "1.0.0")
    pack_bundle(bundle, tmp_path / "a.tar.gz")
    ann = _announce(tmp_path / "a.tar.gz", signer, version="2.0.0")
    with pytest.raises(ArchiveError, match=r"the announcement says tiny 2\.0\.0"):
        verify_archive(tmp_path / "a.tar.gz", tmp_path / "job", ann, signer[1])
