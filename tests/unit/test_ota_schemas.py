"""The OTA command schemas (agent/schemas/command-update.schema.json, command-rollback.schema.json)
describe exactly what chorus-models publishes and what a device accepts: ``chorus.cmd.update/3``
and ``chorus.cmd.rollback/3`` with a signed target. Nothing on the device validates against
them (it parses with agent/ota/announce.py); these tests keep the two in step."""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("cryptography")
pytest.importorskip("jsonschema")
pytest.importorskip("paho.mqtt")

from test_ota_signing import fake_bundle

from agent.ota.announce import (
    ROLLBACK_SCHEMA,
    UPDATE_SCHEMA,
    AnnouncementError,
    build_rollback,
    parse_announcement,
    parse_rollback,
)
from agent.ota.signing import (
    SignatureError,
    TrustedKeys,
    generate_key,
    load_private_key,
    sign_bundle,
    sign_document,
)
from agent.schemas import load_schema, parse_message, validator
from modeltools.ota.publish import prepare_update

TARGETS = ["device:field-01", "group:north", "all"]
Change = Callable[[dict[str, Any]], Any]


@pytest.fixture
def key(tmp_path: Path) -> tuple[Path, TrustedKeys]:
    private = tmp_path / "keys" / "lab.key"
    _, public = generate_key(private)
    return private, TrustedKeys.load([str(public)])


@pytest.fixture
def bundle(tmp_path: Path, key: tuple[Path, TrustedKeys]) -> Path:
    root = fake_bundle(tmp_path / "bundle", "1.3.0-rc.1+build.7")
    sign_bundle(root, load_private_key(key[0]))
    return root


def errors(kind: str, doc: Any) -> list[str]:
    return [e.message for e in validator(kind).iter_errors(doc)]


def wire(doc: dict[str, Any]) -> Any:
    """The message as a subscriber decodes it (I-JSON)."""
    return parse_message(json.dumps(doc).encode())


def announcement(bundle: Path, key: Path, tmp_path: Path, **kw: Any) -> dict[str, Any]:
    """What ``chorus-models publish`` publishes on the update topic."""
    options: dict[str, Any] = {"chunk_bytes": 256, "target": "device:field-01"}
    options.update(kw)
    return prepare_update(bundle, key, tmp_path / "out" / "bundle.tar.gz", **options)


def rollback(key: Path, target: str = "group:north") -> dict[str, Any]:
    """What ``chorus-models rollback`` publishes (modeltools.ota.publish.publish_rollback)."""
    return sign_document(build_rollback(target), load_private_key(key))


def resigned(doc: dict[str, Any], key: Path, change: Change) -> dict[str, Any]:
    """``doc`` changed by ``change`` and signed again: only the format is wrong."""
    body = copy.deepcopy({k: v for k, v in doc.items() if k != "signature"})
    change(body)
    return sign_document(body, load_private_key(key))


def test_the_schemas_name_the_versions_the_code_uses() -> None:
    assert load_schema("command-update")["properties"]["schema"]["const"] == UPDATE_SCHEMA
    assert load_schema("command-rollback")["properties"]["schema"]["const"] == ROLLBACK_SCHEMA
    assert UPDATE_SCHEMA == "chorus.cmd.update/3" and ROLLBACK_SCHEMA == "chorus.cmd.rollback/3"


@pytest.mark.parametrize("target", TARGETS)
def test_published_mqtt_announcement_matches_its_schema(
    tmp_path: Path, bundle: Path, key: tuple[Path, TrustedKeys], target: str
) -> None:
    doc = wire(announcement(bundle, key[0], tmp_path, target=target))
    assert errors("command-update", doc) == []
    ann = parse_announcement(doc, key[1])  # and the device takes it
    assert (ann.target, ann.version, ann.via_url) == (target, "1.3.0-rc.1+build.7", False)
    assert ann.chunks == math.ceil(ann.size_bytes / 256) > 1
    assert set(doc) == set(load_schema("command-update")["required"])  # every key is required


def test_published_url_announcement_matches_its_schema(
    tmp_path: Path, bundle: Path, key: tuple[Path, TrustedKeys]
) -> None:
    url = "https://models.example.org/chorus/bundle.tar.gz"
    doc = wire(announcement(bundle, key[0], tmp_path, url=url, force=True, target="all"))
    assert doc["transfer"] == {"kind": "url", "url": url}
    assert errors("command-update", doc) == []
    ann = parse_announcement(doc, key[1])
    assert (ann.url, ann.force) == (url, True)


