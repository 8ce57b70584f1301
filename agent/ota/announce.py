"""Signed commands of the OTA protocol: the update announcement and the rollback command.

An announcement (``chorus.cmd.update/3``) is published retained on its target's update topic
(``<prefix>/<device>/cmd/update``, ``<prefix>/_group/<group>/cmd/update`` or
``<prefix>/_all/cmd/update``)::

    {"schema": "chorus.cmd.update/3",
     "request_id": "20260501T043000Z-3f2c8a5e",          # nonce: handled at most once
     "issued_utc": "2026-05-01T04:30:00Z",
     "target": "device:field-01",                         # or "group:north", or "all"
     "force": false,                                      # allow a downgrade / re-install
     "bundle": {"name": "chorus-demo", "version": "0.2.0",
                "sha256": "<of the archive>", "size_bytes": 2059706},
     "transfer": {"kind": "mqtt", "chunk_bytes": 262144,
                  "chunk_sha256": ["<chunk 0>", "<chunk 1>", ...]},
              # or {"kind": "url", "url": "https://host/bundle.tar.gz"}
     "signature": {"key_id": "...", "ed25519": "<base64>"}}

The signature (:func:`agent.ota.signing.sign_document`) covers everything else, so the target,
the archive hash, every chunk hash, the version and ``force`` are all authenticated: a device
refuses an unsigned or forged announcement before it downloads a byte, checks each chunk as it
arrives, and nobody without the key can turn a replayed old bundle into a forced downgrade, nor
re-publish one device's update (or forced downgrade, or rollback) on a group or fleet topic:
:func:`check_addressed` refuses a command not addressed to this device, or one that arrived on
another topic than its target's. The ``/2`` schemas did not sign the target; they are refused.
With the ``mqtt`` transfer, chunk ``i`` is the retained message on
``<update topic>/<request_id>/<i>`` (one message when the archive fits in one chunk).
"""

from __future__ import annotations

import math
import re
import secrets
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from agent.errors import ChorusError
from agent.models.manifest import parse_version
from agent.ota.signing import TrustedKeys, verify_document
from agent.topics import target_command_topic

UPDATE_SCHEMA = "chorus.cmd.update/3"
ROLLBACK_SCHEMA = "chorus.cmd.rollback/3"
# Earlier schemas whose signature did not cover the target: refused with this reason.
_UNTARGETED = {
    "chorus.cmd.update/2": UPDATE_SCHEMA,
    "chorus.cmd.rollback/2": ROLLBACK_SCHEMA,
}
REQUEST_ID = re.compile(r"[A-Za-z0-9_.:-]{1,64}")  # always fullmatch: "$" passes a final "\n"
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
DEFAULT_CHUNK_BYTES = 256 * 1024


class AnnouncementError(ChorusError):
    """An announcement or command that is malformed, unsigned or not trusted."""


@dataclass(frozen=True)
class Announcement:
    request_id: str
    issued_utc: datetime
    name: str
    version: str
    sha256: str  # of the archive
    size_bytes: int
    force: bool
    key_id: str
    target: str  # device:<id> | group:<name> | all, signed
    chunk_bytes: int = 0  # mqtt transfer
    chunk_sha256: tuple[str, ...] = ()
    url: str | None = None  # url transfer

    @property
    def chunks(self) -> int:
        return len(self.chunk_sha256)

    @property
    def via_url(self) -> bool:
        return self.url is not None


@dataclass(frozen=True)
class RollbackCommand:
    request_id: str
    issued_utc: datetime
    key_id: str
    target: str


def utc_text(t: datetime) -> str:
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def new_request_id(now: datetime | None = None) -> str:
    """A unique, sortable, topic-safe request id (the announcement's nonce)."""
    now = now or datetime.now(UTC)
    return f"{now.astimezone(UTC):%Y%m%dT%H%M%SZ}-{secrets.token_hex(4)}"


def chunk_digests(archive: Path, chunk_bytes: int) -> list[str]:
    import hashlib

    return [hashlib.sha256(c).hexdigest() for c in iter_chunks(archive, chunk_bytes)]


def iter_chunks(archive: Path, chunk_bytes: int) -> Iterator[bytes]:
    with archive.open("rb") as f:
        while block := f.read(chunk_bytes):
            yield block


