"""Publishing a signed bundle to field recorders over MQTT (the researcher's side of OTA).

:func:`publish_update` packs the bundle (:func:`agent.ota.archive.pack_bundle`), signs an
announcement (:mod:`agent.ota.announce`) and publishes, all retained and at QoS 1:

1. the archive's chunks on ``<update topic>/<request_id>/<i>`` (one message when the archive
   fits in one chunk), each acknowledged by the broker before
2. the announcement on the update topic, so a device that sees the announcement finds every
   chunk already on the broker, and a device that comes online next week still finds both;
3. then the retained chunks of older requests on the same topic are cleared (the announcement
   they belonged to has just been replaced).

With ``url`` only the announcement is published; the archive must be served at that URL (pack
it first with ``archive_out``: packing is deterministic, so the sha256 matches).

The client connects with MQTT 5 so that it learns the broker's maximum packet size from the
CONNACK and refuses chunks that would not fit, instead of having the broker drop them. It can
present a client certificate (``tls_cert``/``tls_key``) for a mutual-TLS broker.

The announcement and the rollback command sign their target (``device:<id>``, ``group:<name>``,
``all``): a device refuses one re-published on another target's topic. With ``wait_s`` the
publisher follows the devices' retained ``models/state`` topics (:mod:`modeltools.ota.rollout`)
and returns each addressed device's state for this request.
"""

from __future__ import annotations

import json
import logging
import ssl
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from agent.credentials import check_private_file
from agent.errors import ChorusError
from agent.models.manifest import load_bundle
from agent.ota.announce import (
    DEFAULT_CHUNK_BYTES,
    build_announcement,
    build_rollback,
    chunk_digests,
    chunk_topic,
    iter_chunks,
    parse_chunk_topic,
)
from agent.ota.archive import pack_bundle
from agent.ota.signing import load_private_key, read_bundle_signature, sign_document
from agent.sinks.mqtt import connect_error_message
from agent.topics import target_command_topic
from modeltools.ota.rollout import (
    Rollout,
    build_rollout,
    state_filter,
    wait_for_states,
)

log = logging.getLogger(__name__)

# Bytes an MQTT PUBLISH adds to its payload besides the topic: fixed header, lengths, packet
# id, properties. Generous, so a chunk that passes this check always fits.
_PACKET_OVERHEAD = 64


class PublishError(ChorusError):
    """The update could not be published (broker unreachable, packet too large, timeout)."""

    exit_code = 2


@dataclass(frozen=True)
class PublishResult:
    request_id: str
    topic: str
    name: str
    version: str
    sha256: str
    archive_bytes: int
    chunks: int  # 0 with a URL
    chunk_bytes: int
    elapsed_s: float
    cleared: int  # retained chunks of older requests removed
    target: str = "all"
    # With wait_s: each addressed device (known from its retained state, or that answered)
    # and the last state it reported for this request.
    rollout: Rollout | None = None


def update_topic_for(prefix: str, target: str, command: str = "update") -> str:
    """``device:<id>`` | ``group:<name>`` | ``all`` -> the command topic."""
    try:
        return target_command_topic(prefix, target, command)
    except ValueError as exc:
        raise PublishError(f"--target {exc}") from None


@dataclass(frozen=True)
class Broker:
    """Where and how to connect: address, credentials, TLS (CA, client certificate)."""

    host: str
    port: int
    username: str | None = None
    password: str | None = None
    tls_ca: Path | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    timeout_s: float = 60.0

    @property
    def tls(self) -> bool:
        return self.tls_ca is not None or self.tls_cert is not None

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"


def _configure_tls(client: mqtt.Client, broker: Broker) -> None:
    if (broker.tls_cert is None) != (broker.tls_key is None):
        raise PublishError("--tls-cert and --tls-key go together (client certificate and key)")
    for flag, path in (
        ("--tls-ca", broker.tls_ca),
        ("--tls-cert", broker.tls_cert),
        ("--tls-key", broker.tls_key),
    ):
        if path is not None and not path.is_file():
            raise PublishError(f"{flag}: file not found: {path}")
    if broker.tls_key is not None:
        check_private_file(broker.tls_key, "--tls-key")
    try:
        client.tls_set(
            ca_certs=str(broker.tls_ca) if broker.tls_ca else None,  # None: the system CAs
            certfile=str(broker.tls_cert) if broker.tls_cert else None,
            keyfile=str(broker.tls_key) if broker.tls_key else None,
            cert_reqs=ssl.CERT_REQUIRED,
            tls_version=ssl.PROTOCOL_TLS_CLIENT,  # TLS 1.2+, verifies the broker's host name
        )
    except (ssl.SSLError, OSError, ValueError) as exc:
        raise PublishError(f"cannot load the TLS certificate or key: {exc}") from None


