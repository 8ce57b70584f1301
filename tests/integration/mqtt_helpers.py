"""Shared helpers of the MQTT outbox / collector / fault tests (plain functions, no fixtures)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from agent.config import AgentConfig, parse_config
from agent.detection.types import Detection

T0 = datetime(2026, 5, 1, 4, 30, tzinfo=UTC)

# The plumbing bundle: its species are those of the generated demo audio these tests play.
DEMO_BUNDLE = Path(__file__).resolve().parents[2] / "agent" / "bundles" / "demo"


def wait_until(
    predicate: Callable[[], bool], timeout_s: float = 10.0, step_s: float = 0.02
) -> bool:
    """Poll ``predicate`` until it holds or ``timeout_s`` passes (bounded)."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(step_s)
    return True


def make_detection(i: int, device: str = "field-01", detection_id: str | None = None) -> Detection:
    return Detection(
        species_code="eurrob1",
        scientific_name="Erithacus rubecula",
        common_name="European Robin",
        confidence=0.9,
        logit=2.2,
        start_utc=T0 + timedelta(seconds=2.5 * i),
        end_utc=T0 + timedelta(seconds=2.5 * i + 5),
        start_s=2.5 * i,
        end_s=2.5 * i + 5,
        channel="sep1",
        classifier="birds",
        bundle_name="chorus-demo",
        bundle_version="0.1.0",
        device_id=device,
        source="mic:default",
        id=detection_id or uuid.uuid4().hex,
    )


def agent_config(
    host: str, port: int, outbox: Path, device: str = "field-01", **mqtt_keys: Any
) -> AgentConfig:
    mqtt_section = {"enabled": True, "host": host, "port": port, "outbox_path": str(outbox)}
    mqtt_section.update(mqtt_keys)
    return parse_config(
        {
            "device_id": device,
            "mqtt": mqtt_section,
            "inference": {"bundle": str(DEMO_BUNDLE)},
        }
    )


class RawPublisher:
    """A bare paho client for payloads the agent would never send (malformed, spoofed)."""

    def __init__(self, host: str, port: int, **tls: Any) -> None:
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"raw-{uuid.uuid4().hex[:8]}",
            protocol=mqtt.MQTTv311,
        )
        self.client.connect(host, port, keepalive=10)
        self.client.loop_start()

    def publish(self, topic: str, payload: bytes | str, retain: bool = False) -> None:
        info = self.client.publish(topic, payload, qos=1, retain=retain)
        info.wait_for_publish(timeout=5.0)
        assert info.is_published(), topic

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