@pytest.mark.parametrize("target", TARGETS)
def test_published_rollback_command_matches_its_schema(
    key: tuple[Path, TrustedKeys], target: str
) -> None:
    doc = wire(rollback(key[0], target))
    assert errors("command-rollback", doc) == []
    assert parse_rollback(doc, key[1]).target == target
    assert set(doc) == set(load_schema("command-rollback")["required"])


def _untargeted(doc: dict[str, Any], schema: str) -> None:
    """The /2 form: the same command without the signed target."""
    doc.pop("target")
    doc["schema"] = schema


def test_old_commands_and_commands_without_a_target_fail_the_schemas(
    tmp_path: Path, bundle: Path, key: tuple[Path, TrustedKeys]
) -> None:
    update = announcement(bundle, key[0], tmp_path)
    old = resigned(update, key[0], lambda d: _untargeted(d, "chorus.cmd.update/2"))
    found = errors("command-update", old)
    assert any("was expected" in e for e in found), found  # the schema const
    assert any("'target' is a required property" in e for e in found), found
    with pytest.raises(AnnouncementError, match="signature does not cover the target"):
        parse_announcement(old, key[1])  # the device refuses it too

    untargeted = resigned(update, key[0], lambda d: d.pop("target"))
    assert errors("command-update", untargeted) == ["'target' is a required property"]
    with pytest.raises(AnnouncementError, match="target: missing"):
        parse_announcement(untargeted, key[1])

    back = rollback(key[0])
    old_back = resigned(back, key[0], lambda d: _untargeted(d, "chorus.cmd.rollback/2"))
    found = errors("command-rollback", old_back)
    assert any("was expected" in e for e in found), found
    assert any("'target' is a required property" in e for e in found), found
    with pytest.raises(AnnouncementError, match="signature does not cover the target"):
        parse_rollback(old_back, key[1])

    untargeted_back = resigned(back, key[0], lambda d: d.pop("target"))
    assert errors("command-rollback", untargeted_back) == ["'target' is a required property"]
    with pytest.raises(AnnouncementError, match="target: missing"):
        parse_rollback(untargeted_back, key[1])

    # The /1 format of the old schema files: unsigned, URL in the bundle, no transfer.
    v1 = {
        "schema": "chorus.cmd.update/1",
        "request_id": "r-1",
        "bundle": {
            "name": "chorus-birds",
            "version": "2.0.0",
            "url": "https://example.org/b.tar",
            "sha256": "0" * 64,
            "size_bytes": 1000,
        },
    }
    assert len(errors("command-update", v1)) >= 5  # schema, url, target, transfer, signature
    assert errors("command-rollback", {"schema": "chorus.cmd.rollback/1", "request_id": "r"})


# Format mistakes the device refuses as well (parse_announcement, after signing them properly).
UPDATE_REFUSED: list[tuple[str, Change, str]] = [
    ("extra key", lambda d: d.update(script="rm -rf /"), "Additional properties"),
    ("bundle.url (/1)", lambda d: d["bundle"].update(url="https://x/b"), "Additional properties"),
    ("target", lambda d: d.update(target="everyone"), "does not match"),
    ("target trailing nl", lambda d: d.update(target="all\n"), "should not be valid"),
    ("group target", lambda d: d.update(target="group:"), "does not match"),
    ("force", lambda d: d.update(force="yes"), "is not of type 'boolean'"),
    ("force missing", lambda d: d.pop("force"), "'force' is a required property"),
    ("issued missing", lambda d: d.pop("issued_utc"), "'issued_utc' is a required property"),
    ("issued", lambda d: d.update(issued_utc="yesterday"), "is not a 'date-time'"),
    ("request_id", lambda d: d.update(request_id="a/b"), "does not match"),
    ("request_id trailing nl", lambda d: d.update(request_id="r-1\n"), "should not be valid"),
    ("version", lambda d: d["bundle"].update(version="latest"), "does not match"),
    ("sha256", lambda d: d["bundle"].update(sha256="AB" * 32), "does not match"),
    ("size 0", lambda d: d["bundle"].update(size_bytes=0), "less than the minimum"),
    ("size float", lambda d: d["bundle"].update(size_bytes=1.5), "is not of type 'integer'"),
    ("size bool", lambda d: d["bundle"].update(size_bytes=True), "is not of type 'integer'"),
    ("name missing", lambda d: d["bundle"].pop("name"), "'name' is a required property"),
    ("kind", lambda d: d["transfer"].update(kind="ftp"), "is not valid under any"),
    ("chunk_bytes 0", lambda d: d["transfer"].update(chunk_bytes=0), "is not valid under any"),
    ("no chunks", lambda d: d["transfer"].update(chunk_sha256=[]), "is not valid under any"),
    ("chunk digest", lambda d: d["transfer"]["chunk_sha256"].append(1), "is not valid under any"),
    (
        "url scheme",
        lambda d: d.update(transfer={"kind": "url", "url": "ftp://host/b.tar.gz"}),
        "is not valid under any",
    ),
    (
        "url and chunks",
        lambda d: d["transfer"].update(kind="url", url="https://host/b.tar.gz"),
        "is not valid under any",
    ),
]