class _Client:
    """A paho MQTT 5 client that connects synchronously (bounded) and waits for acks."""

    def __init__(self, broker: Broker) -> None:
        self.timeout_s = broker.timeout_s
        self.max_packet: int | None = None
        self.messages: dict[str, bytes] = {}  # retained_under's collection
        self.received: list[tuple[str, bytes]] = []  # everything, in order of arrival
        self._filter: str | None = None
        self._connected = threading.Event()
        self._refused: str | None = None
        self._last_message = time.monotonic()
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"chorus-publish-{uuid.uuid4().hex[:8]}",
            protocol=mqtt.MQTTv5,
        )
        if broker.username is not None:
            self.client.username_pw_set(broker.username, broker.password)
        if broker.tls:
            _configure_tls(self.client, broker)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_message = self._on_message
        try:
            self.client.connect(broker.host, broker.port, keepalive=30)
        except OSError as exc:
            ca = str(broker.tls_ca) if broker.tls_ca else None
            raise PublishError(connect_error_message(exc, broker.address, ca)) from None
        self.client.loop_start()
        if not self._connected.wait(broker.timeout_s) or self._refused:
            self.close()
            raise PublishError(
                f"broker {broker.address} did not accept the connection: "
                f"{self._refused or 'timeout'}"
            )

    def _on_connect(self, client: Any, userdata: Any, flags: Any, rc: Any, props: Any) -> None:
        if rc.is_failure:
            self._refused = str(rc)
        else:
            size = getattr(props, "MaximumPacketSize", None) if props is not None else None
            self.max_packet = int(size) if size else None
        self._connected.set()

    def _on_disconnect(self, client: Any, userdata: Any, flags: Any, rc: Any, props: Any) -> None:
        if not self._connected.is_set():
            # Closed before CONNACK: with TLS 1.3 a broker checks the client certificate
            # after the handshake, so a missing or untrusted one ends here.
            self._refused = (
                f"it closed the connection before accepting it ({rc}): does it require a "
                "client certificate (--tls-cert/--tls-key) or TLS (--tls-ca)?"
            )
            self._connected.set()

    def _on_message(self, client: Any, userdata: Any, msg: Any) -> None:
        self.received.append((msg.topic, bytes(msg.payload)))
        if self._filter is not None and mqtt.topic_matches_sub(self._filter, msg.topic):
            self.messages[msg.topic] = bytes(msg.payload)
            self._last_message = time.monotonic()

    def check_size(self, topic: str, payload_bytes: int) -> None:
        if self.max_packet is None:
            return
        if payload_bytes + len(topic.encode()) + _PACKET_OVERHEAD > self.max_packet:
            fit = self.max_packet - len(topic.encode()) - _PACKET_OVERHEAD
            raise PublishError(
                f"the broker accepts packets up to {self.max_packet} bytes; "
                f"use --chunk-bytes {max(fit, 1)} or less"
            )

    def publish(self, items: list[tuple[str, bytes]]) -> None:
        """Publish retained at QoS 1 and wait until the broker acknowledged every one."""
        infos = [self.client.publish(t, p, qos=1, retain=True) for t, p in items]
        deadline = time.monotonic() + self.timeout_s
        for (topic, _), info in zip(items, infos, strict=True):
            info.wait_for_publish(max(0.0, deadline - time.monotonic()))
            if not info.is_published():
                raise PublishError(f"the broker did not acknowledge {topic} in time")

    def retained_under(self, topic_filter: str, quiet_s: float = 0.5) -> dict[str, bytes]:
        """The retained messages matching ``topic_filter`` (they arrive right after SUBACK)."""
        self.messages.clear()
        self._last_message = time.monotonic()
        self._filter = topic_filter
        self.client.subscribe(topic_filter, qos=1)
        deadline = time.monotonic() + self.timeout_s
        while time.monotonic() - self._last_message < quiet_s and time.monotonic() < deadline:
            time.sleep(0.05)
        self.client.unsubscribe(topic_filter)
        self._filter = None
        return dict(self.messages)

    def follow(self, topic_filter: str) -> None:
        """Subscribe for good: what arrives is in ``received``."""
        self.client.subscribe(topic_filter, qos=1)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def prepare_update(
    bundle_dir: Path,
    key_path: Path,
    archive: Path,
    *,
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
    url: str | None = None,
    force: bool = False,
    target: str,
) -> dict[str, Any]:
    """Pack ``bundle_dir`` into ``archive`` and return the signed announcement for
    ``target``."""
    if chunk_bytes < 1:
        raise PublishError(f"--chunk-bytes must be >= 1, got {chunk_bytes}")
    key = load_private_key(key_path)
    bundle = load_bundle(bundle_dir)
    read_bundle_signature(bundle_dir)  # unsigned bundles are refused here, not on the device
    sha256, size = pack_bundle(bundle_dir, archive)
    m = bundle.manifest
    doc = build_announcement(
        name=m.name,
        version=m.version,
        sha256=sha256,
        size_bytes=size,
        chunk_sha256=None if url else chunk_digests(archive, chunk_bytes),
        chunk_bytes=0 if url else chunk_bytes,
        url=url,
        force=force,
        target=target,
    )
    return sign_document(doc, key)


