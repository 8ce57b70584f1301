"""The agent's MQTT protocol on a real Mosquitto: availability and Last Will, the retained
status heartbeat, Home Assistant discovery, payload contracts, TLS and credentials."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import yaml
from mqtt_helpers import DEMO_BUNDLE, agent_config, make_detection, wait_until

from agent.credentials import CredentialError
from agent.demo import write_demo_wav
from agent.schemas import validator
from agent.sinks.mqtt import MqttSink
from agent.sinks.mqtt_output import MqttOutput

if TYPE_CHECKING:
    from conftest import MessageCollector, MosquittoBroker
    from fault_tools import TlsFiles

    Factory = Callable[..., MosquittoBroker]
    Subscribe = Callable[..., MessageCollector]

ROOT = Path(__file__).resolve().parents[2]


def texts(sub: MessageCollector) -> list[str]:
    return [m.payload.decode() for m in sub.messages]


def test_clean_close_publishes_offline_and_leaves_it_retained(
    mosquitto_broker: MosquittoBroker, mqtt_subscriber: Subscribe, tmp_path: Path
) -> None:
    sub = mqtt_subscriber(mosquitto_broker, "chorus/field-01/availability")
    out = MqttOutput(
        agent_config(mosquitto_broker.host, mosquitto_broker.port, tmp_path / "o.sqlite")
    )
    assert wait_until(lambda: texts(sub) == ["online"])
    out.close()
    assert wait_until(lambda: texts(sub) == ["online", "offline"])
    later = mqtt_subscriber(mosquitto_broker, "chorus/field-01/availability")
    msgs = later.wait_for(1)
    assert [(m.payload, m.retain) for m in msgs] == [(b"offline", True)]


def test_killed_agent_goes_offline_by_last_will_and_reports_status(
    mosquitto_broker: MosquittoBroker, mqtt_subscriber: Subscribe, tmp_path: Path
) -> None:
    """A real ``chorus-agent run``: heartbeat, discovery, detections, then SIGKILL."""
    wav = tmp_path / "dawn.wav"
    write_demo_wav(wav, duration_s=20.0, seed=3)
    config = {
        "device_id": "field-07",
        "audio": {"source": "file", "files": [str(wav)], "realtime": False, "loop": True},
        "mqtt": {
            "enabled": True,
            "host": mosquitto_broker.host,
            "port": mosquitto_broker.port,
            "outbox_path": str(tmp_path / "outbox.sqlite"),
            "status_interval_s": 0.5,
            "homeassistant": {"enabled": True},
        },
        "location": {"latitude_deg": 51.75, "longitude_deg": -1.25},
        "inference": {"bundle": str(DEMO_BUNDLE)},  # its species are the demo audio's
    }
    cfg_path = tmp_path / "agent.yaml"
    cfg_path.write_text(yaml.safe_dump(config))
    device = mqtt_subscriber(mosquitto_broker, "chorus/field-07/#")
    discovery = mqtt_subscriber(mosquitto_broker, "homeassistant/#")
    proc = subprocess.Popen(
        [sys.executable, "-m", "agent", "run", "--config", str(cfg_path)],
        stderr=subprocess.DEVNULL,
        cwd=ROOT,
    )
    try:

        def on(kind: str) -> list[Any]:
            return [m for m in device.messages if m.topic == f"chorus/field-07/{kind}"]

        assert wait_until(lambda: len(on("status")) >= 3 and len(on("detections")) >= 5, 30.0), (
            device.messages[-3:]
        )
        assert [m.payload for m in on("availability")] == [b"online"]
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    # The broker notices the dead socket and publishes the Last Will.
    assert wait_until(lambda: [m.payload for m in on("availability")][-1:] == [b"offline"], 10.0)

    statuses = [json.loads(m.payload) for m in on("status")]
    for s in statuses:
        assert list(validator("status").iter_errors(s)) == []
    last = statuses[-1]
    assert last["device"] == "field-07" and last["model"]["bundle"] == "chorus-demo"
    assert last["pipeline"]["windows"] > 0 and last["pipeline"]["detections"] > 0
    assert last["audio"]["source"].endswith("dawn.wav")
    assert last["disk"]["path"] == str(tmp_path) and last["disk"]["free_bytes"] > 0
    assert statuses[-1]["uptime_s"] >= statuses[0]["uptime_s"]
    for m in on("detections"):
        payload = json.loads(m.payload)
        assert list(validator("detection").iter_errors(payload)) == []
        assert payload["location"] == {"latitude_deg": 51.75, "longitude_deg": -1.25}
    assert len(discovery.wait_for(5)) == 5
    assert {json.loads(m.payload)["device"]["name"] for m in discovery.messages} == {
        "Chorus field-07"
    }
    # Retained: a subscriber arriving later learns the state at once.
    later = mqtt_subscriber(mosquitto_broker, "chorus/field-07/+")
    got = {m.topic: m for m in later.wait_for(2)}
    assert got["chorus/field-07/availability"].payload == b"offline"
    assert got["chorus/field-07/status"].retain
    assert "chorus/field-07/detections" not in got  # detections are never retained


# ---------------------------------------------------------------------------------------------
# TLS and credentials


@pytest.fixture
def tls_broker(mosquitto_factory: Factory, tls_files: TlsFiles) -> MosquittoBroker:
    """TLS only, client certificate required, password required (no anonymous access)."""
    return mosquitto_factory(
        passwords={"field-01": "pw for field-01", "central": "pw for central"},
        tls=tls_files,
        require_client_cert=True,
    )


def tls_config(broker: MosquittoBroker, files: TlsFiles, tmp_path: Path, **keys: Any) -> Any:
    secret = tmp_path / "mqtt-password"
    if not secret.exists():
        secret.write_text("pw for field-01\n")
        secret.chmod(0o600)
    mqtt = {
        "username": "field-01",
        "password_file": str(secret),
        "tls": {
            "enabled": True,
            "ca_file": str(files.ca_cert),
            "cert_file": str(files.client_cert),
            "key_file": str(files.client_key),
        },
        "reconnect_backoff": {"initial_s": 0.2, "max_s": 0.5},
    }
    for key, value in keys.items():
        if isinstance(value, dict):
            mqtt[key] = {**mqtt[key], **value}  # type: ignore[dict-item]
        else:
            mqtt[key] = value
    return agent_config(broker.host, broker.port, tmp_path / "o.sqlite", **mqtt)


def test_tls_with_client_certificate_and_password_delivers(
    tls_broker: MosquittoBroker,
    tls_files: TlsFiles,
    collector_factory: Callable[..., Any],
    tmp_path: Path,
) -> None:
    collector = collector_factory(
        tls_broker,
        username="central",
        password="pw for central",
        tls=True,
        tls_ca_file=str(tls_files.ca_cert),
        tls_cert_file=str(tls_files.client_cert),
        tls_key_file=str(tls_files.client_key),
    )
    out = MqttOutput(tls_config(tls_broker, tls_files, tmp_path))
    detections = [make_detection(i) for i in range(5)]
    for d in detections:
        out.emit(d)
    assert collector.wait_until(lambda s: s.stored == 5, 10.0)
    out.close()
    assert out.outbox.stats().depth == 0
    assert sorted(collector.store.ids()) == sorted(d.id for d in detections)


@pytest.mark.parametrize(
    "change",
    ["anonymous", "wrong_password", "no_client_cert", "untrusted_ca", "plain_tcp"],
)
def test_tls_broker_refuses_what_it_must(
    tls_broker: MosquittoBroker, tls_files: TlsFiles, tmp_path: Path, change: str
) -> None:
    keys: dict[str, Any] = {
        "anonymous": {"username": None},
        "wrong_password": {"password_file": None, "password_env": "CHORUS_TEST_WRONG"},
        "no_client_cert": {"tls": {"cert_file": None, "key_file": None}},
        "untrusted_ca": {"tls": {"ca_file": str(tls_files.other_ca_cert)}},
        "plain_tcp": {"tls": {"enabled": False}},
    }[change]
    os.environ["CHORUS_TEST_WRONG"] = "not the password"
    sink = MqttSink(tls_config(tls_broker, tls_files, tmp_path, **keys).mqtt, "field-01")
    try:
        assert wait_until(lambda: sink.stats().connect_failures >= 2, 10.0)
        assert sink.stats().connects == 0 and not sink.connected
    finally:
        sink.close(timeout_s=0.1)
        os.environ.pop("CHORUS_TEST_WRONG", None)


def test_an_untrusted_broker_certificate_is_reported_as_a_tls_failure(
    tls_broker: MosquittoBroker,
    tls_files: TlsFiles,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A wrong CA is a TLS verification failure naming the CA file, not an unreachable
    broker; the agent's selftest says the same."""
    from agent.selftest import check_broker

    caplog.set_level(logging.WARNING, logger="agent.sinks.mqtt")
    other_ca = str(tls_files.other_ca_cert)
    config = tls_config(tls_broker, tls_files, tmp_path, tls={"ca_file": other_ca})
    sink = MqttSink(config.mqtt, "field-01")
    try:
        assert wait_until(lambda: sink.stats().connect_failures >= 1, 10.0)
    finally:
        sink.close(timeout_s=0.1)
    logged = [r.getMessage() for r in caplog.records if r.name == "agent.sinks.mqtt"]
    broker = f"{tls_broker.host}:{tls_broker.port}"
    expected = f"TLS verification of MQTT broker {broker} failed against CA file {other_ca}"
    assert any(m.startswith(expected) for m in logged), logged
    assert any(r.levelno == logging.ERROR for r in caplog.records if r.name == "agent.sinks.mqtt")
    assert not any("cannot reach" in m for m in logged)
    check = check_broker(config)
    assert not check.ok and expected in check.detail


