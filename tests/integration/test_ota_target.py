"""OTA commands sign their target: a client that may write to the broker but holds no key cannot
re-publish one device's signed update, forced downgrade or rollback to the fleet.

Two agents (field-01, field-02, trusting the same key) on a real Mosquitto; the attacker
captures what the publisher sent to field-01 and re-publishes it byte for byte on
``chorus/_all/cmd/...`` (with the chunks under the new topic, so nothing is missing). Each
device must refuse with a reason on its state topic and keep its model.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from mqtt_helpers import RawPublisher, wait_until

pytest.importorskip("ai_edge_litert")
pytest.importorskip("cryptography")

from ota_harness import DEVICE, RunningAgent, make_bundle

from agent.ota.announce import new_request_id, utc_text
from agent.ota.signing import load_private_key, sign_document
from modeltools.ota.publish import Broker, publish_rollback

OTHER = "field-02"
FLEET_UPDATE = "chorus/_all/cmd/update"
FLEET_ROLLBACK = "chorus/_all/cmd/rollback"
OWN_UPDATE = f"chorus/{DEVICE}/cmd/update"
OWN_ROLLBACK = f"chorus/{DEVICE}/cmd/rollback"


def _captured(capture: Any, topic: str, rid: str) -> bytes:
    """The signed command ``rid`` as the broker delivered it on ``topic``."""

    def find() -> bytes | None:
        for m in capture.messages:
            if m.topic == topic and m.payload and json.loads(m.payload)["request_id"] == rid:
                return bytes(m.payload)
        return None

    assert wait_until(lambda: find() is not None, 10.0), f"{rid} never seen on {topic}"
    payload = find()
    assert payload is not None
    return payload


def _republish(broker: Any, capture: Any, src: str, dst: str, rid: str, retain: bool) -> None:
    """What an attacker with write access does: the same bytes on another target's topic,
    chunks included."""
    payload = _captured(capture, src, rid)
    pub = RawPublisher(broker.host, broker.port)
    try:
        for m in capture.messages:
            if m.topic.startswith(f"{src}/{rid}/") and m.payload:
                pub.publish(dst + m.topic[len(src) :], m.payload, retain=True)
        pub.publish(dst, payload, retain=retain)
    finally:
        pub.close()


def _refusal(agent: RunningAgent, rid: str, contains: str) -> str:
    message = agent.wait_state("refused", rid, contains, reserve=40)
    return str(message["reason"])


def test_commands_republished_to_the_fleet_are_refused(
    mosquitto_broker: Any,
    running: Callable[..., RunningAgent],
    mqtt_subscriber: Callable[..., Any],
    tmp_path: Path,
) -> None:
    a = running()
    b = running(device=OTHER, trusted_keys=[str(a.key.with_suffix(".pub"))])
    capture = mqtt_subscriber(mosquitto_broker, f"chorus/{DEVICE}/cmd/#")
    where = Broker(mosquitto_broker.host, mosquitto_broker.port)

    # field-02 runs an update of its own (so it has something a rollback could go back to).
    own = a.publish(make_bundle(tmp_path, "0.2.0", a.key), target=f"device:{OTHER}")
    b.wait_state("activated", own, reserve=40)
    b.pump(3)
    b.wait_state("confirmed", own)

    # 1. field-01's update, re-published on the fleet topic.
    rid = a.publish(make_bundle(tmp_path, "0.3.0", a.key))
    a.wait_state("activated", rid, reserve=40)
    a.pump(3)
    a.wait_state("confirmed", rid)
    _republish(mosquitto_broker, capture, OWN_UPDATE, FLEET_UPDATE, rid, retain=True)
    update_reason = _refusal(b, rid, "not for this device")
    assert update_reason == (
        f"announcement {rid} is signed for target device:{DEVICE}, not for this device ({OTHER})"
    )
    own_reason = _refusal(a, rid, "re-published")
    assert f"arrived on {FLEET_UPDATE}" in own_reason
    assert b.version == "0.2.0" and a.version == "0.3.0"

    # 2. A forced downgrade for field-01 (force is signed), re-published fleet-wide.
    forced = a.publish(make_bundle(tmp_path, "0.1.5", a.key), force=True)
    a.wait_state("activated", forced, reserve=40)
    a.pump(3)
    a.wait_state("confirmed", forced)
    assert a.version == "0.1.5"
    _republish(mosquitto_broker, capture, OWN_UPDATE, FLEET_UPDATE, forced, retain=True)
    forced_reason = _refusal(b, forced, "not for this device")
    assert f"signed for target device:{DEVICE}" in forced_reason
    assert b.version == "0.2.0"  # no forced downgrade to 0.1.5

    # 3. A rollback for field-01, re-published fleet-wide.
    back = publish_rollback(a.key, where, target=f"device:{DEVICE}")
    a.wait_state("rolled_back", back, reserve=40)
    assert a.version == "0.3.0"
    _republish(mosquitto_broker, capture, OWN_ROLLBACK, FLEET_ROLLBACK, back, retain=False)
    rollback_reason = _refusal(b, back, "not for this device")
    assert rollback_reason == (
        f"rollback command refused: rollback command {back} is signed for target "
        f"device:{DEVICE}, not for this device ({OTHER})"
    )
    assert b.version == "0.2.0" and b.updater.store.current().name == "chorus-demo-0.2.0"
    state = b.messages()[-1]
    assert state["active"]["version"] == "0.2.0" and state["state"] == "refused"
    print(
        f"\nretargeted update refused by {OTHER}: {update_reason}"
        f"\nretargeted forced downgrade refused by {OTHER}: {forced_reason}"
        f"\nretargeted rollback refused by {OTHER}: {rollback_reason}"
        f"\nre-published own update refused by {DEVICE}: {own_reason}"
    )
    a.close()
    b.close()


def test_commands_of_the_old_schema_are_refused(running: Callable[..., RunningAgent]) -> None:
    """chorus.cmd.update/2 did not sign its target: refused, even correctly signed and on the
    device's own topic, never accepted as a fallback."""
    agent = running()
    old = {  # what chorus-models published before the target was signed
        "schema": "chorus.cmd.update/2",
        "request_id": new_request_id(),
        "issued_utc": utc_text(datetime.now(UTC)),
        "force": False,
        "bundle": {"name": "chorus-demo", "version": "0.9.0", "sha256": "0" * 64, "size_bytes": 10},
        "transfer": {"kind": "mqtt", "chunk_bytes": 10, "chunk_sha256": ["0" * 64]},
    }
    old = sign_document(old, load_private_key(agent.key))
    pub = RawPublisher(agent.broker.host, agent.broker.port)
    try:
        pub.publish(OWN_UPDATE, json.dumps(old), retain=True)
    finally:
        pub.close()
    reason = _refusal(agent, old["request_id"], "")
    assert "schema chorus.cmd.update/2 is refused: its signature does not cover the target" in (
        reason
    )
    assert agent.version == "0.1.0"
    print(f"\nold-schema announcement refused: {reason}")
    agent.close()