@pytest.mark.parametrize(
    ("change", "needle"),
    [pytest.param(c, n, id=i) for i, c, n in UPDATE_REFUSED],
)
def test_update_schema_and_device_refuse_the_same_mistakes(
    tmp_path: Path, bundle: Path, key: tuple[Path, TrustedKeys], change: Change, needle: str
) -> None:
    doc = resigned(announcement(bundle, key[0], tmp_path), key[0], change)
    found = errors("command-update", doc)
    assert any(needle in e for e in found), found
    with pytest.raises(AnnouncementError):
        parse_announcement(doc, key[1])


def test_unsigned_or_badly_signed_announcements_fail_the_schema(
    tmp_path: Path, bundle: Path, key: tuple[Path, TrustedKeys]
) -> None:
    doc = announcement(bundle, key[0], tmp_path)
    unsigned = {k: v for k, v in doc.items() if k != "signature"}
    assert errors("command-update", unsigned) == ["'signature' is a required property"]
    with pytest.raises(SignatureError, match="not signed"):
        parse_announcement(unsigned, key[1])
    for sig in (
        {**doc["signature"], "ed25519": doc["signature"]["ed25519"][:-4]},  # truncated
        {**doc["signature"], "key_id": "lab"},
        {**doc["signature"], "algorithm": "rsa"},
    ):
        assert errors("command-update", {**doc, "signature": sig}), sig


# Bounds the schema adds so that any store can hold what it accepts (the device enforces
# updates.max_bundle_bytes / max_chunk_bytes instead).
@pytest.mark.parametrize(
    ("change", "needle"),
    [
        (lambda d: d["bundle"].update(size_bytes=2**53), "greater than the maximum"),
        (lambda d: d["bundle"].update(name=""), "should be non-empty"),
        (lambda d: d["bundle"].update(name="x" * 201), "is too long"),
        (lambda d: d["bundle"].update(name="demo\u0000"), "should not be valid"),
        (lambda d: d["bundle"].update(version="1.0.0-" + "x" * 200), "is too long"),
        (lambda d: d.update(request_id="r-1\n"), "should not be valid"),
        (lambda d: d.update(target="device:a b"), "does not match"),
        (lambda d: d.update(issued_utc="2026-05-01T04:30:00"), "is not a 'date-time'"),  # no zone
    ],
)
def test_update_schema_bounds(
    tmp_path: Path, bundle: Path, key: tuple[Path, TrustedKeys], change: Change, needle: str
) -> None:
    doc = resigned(announcement(bundle, key[0], tmp_path), key[0], change)
    found = errors("command-update", doc)
    assert any(needle in e for e in found), found


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        (lambda d: d.update(force=True), "Additional properties"),  # update-only key
        (lambda d: d.update(target="device:"), "does not match"),
        (lambda d: d.update(target="all\n"), "should not be valid"),
        (lambda d: d.pop("issued_utc"), "'issued_utc' is a required property"),
        (lambda d: d.update(issued_utc="2026-05-01"), "is not a 'date-time'"),
        (lambda d: d.update(request_id=""), "does not match"),
        (lambda d: d.update(schema=UPDATE_SCHEMA), "was expected"),
    ],
)
def test_rollback_schema_and_device_refuse_the_same_mistakes(
    key: tuple[Path, TrustedKeys], change: Change, needle: str
) -> None:
    doc = resigned(rollback(key[0]), key[0], change)
    found = errors("command-rollback", doc)
    assert any(needle in e for e in found), found
    with pytest.raises(AnnouncementError):
        parse_rollback(doc, key[1])
    unsigned = {k: v for k, v in rollback(key[0]).items() if k != "signature"}
    assert errors("command-rollback", unsigned) == ["'signature' is a required property"]