def publish_update(
    bundle_dir: Path,
    key_path: Path,
    *,
    host: str,
    port: int,
    target: str,
    prefix: str = "chorus",
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
    url: str | None = None,
    force: bool = False,
    archive_out: Path | None = None,
    username: str | None = None,
    password: str | None = None,
    tls_ca: Path | None = None,
    tls_cert: Path | None = None,
    tls_key: Path | None = None,
    timeout_s: float = 60.0,
    dry_run: bool = False,
    wait_s: float = 0.0,
) -> PublishResult:
    """Publish the signed bundle to ``target`` (see the module docstring); with ``wait_s``,
    follow the devices' state for up to that long (``PublishResult.states``)."""
    topic = update_topic_for(prefix, target)
    if wait_s < 0:
        raise PublishError(f"--wait must be >= 0 seconds, got {wait_s:g}")
    broker = Broker(host, port, username, password, tls_ca, tls_cert, tls_key, timeout_s)
    t0 = time.perf_counter()
    rollout = None
    with tempfile.TemporaryDirectory(prefix="chorus-publish-") as tmp:
        archive = archive_out or Path(tmp) / "bundle.tar.gz"
        doc = prepare_update(
            bundle_dir,
            key_path,
            archive,
            chunk_bytes=chunk_bytes,
            url=url,
            force=force,
            target=target,
        )
        rid, b = doc["request_id"], doc["bundle"]
        chunks = [] if url else list(iter_chunks(archive, chunk_bytes))
        cleared = 0
        elapsed_s = time.perf_counter() - t0
        if not dry_run:
            client = _Client(broker)
            try:
                roster = _roster(client, prefix) if wait_s > 0 else None
                items = [(chunk_topic(topic, rid, i), c) for i, c in enumerate(chunks)]
                payload = json.dumps(doc, separators=(",", ":")).encode()
                for t, p in [*items[:1], (topic, payload)]:
                    client.check_size(t, len(p))
                client.publish(items)  # every chunk is on the broker before the announcement
                client.publish([(topic, payload)])
                cleared = _clear_old_chunks(client, topic, rid)
                elapsed_s = time.perf_counter() - t0  # published; the wait is not counted
                if roster is not None:
                    bundle = f"{b['name']} {b['version']}"
                    rollout = wait_for_states(
                        lambda: client.received, prefix, rid, target, roster, wait_s, topic, bundle
                    )
            finally:
                client.close()
    return PublishResult(
        rid,
        topic,
        b["name"],
        b["version"],
        b["sha256"],
        b["size_bytes"],
        len(chunks),
        0 if url else chunk_bytes,
        elapsed_s,
        cleared,
        target,
        rollout,
    )


def _roster(client: _Client, prefix: str) -> list[tuple[str, bytes]]:
    """Follow every device's state from now on; the retained ones (who is out there, in which
    groups) arrive first and are returned."""
    retained = client.retained_under(state_filter(prefix), quiet_s=0.3)
    client.follow(state_filter(prefix))
    return list(retained.items())


def _clear_old_chunks(client: _Client, topic: str, keep_rid: str) -> int:
    old = [
        t
        for t in client.retained_under(f"{topic}/+/+")
        if (parsed := parse_chunk_topic(topic, t)) is not None and parsed[0] != keep_rid
    ]
    if old:
        client.publish([(t, b"") for t in old])  # an empty retained message deletes it
    return len(old)


def publish_rollback(key_path: Path, broker: Broker, *, target: str, prefix: str = "chorus") -> str:
    """Publish a signed rollback command for ``target`` (not retained: a stale rollback must
    not fire later)."""
    topic = update_topic_for(prefix, target, "rollback")
    doc = sign_document(build_rollback(target), load_private_key(key_path))
    client = _Client(broker)
    try:
        info = client.client.publish(topic, json.dumps(doc).encode(), qos=1, retain=False)
        info.wait_for_publish(broker.timeout_s)
        if not info.is_published():
            raise PublishError(f"the broker did not acknowledge {topic} in time")
    finally:
        client.close()
    return str(doc["request_id"])


def read_rollout(
    broker: Broker,
    *,
    prefix: str = "chorus",
    target: str | None = None,
    request_id: str | None = None,
) -> Rollout:
    """The state of a roll-out, per device, from the retained topics (no device is asked).

    ``target``: its retained announcement names the request (unless ``request_id`` is given)
    and which devices it addresses. Neither: every device's latest state.
    """
    topic = update_topic_for(prefix, target) if target is not None else None
    client = _Client(broker)
    try:
        announcement = client.retained_under(topic, quiet_s=0.3).get(topic) if topic else None
        states = client.retained_under(state_filter(prefix), quiet_s=0.3)
    finally:
        client.close()
    return build_rollout(prefix, target, topic, request_id, announcement, states)