def build_announcement(
    *,
    name: str,
    version: str,
    sha256: str,
    size_bytes: int,
    target: str,
    chunk_sha256: list[str] | None = None,
    chunk_bytes: int = 0,
    url: str | None = None,
    force: bool = False,
    request_id: str | None = None,
    issued_utc: datetime | None = None,
) -> dict[str, Any]:
    """The unsigned announcement (sign it with :func:`~agent.ota.signing.sign_document`)."""
    issued = issued_utc or datetime.now(UTC)
    transfer: dict[str, Any] = (
        {"kind": "url", "url": url}
        if url is not None
        else {"kind": "mqtt", "chunk_bytes": chunk_bytes, "chunk_sha256": list(chunk_sha256 or [])}
    )
    return {
        "schema": UPDATE_SCHEMA,
        "request_id": request_id or new_request_id(issued),
        "issued_utc": utc_text(issued),
        "target": target,
        "force": force,
        "bundle": {"name": name, "version": version, "sha256": sha256, "size_bytes": size_bytes},
        "transfer": transfer,
    }


def build_rollback(
    target: str, request_id: str | None = None, issued_utc: datetime | None = None
) -> dict[str, Any]:
    """The unsigned rollback command for ``target`` (sign it like an announcement)."""
    issued = issued_utc or datetime.now(UTC)
    return {
        "schema": ROLLBACK_SCHEMA,
        "request_id": request_id or new_request_id(issued),
        "issued_utc": utc_text(issued),
        "target": target,
    }


class _Fields:
    """Typed access that names the offending field."""

    def __init__(self, data: Any, where: str) -> None:
        if not isinstance(data, dict):
            raise AnnouncementError(f"{where or 'announcement'}: expected a JSON object")
        self.data, self.where = data, where

    def get(self, key: str, kind: type | tuple[type, ...]) -> Any:
        path = f"{self.where}.{key}" if self.where else key
        if key not in self.data:
            raise AnnouncementError(f"{path}: missing")
        value = self.data[key]
        if not isinstance(value, kind) or (isinstance(value, bool) and kind is int):
            raise AnnouncementError(f"{path}: wrong type ({type(value).__name__})")
        return value

    def only(self, *keys: str) -> None:
        extra = sorted(set(self.data) - set(keys))
        if extra:
            raise AnnouncementError(f"{self.where or 'announcement'}: unknown keys {extra}")


def _parse_time(text: str, what: str) -> datetime:
    try:
        t = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise AnnouncementError(f"{what}: not an ISO 8601 time: {text!r}") from None
    if t.tzinfo is None:
        raise AnnouncementError(f"{what}: needs a timezone: {text!r}")
    return t


def _schema(f: _Fields, expected: str) -> None:
    schema = f.get("schema", str)
    if schema in _UNTARGETED:
        raise AnnouncementError(
            f"schema {schema} is refused: its signature does not cover the target (device, "
            f"group or all), so it could be re-published to other devices; publish it again "
            f"with a current chorus-models ({_UNTARGETED[schema]})"
        )
    if schema != expected:
        raise AnnouncementError(f"schema: expected {expected!r}, got {schema!r}")


def _target(f: _Fields) -> str:
    target = str(f.get("target", str))
    try:
        target_command_topic("chorus", target, "update")
    except ValueError as exc:
        raise AnnouncementError(f"target: {exc}") from None
    return target


def check_addressed(
    target: str,
    topic: str,
    command: str,
    *,
    prefix: str,
    device_id: str,
    groups: list[str],
    what: str,
) -> None:
    """Refuse a signed command that is not for this device, or that arrived on another topic
    than its signed target's (re-published elsewhere by someone who may write to the broker)."""
    kind, _, name = target.partition(":")
    if kind == "device" and name != device_id:
        raise AnnouncementError(
            f"{what} is signed for target {target}, not for this device ({device_id})"
        )
    if kind == "group" and name not in groups:
        raise AnnouncementError(
            f"{what} is signed for target {target}; this device is not in group {name} "
            f"(updates.groups: {', '.join(groups) or 'none'})"
        )
    expected = target_command_topic(prefix, target, command)
    if topic != expected:
        raise AnnouncementError(
            f"{what} is signed for target {target} ({expected}) but arrived on {topic}: "
            "re-published to another target"
        )


