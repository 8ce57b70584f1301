"""Announcements, version/replay checks and chunk assembly (agent/ota/announce.py,
agent/ota/install.py, agent/ota/transfer.py)."""

from __future__ import annotations

import hashlib
import json
import os
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("cryptography")

from agent.ota.announce import (
    Announcement,
    AnnouncementError,
    build_announcement,
    build_rollback,
    check_addressed,
    chunk_digests,
    chunk_topic,
    iter_chunks,
    parse_announcement,
    parse_chunk_topic,
    parse_rollback,
)
from agent.ota.install import UpdateRefused, check_announcement
from agent.ota.signing import (
    SignatureError,
    TrustedKeys,
    generate_key,
    load_private_key,
    sign_document,
)
from agent.ota.transfer import ChunkAssembler, TransferError

CHUNK = 1000


@pytest.fixture
def signer(tmp_path: Path) -> tuple[Any, TrustedKeys]:
    private = tmp_path / "keys" / "lab.key"
    _, public = generate_key(private)
    return load_private_key(private), TrustedKeys.load([str(public)])


@pytest.fixture
def archive(tmp_path: Path) -> Path:
    path = tmp_path / "archive.tar.gz"
    path.write_bytes(os.urandom(3 * CHUNK + 123))  # 4 chunks, the last one short
    return path


def _doc(archive: Path, **changes: Any) -> dict[str, Any]:
    data = archive.read_bytes()
    fields: dict[str, Any] = {
        "name": "tiny",
        "version": "1.2.0",
        "sha256": hashlib.sha256(data).hexdigest(),
        "size_bytes": len(data),
        "chunk_sha256": chunk_digests(archive, CHUNK),
        "chunk_bytes": CHUNK,
        "target": "device:pi-1",
    }
    fields.update(changes)
    return build_announcement(**fields)


def _ann(archive: Path, signer: tuple, **changes: Any) -> Announcement:
    return parse_announcement(sign_document(_doc(archive, **changes), signer[0]), signer[1])


def test_announcement_round_trip(archive: Path, signer: tuple) -> None:
    doc = sign_document(_doc(archive, force=True), signer[0])
    ann = parse_announcement(json.loads(json.dumps(doc)), signer[1])
    assert (ann.name, ann.version, ann.chunks, ann.force) == ("tiny", "1.2.0", 4, True)
    assert ann.key_id in signer[1].keys and not ann.via_url


def test_unsigned_or_forged_announcements_are_refused(archive: Path, signer: tuple) -> None:
    with pytest.raises(SignatureError, match="not signed"):
        parse_announcement(_doc(archive), signer[1])
    doc = sign_document(_doc(archive), signer[0])
    doc["bundle"]["sha256"] = "0" * 64  # point a valid announcement at other bytes
    with pytest.raises(SignatureError, match="does not match"):
        parse_announcement(doc, signer[1])


def test_announcement_by_an_untrusted_key_is_refused(
    tmp_path: Path, archive: Path, signer: tuple
) -> None:
    generate_key(tmp_path / "other.key")
    doc = sign_document(_doc(archive), load_private_key(tmp_path / "other.key"))
    with pytest.raises(SignatureError, match="does not trust"):
        parse_announcement(doc, signer[1])


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"chunk_sha256": ["0" * 64]}, "1 digests, but"),
        ({"version": "latest"}, "not a semantic version"),
        ({"url": "ftp://host/b.tgz"}, "only http"),
        ({"request_id": "a/b"}, "request_id: must match"),
    ],
)
def test_malformed_announcements_are_refused(
    archive: Path, signer: tuple, changes: dict, reason: str
) -> None:
    with pytest.raises(AnnouncementError, match=reason):
        _ann(archive, signer, **changes)


def test_unknown_announcement_keys_are_refused(archive: Path, signer: tuple) -> None:
    doc = sign_document({**_doc(archive), "script": "rm -rf /"}, signer[0])
    with pytest.raises(AnnouncementError, match="unknown keys"):
        parse_announcement(doc, signer[1])