def test_world_readable_secrets_are_refused(
    tls_broker: MosquittoBroker, tls_files: TlsFiles, tmp_path: Path
) -> None:
    loose_key = tmp_path / "loose.key"
    loose_key.write_bytes(tls_files.client_key.read_bytes())
    loose_key.chmod(0o644)
    with pytest.raises(CredentialError, match=r"mqtt\.tls\.key_file: .* readable by every user"):
        MqttSink(
            tls_config(tls_broker, tls_files, tmp_path, tls={"key_file": str(loose_key)}).mqtt,
            "field-01",
        )
    pw = tmp_path / "mqtt-password"
    config = tls_config(tls_broker, tls_files, tmp_path)
    pw.chmod(0o604)
    with pytest.raises(CredentialError, match=r"mqtt\.password_file: .* readable by every user"):
        MqttOutput(config)
    # The agent says so in one line and exits 2 (no traceback).
    cfg_path = tmp_path / "agent.yaml"
    cfg_path.write_text(
        yaml.safe_dump(
            {
                "audio": {"source": "synthetic"},
                "mqtt": {
                    "enabled": True,
                    "username": "field-01",
                    "password_file": str(pw),
                    "outbox_path": str(tmp_path / "o2.sqlite"),
                },
            }
        )
    )
    proc = subprocess.run(
        [sys.executable, "-m", "agent", "run", "--config", str(cfg_path)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    errors = [x for x in proc.stderr.splitlines() if "error:" in x]
    assert len(errors) == 1 and "readable by every user" in errors[0], proc.stderr


def test_password_from_systemd_credentials_directory(
    mosquitto_factory: Factory,
    collector_factory: Callable[..., Any],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    broker = mosquitto_factory(passwords={"field-01": "from credential", "central": "c"})
    collector = collector_factory(broker, username="central", password="c")
    creds = tmp_path / "credentials"
    creds.mkdir()
    (creds / "mqtt-password").write_text("from credential")
    (creds / "mqtt-password").chmod(0o400)
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    out = MqttOutput(
        agent_config(
            broker.host,
            broker.port,
            tmp_path / "o.sqlite",
            username="field-01",
            password_file="mqtt-password",
        )
    )
    out.emit(make_detection(0))
    assert collector.wait_until(lambda s: s.stored == 1, 10.0)
    out.close()


BLOCK_MQTT = """
import importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] == 'paho' or name in ('agent.outbox', 'agent.sinks.mqtt_output'):
            raise ImportError(f'{name} is blocked: offline analysis must not need it')
sys.meta_path.insert(0, Block())
from agent.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_offline_analysis_never_touches_mqtt_or_the_outbox(tmp_path: Path) -> None:
    wav = tmp_path / "dawn.wav"
    write_demo_wav(wav, duration_s=10.0, seed=1)
    cfg = tmp_path / "agent.yaml"
    outbox = tmp_path / "state" / "outbox.sqlite"
    cfg.write_text(
        yaml.safe_dump({"mqtt": {"enabled": True, "port": 1, "outbox_path": str(outbox)}})
    )
    proc = subprocess.run(
        [sys.executable, "-c", BLOCK_MQTT, "analyze", str(wav), "-c", str(cfg), "-o",
         str(tmp_path / "out")],
        capture_output=True, text=True, timeout=120, cwd=ROOT,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "out" / "detections.jsonl").exists()
    assert not outbox.parent.exists()


def test_reconnect_attempts_back_off_with_jitter(
    mosquitto_factory: Factory, caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    import logging
    import re

    broker = mosquitto_factory(start=False)  # nobody listens: every attempt fails
    config = agent_config(
        broker.host,
        broker.port,
        tmp_path / "o.sqlite",
        reconnect_backoff={"initial_s": 0.1, "max_s": 0.4},
    )
    with caplog.at_level(logging.DEBUG, logger="agent.sinks.mqtt"):
        sink = MqttSink(config.mqtt, "field-01")
        assert wait_until(lambda: sink.stats().connect_failures >= 6, 10.0)
        sink.close(timeout_s=0.1)
    delays = [
        float(m.group(1))
        for r in caplog.records
        if (m := re.search(r"reconnecting to .* in ([0-9.]+) s", r.getMessage()))
    ]
    assert len(delays) >= 5
    ceilings = [min(0.4, 0.1 * 2**i) for i in range(len(delays))]
    assert all(c / 2 <= d <= c for d, c in zip(delays, ceilings, strict=True)), delays
    assert len(set(delays[2:])) > 1  # drawn at random, not fixed steps
