"""Contract tests: every payload the agent builds validates against its published JSON Schema,
and the schemas reject the payload mistakes subscribers complain about."""

from __future__ import annotations

import copy
import json
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from agent.credentials import CredentialError, mqtt_password, read_secret_file
from agent.detection.types import Detection
from agent.forwarder import ForwarderStats
from agent.health import build_status, pipeline_counters
from agent.outbox import OutboxStats
from agent.pipeline import PipelineStats
from agent.schemas import (
    SCHEMAS,
    MessageError,
    is_rfc3339,
    load_schema,
    parse_message,
    validator,
)
from agent.sinks.homeassistant import discovery_messages, node_id
from agent.sinks.mqtt import MqttStats
from agent.topics import (
    availability_topic,
    command_topic,
    fleet_command_topic,
    group_command_topic,
    parse_device_topic,
    reply_topic,
    status_topic,
)

T0 = datetime(2026, 5, 1, 4, 30, tzinfo=UTC)


def detection(**kw: Any) -> Detection:
    base: dict[str, Any] = {
        "species_code": "eurrob1",
        "scientific_name": "Erithacus rubecula",
        "common_name": "European Robin",
        "confidence": 0.93,
        "logit": 2.6,
        "start_utc": T0,
        "end_utc": T0 + timedelta(seconds=7.5),
        "start_s": 0.0,
        "end_s": 7.5,
        "channel": "sep2",
        "classifier": "birds",
        "bundle_name": "chorus-demo",
        "bundle_version": "0.1.0",
        "device_id": "field-01",
        "source": "mic:default",
        "windows": 2,
    }
    return Detection(**{**base, **kw})


def errors(kind: str, payload: Any) -> list[str]:
    return [e.message for e in validator(kind).iter_errors(payload)]


def test_every_schema_is_valid_draft_2020_12() -> None:
    import jsonschema

    for kind in SCHEMAS:
        schema = load_schema(kind)
        assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
        jsonschema.Draft202012Validator.check_schema(schema)


def test_detection_payload_matches_its_schema() -> None:
    payload = detection().to_payload()
    assert errors("detection", payload) == []
    assert load_schema("detection")["properties"]["schema"]["const"] == payload["schema"]
    # Every field the agent sends is described (additionalProperties is false), and the
    # optional location the MQTT output adds validates too.
    payload["location"] = {"latitude_deg": 52.1, "longitude_deg": -1.5}
    assert errors("detection", payload) == []


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        (lambda p: p.pop("id"), "'id' is a required property"),
        (lambda p: p.update(confidence=1.5), "greater than the maximum"),
        (lambda p: p.update(start_utc="2026-05-01 04:30:00"), "is not a 'date-time'"),
        (lambda p: p.update(end_utc="2026-05-01T04:30:00"), "is not a 'date-time'"),  # no zone
        (lambda p: p.update(channel="left"), "does not match"),
        (lambda p: p.update(windows=0), "less than the minimum"),
        (lambda p: p["species"].pop("code"), "'code' is a required property"),
        (lambda p: p.update(extra_field=1), "Additional properties are not allowed"),
        (lambda p: p.update(schema="chorus.detection/2"), "was expected"),
        (lambda p: p.update(device="a/b"), "does not match"),
        (lambda p: p.update(location={"latitude_deg": 95.0, "longitude_deg": 0}), "maximum"),
        # Every number and string is bounded so that any store can hold it (issue 24).
        (lambda p: p.update(windows=10**30), "greater than the maximum"),
        (lambda p: p.update(windows=2**31), "greater than the maximum"),
        (lambda p: p.update(logit=1e300), "greater than the maximum"),
        (lambda p: p.update(end_s=1e300), "greater than the maximum"),
        (lambda p: p["species"].update(code="\ud800"), "should not be valid"),
        (lambda p: p["species"].update(common_name="Robin\u0000"), "should not be valid"),
        (lambda p: p.update(device="field-01\n"), "should not be valid"),  # '$' matches before \n
        (lambda p: p.update(id="abc\n"), "should not be valid"),
        (lambda p: p["model"].update(version="x" * 201), "is too long"),
        (lambda p: p.update(source="x" * 5000), "is too long"),
        (lambda p: p.update(end_utc="9999-12-31T23:59:59-23:59"), "is not a 'date-time'"),
    ],
)
def test_detection_schema_rejects_broken_payloads(change: Any, needle: str) -> None:
    payload = copy.deepcopy(detection().to_payload())
    change(payload)
    found = errors("detection", payload)
    assert found and any(needle in e for e in found), found