def _request_id(f: _Fields) -> str:
    rid = f.get("request_id", str)
    if not REQUEST_ID.fullmatch(rid):
        raise AnnouncementError(f"request_id: must match {REQUEST_ID.pattern}, got {rid!r}")
    return str(rid)


def parse_announcement(doc: Mapping[str, Any], trusted: TrustedKeys) -> Announcement:
    """Validate a decoded announcement and its signature. Raises AnnouncementError (bad form)
    or :class:`~agent.ota.signing.SignatureError` (unsigned, untrusted, forged)."""
    f = _Fields(doc, "")
    _schema(f, UPDATE_SCHEMA)
    f.only(
        "schema", "request_id", "issued_utc", "target", "force", "bundle", "transfer", "signature"
    )
    rid = _request_id(f)
    kid = verify_document(doc, trusted, f"announcement {rid}")
    target = _target(f)
    issued = _parse_time(f.get("issued_utc", str), "issued_utc")
    force = f.get("force", bool)
    b = _Fields(f.get("bundle", dict), "bundle")
    b.only("name", "version", "sha256", "size_bytes")
    version = b.get("version", str)
    if parse_version(version) is None:
        raise AnnouncementError(f"bundle.version: not a semantic version: {version!r}")
    sha = b.get("sha256", str)
    if not _SHA256.match(sha):
        raise AnnouncementError("bundle.sha256: expected 64 lowercase hex digits")
    size = b.get("size_bytes", int)
    if size < 1:
        raise AnnouncementError(f"bundle.size_bytes: must be >= 1, got {size}")
    t = _Fields(f.get("transfer", dict), "transfer")
    kind = t.get("kind", str)
    common = {
        "request_id": rid,
        "issued_utc": issued,
        "name": b.get("name", str),
        "version": version,
        "sha256": sha,
        "size_bytes": size,
        "force": force,
        "key_id": kid,
        "target": target,
    }
    if kind == "url":
        t.only("kind", "url")
        url = t.get("url", str)
        if not url.startswith(("https://", "http://")):
            raise AnnouncementError(f"transfer.url: only http(s) URLs, got {url!r}")
        return Announcement(**common, url=url)
    if kind != "mqtt":
        raise AnnouncementError(f"transfer.kind: expected 'mqtt' or 'url', got {kind!r}")
    t.only("kind", "chunk_bytes", "chunk_sha256")
    chunk_bytes = t.get("chunk_bytes", int)
    digests = t.get("chunk_sha256", list)
    if chunk_bytes < 1:
        raise AnnouncementError(f"transfer.chunk_bytes: must be >= 1, got {chunk_bytes}")
    if len(digests) != math.ceil(size / chunk_bytes):
        raise AnnouncementError(
            f"transfer.chunk_sha256: {len(digests)} digests, but {size} bytes in chunks of "
            f"{chunk_bytes} make {math.ceil(size / chunk_bytes)}"
        )
    if not all(isinstance(d, str) and _SHA256.match(d) for d in digests):
        raise AnnouncementError("transfer.chunk_sha256: expected 64 lowercase hex digits each")
    return Announcement(**common, chunk_bytes=chunk_bytes, chunk_sha256=tuple(digests))


def parse_rollback(doc: Mapping[str, Any], trusted: TrustedKeys) -> RollbackCommand:
    f = _Fields(doc, "")
    _schema(f, ROLLBACK_SCHEMA)
    f.only("schema", "request_id", "issued_utc", "target", "signature")
    rid = _request_id(f)
    kid = verify_document(doc, trusted, f"rollback command {rid}")
    issued = _parse_time(f.get("issued_utc", str), "issued_utc")
    return RollbackCommand(rid, issued, kid, _target(f))


def chunk_topic(update_topic: str, request_id: str, index: int) -> str:
    """Where chunk ``index`` of request ``request_id`` is retained."""
    return f"{update_topic}/{request_id}/{index}"


def parse_chunk_topic(update_topic: str, topic: str) -> tuple[str, int] | None:
    """(request_id, index) for a chunk topic under ``update_topic``, else None."""
    head = update_topic + "/"
    if not topic.startswith(head):
        return None
    parts = topic[len(head) :].split("/")
    if len(parts) != 2 or not REQUEST_ID.fullmatch(parts[0]) or not parts[1].isdigit():
        return None
    return parts[0], int(parts[1])