def test_rollback_command_round_trip(signer: tuple) -> None:
    t = datetime(2026, 5, 1, tzinfo=UTC)
    doc = sign_document(build_rollback("group:north", issued_utc=t), signer[0])
    cmd = parse_rollback(doc, signer[1])
    assert (cmd.issued_utc, cmd.target) == (t, "group:north")
    with pytest.raises(SignatureError):
        parse_rollback({k: v for k, v in doc.items() if k != "signature"}, signer[1])


def test_the_target_is_signed(archive: Path, signer: tuple) -> None:
    doc = sign_document(_doc(archive), signer[0])
    assert _ann(archive, signer).target == "device:pi-1"
    doc["target"] = "all"  # a device's update turned into a fleet-wide one
    with pytest.raises(SignatureError, match="does not match"):
        parse_announcement(doc, signer[1])
    rollback = sign_document(build_rollback("device:pi-1"), signer[0])
    rollback["target"] = "group:north"
    with pytest.raises(SignatureError, match="does not match"):
        parse_rollback(rollback, signer[1])
    with pytest.raises(AnnouncementError, match="target: must be device:<id>, group:<name>"):
        _ann(archive, signer, target="everyone")


def test_commands_whose_signature_does_not_cover_the_target_are_refused(
    archive: Path, signer: tuple
) -> None:
    """The /2 schemas signed everything but the target: refused, no fallback."""
    old = {k: v for k, v in _doc(archive).items() if k != "target"}
    old["schema"] = "chorus.cmd.update/2"
    with pytest.raises(AnnouncementError, match="signature does not cover the target"):
        parse_announcement(sign_document(old, signer[0]), signer[1])
    rollback = {k: v for k, v in build_rollback("all").items() if k != "target"}
    rollback["schema"] = "chorus.cmd.rollback/2"
    with pytest.raises(AnnouncementError, match="signature does not cover the target"):
        parse_rollback(sign_document(rollback, signer[0]), signer[1])


@pytest.mark.parametrize(
    ("target", "topic", "reason"),
    [
        ("device:pi-1", "chorus/pi-1/cmd/update", None),
        ("group:north", "chorus/_group/north/cmd/update", None),
        ("all", "chorus/_all/cmd/update", None),
        ("device:pi-2", "chorus/_all/cmd/update", "signed for target device:pi-2, not for this"),
        ("group:south", "chorus/_group/south/cmd/update", "not in group south"),
        ("device:pi-1", "chorus/_all/cmd/update", "arrived on chorus/_all/cmd/update"),
        ("group:north", "chorus/_all/cmd/update", "re-published to another target"),
        ("all", "chorus/pi-1/cmd/update", "signed for target all (chorus/_all/cmd/update)"),
    ],
)
def test_a_device_takes_only_commands_addressed_to_it(
    target: str, topic: str, reason: str | None
) -> None:
    where = {"prefix": "chorus", "device_id": "pi-1", "groups": ["north"], "what": "command r"}
    if reason is None:
        check_addressed(target, topic, "update", **where)
    else:
        with pytest.raises(AnnouncementError, match=re.escape(reason)):
            check_addressed(target, topic, "update", **where)


def test_chunk_topics() -> None:
    topic = chunk_topic("chorus/_group/north/cmd/update", "r-1", 7)
    assert topic == "chorus/_group/north/cmd/update/r-1/7"
    assert parse_chunk_topic("chorus/_group/north/cmd/update", topic) == ("r-1", 7)
    assert parse_chunk_topic("chorus/_group/north/cmd/update", "chorus/x/cmd/update/r/1") is None


def _check(ann: Announcement, active: tuple[str, str] = ("tiny", "1.1.0"), **kw: Any) -> None:
    options = {
        "allow_downgrade": False,
        "refused_before": False,
        "max_bundle_bytes": 1 << 30,
        "max_chunk_bytes": 1 << 20,
    }
    options.update(kw)
    check_announcement(ann, active, **options)