def test_detection_schema_takes_any_valid_unicode() -> None:
    payload = detection(common_name="Rotkehlchen 🐦 é", scientific_name="Ærithacus").to_payload()
    assert errors("detection", payload) == []


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b'{"logit": NaN}', "not_finite"),
        (b'{"a": [Infinity]}', "not_finite"),
        (b'{"a": -Infinity}', "not_finite"),
        (b'{"a": 1e400}', "not_finite"),
        (b'{"a": "\\ud800"}', "bad_unicode"),
        (b'{"\\udfff": 1}', "bad_unicode"),
        (b'{"a": [{"b": "x\\udc00"}]}', "bad_unicode"),
        (b'{"a": ' + b"1" * 5000 + b"}", "not_json"),  # beyond int's 4300-digit limit
        (b"[" * 20_000 + b"]" * 20_000, "not_json"),
        (b"\xff", "not_utf8"),
        (b"", "not_json"),
    ],
)
def test_parse_message_refuses_what_no_store_can_keep(data: bytes, reason: str) -> None:
    with pytest.raises(MessageError) as err:
        parse_message(data)
    assert err.value.reason == reason


def test_parse_message_takes_i_json() -> None:
    value = parse_message('{"a": [1.5e300, -0.0, 10, "\\ud83d\\udc26 é"]}'.encode())
    assert value == {"a": [1.5e300, -0.0, 10, "🐦 é"]}


def test_date_time_format_check() -> None:
    assert is_rfc3339("2026-05-01T04:30:00.123Z")
    assert is_rfc3339("2026-05-01T04:30:00+02:00")
    assert not is_rfc3339("2026-05-01T04:30:00")
    assert not is_rfc3339("2026-13-01T04:30:00Z")
    assert not is_rfc3339("yesterday")


def status_payload(**kw: Any) -> dict[str, Any]:
    stats = PipelineStats(windows=40, audio_s=100.0, total_s=12.5, detections=7)
    args: dict[str, Any] = {
        "device_id": "field-01",
        "uptime_s": 123.45,
        "pipeline": pipeline_counters(stats),
        "source_name": "mic:default",
        "source_stats": {"input_overflows": 2, "queue_overflows": 1, "gap_s": 0.5},
        "bundle": ("chorus-demo", "0.1.0"),
        "outbox": OutboxStats(3, 12.34, 10, 7, 0, 5),
        "forwarder": ForwarderStats(9, 7, 0, 0, 2),
        "mqtt": MqttStats(9, 7, 0, 2, 0, True, 4, 2),
        "state_dir": Path("/"),
    }
    return build_status(**{**args, **kw})


def test_status_payload_matches_its_schema_and_carries_the_health_counters() -> None:
    status = status_payload()
    assert errors("status", status) == []
    assert status["pipeline"]["real_time_factor"] == 0.125
    assert status["audio"]["overflows"] == 3
    assert status["outbox"] == {
        "depth": 3,
        "oldest_age_s": 12.3,
        "inflight": 2,
        "pruned_total": 5,
        "pruned_disk": 0,
        "delivered": 7,
    }
    assert status["mqtt"] == {"connects": 2, "connect_failures": 4}
    assert status["disk"]["free_bytes"] > 0
    assert status["disk"]["below_floor"] is False and status["disk"]["reserve_held"] is True
    # Before the pipeline ran: no model, zero counters, still valid.
    early = status_payload(pipeline=None, bundle=None, source_name=None, source_stats=None)
    assert errors("status", early) == []
    assert early["model"] is None and early["pipeline"]["windows"] == 0