def test_downgrades_are_refused_unless_forced(archive: Path, signer: tuple) -> None:
    _check(_ann(archive, signer))  # 1.2.0 over 1.1.0: fine
    older = _ann(archive, signer, version="1.0.9")
    with pytest.raises(UpdateRefused, match=r"downgrade refused.*older than the active"):
        _check(older)
    with pytest.raises(UpdateRefused, match="same version"):
        _check(_ann(archive, signer, version="1.1.0"))
    _check(_ann(archive, signer, version="1.0.9", force=True))
    _check(older, allow_downgrade=True)
    # Versions compare within a bundle name: another bundle is no downgrade.
    _check(_ann(archive, signer, name="chorus-edge", version="0.0.1"))


def test_limits_and_rolled_back_versions_are_refused(archive: Path, signer: tuple) -> None:
    ann = _ann(archive, signer)
    with pytest.raises(UpdateRefused, match="max_bundle_bytes"):
        _check(ann, max_bundle_bytes=100)
    with pytest.raises(UpdateRefused, match="max_chunk_bytes"):
        _check(ann, max_chunk_bytes=999)
    with pytest.raises(UpdateRefused, match="rolled back on this device"):
        _check(ann, refused_before=True)


def test_chunks_out_of_order_and_repeated_assemble(
    tmp_path: Path, archive: Path, signer: tuple
) -> None:
    ann = _ann(archive, signer)
    chunks = list(iter_chunks(archive, CHUNK))
    asm = ChunkAssembler(tmp_path / "job", ann)
    assert asm.add(3, chunks[3]) and asm.add(1, chunks[1])
    assert not asm.add(3, chunks[3])  # a repeat changes nothing
    assert asm.add(0, chunks[0]) and not asm.complete and asm.missing() == [2]
    assert asm.add(2, chunks[2]) and asm.complete
    assert asm.assemble().read_bytes() == archive.read_bytes()


def test_transfer_resumes_from_the_chunks_on_disk(
    tmp_path: Path, archive: Path, signer: tuple
) -> None:
    ann = _ann(archive, signer)
    chunks = list(iter_chunks(archive, CHUNK))
    first = ChunkAssembler(tmp_path / "job", ann)
    first.add(0, chunks[0])
    first.add(2, chunks[2])
    (tmp_path / "job" / "parts" / "1").write_bytes(b"half-written")  # power cut mid-chunk
    resumed = ChunkAssembler(tmp_path / "job", ann)  # a restarted agent
    assert resumed.received == 2 and resumed.missing() == [1, 3]


def test_truncated_chunk_is_refused(tmp_path: Path, archive: Path, signer: tuple) -> None:
    chunks = list(iter_chunks(archive, CHUNK))
    asm = ChunkAssembler(tmp_path / "job", _ann(archive, signer))
    with pytest.raises(TransferError, match="chunk 1 is 500 bytes, 1000 announced"):
        asm.add(1, chunks[1][:500])


def test_altered_or_conflicting_chunks_are_refused(
    tmp_path: Path, archive: Path, signer: tuple
) -> None:
    chunks = list(iter_chunks(archive, CHUNK))
    asm = ChunkAssembler(tmp_path / "job", _ann(archive, signer))
    altered = bytes([chunks[2][0] ^ 1]) + chunks[2][1:]
    with pytest.raises(TransferError, match="does not match its sha256"):
        asm.add(2, altered)
    asm.add(0, chunks[0])
    with pytest.raises(TransferError, match="different copy of a chunk already received"):
        asm.add(0, chunks[1])
    with pytest.raises(TransferError, match="out of range"):
        asm.add(4, chunks[0])


def test_truncated_stream_cannot_assemble(tmp_path: Path, archive: Path, signer: tuple) -> None:
    chunks = list(iter_chunks(archive, CHUNK))
    asm = ChunkAssembler(tmp_path / "job", _ann(archive, signer))
    for i in range(3):  # the last chunk never comes
        asm.add(i, chunks[i])
    with pytest.raises(TransferError, match=r"missing chunks \[3\]"):
        asm.assemble()
    assert not (tmp_path / "job" / "archive.tar.gz").exists()