def test_availability_and_reply_schemas() -> None:
    """The OTA command schemas are tested against real signed commands in test_ota_schemas.py."""
    assert errors("availability", "online") == [] and errors("availability", "offline") == []
    assert errors("availability", "ONLINE")
    reply = {
        "schema": "chorus.cmd.reply/1",
        "request_id": "r-1",
        "device": "field-01",
        "command": "update",
        "state": "succeeded",
        "time_utc": "2026-05-01T04:30:00.000Z",
    }
    assert errors("command-reply", reply) == []
    assert errors("command-reply", {**reply, "state": "maybe"})


def test_topic_layout() -> None:
    assert availability_topic("chorus", "pi-1") == "chorus/pi-1/availability"
    assert status_topic("a/b", "pi-1") == "a/b/pi-1/status"
    assert command_topic("chorus", "pi-1", "update") == "chorus/pi-1/cmd/update"
    assert reply_topic("chorus", "pi-1", "update") == "chorus/pi-1/reply/update"
    assert group_command_topic("chorus", "north", "update") == "chorus/_group/north/cmd/update"
    assert fleet_command_topic("chorus", "rollback") == "chorus/_all/cmd/rollback"
    assert parse_device_topic("chorus", "chorus/pi-1/detections") == ("pi-1", "detections")
    assert parse_device_topic("a/b", "a/b/pi-1/status") == ("pi-1", "status")
    for bad in ("chorus/pi-1/cmd/update", "other/pi-1/detections", "chorus/_all/detections"):
        assert parse_device_topic("chorus", bad) is None
    with pytest.raises(ValueError):
        group_command_topic("chorus", "a/b", "update")


def test_home_assistant_discovery_messages() -> None:
    msgs = dict(discovery_messages("homeassistant", "chorus", "field.01"))
    assert node_id("field.01") == "field_01"
    assert set(msgs) == {
        "homeassistant/sensor/field_01/last_species/config",
        "homeassistant/sensor/field_01/detections/config",
        "homeassistant/binary_sensor/field_01/online/config",
        "homeassistant/sensor/field_01/outbox_depth/config",
        "homeassistant/sensor/field_01/real_time_factor/config",
    }
    configs = {t: json.loads(p) for t, p in msgs.items()}
    species = configs["homeassistant/sensor/field_01/last_species/config"]
    assert species["state_topic"] == "chorus/field.01/detections"
    assert species["value_template"] == "{{ value_json.species.common_name }}"
    assert species["availability_topic"] == "chorus/field.01/availability"
    online = configs["homeassistant/binary_sensor/field_01/online/config"]
    assert (online["payload_on"], online["payload_off"]) == ("online", "offline")
    assert online["device_class"] == "connectivity"
    count = configs["homeassistant/sensor/field_01/detections/config"]
    assert count["state_topic"] == "chorus/field.01/status"
    assert count["state_class"] == "total_increasing"
    ids = [c["unique_id"] for c in configs.values()]
    assert len(set(ids)) == len(ids)
    assert all(c["device"]["identifiers"] == ["chorus_field_01"] for c in configs.values())


def test_secret_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    secret = tmp_path / "pw"
    secret.write_text("s3cret pw\n")
    secret.chmod(0o600)
    assert read_secret_file(str(secret), "x") == "s3cret pw"
    secret.chmod(0o644)
    with pytest.raises(CredentialError, match=r"readable by every user.*chmod o-rwx"):
        read_secret_file(str(secret), "mqtt.password_file")
    secret.chmod(0o640)  # group-readable is fine (e.g. root:chorus)
    assert read_secret_file(str(secret), "x") == "s3cret pw"

    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "mqtt-password").write_text("from-systemd")
    (creds / "mqtt-password").chmod(0o400)
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    with pytest.raises(CredentialError, match=r"CREDENTIALS_DIRECTORY is not set"):
        mqtt_password("mqtt-password", "UNUSED")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    assert mqtt_password("mqtt-password", "UNUSED") == "from-systemd"
    with pytest.raises(CredentialError, match="file not found"):
        mqtt_password("missing", "UNUSED")
    (creds / "empty").write_text("\n")
    os.chmod(creds / "empty", 0o600)
    with pytest.raises(CredentialError, match="is empty"):
        mqtt_password("empty", "UNUSED")
    monkeypatch.setenv("PW_ENV", "from-env")
    assert mqtt_password(None, "PW_ENV") == "from-env"
