"""OTA beyond one update in one process: ``chorus-agent run`` as a user runs it, HTTP
downloads with resume, restarts in the middle of a probation, the rollback command and the
broker's packet size limit."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from conftest import MosquittoBroker
from mqtt_helpers import wait_until

pytest.importorskip("ai_edge_litert")
pytest.importorskip("cryptography")

from ota_harness import (  # the harness
    DEMO,
    DEVICE,
    STATE_TOPIC,
    RunningAgent,
    make_bundle,
    nan_separator,
)

from agent.demo import write_demo_wav
from agent.detection.types import Detection
from agent.ota.announce import build_announcement, parse_announcement
from agent.ota.archive import pack_bundle
from agent.ota.signing import TrustedKeys, generate_key, load_private_key, sign_document
from agent.ota.store import ModelStore
from agent.ota.transfer import TransferError, download
from modeltools.ota.publish import Broker, PublishError, publish_rollback, publish_update

ROOT = Path(__file__).resolve().parents[2]


def test_chorus_agent_run_takes_an_update_over_mqtt(
    mosquitto_broker: Any, mqtt_subscriber: Callable, tmp_path: Path
) -> None:
    """The issue's end-to-end check with the real CLI: publish a signed bundle to a running
    agent; it verifies, smoke-tests, switches between windows and confirms; a bad bundle is
    refused with a state message while the new model keeps running."""
    key = tmp_path / "lab.key"
    _, public = generate_key(key)
    wav = tmp_path / "dawn.wav"
    write_demo_wav(wav, duration_s=45.0, seed=4)
    config = tmp_path / "agent.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "device_id": DEVICE,
                "audio": {"source": "file", "files": [str(wav)], "realtime": True},
                "inference": {"bundle": str(DEMO), "num_threads": 1},
                "detection": {"merge": False},  # a detection per window: some before the switch
                "mqtt": {
                    "enabled": True,
                    "host": mosquitto_broker.host,
                    "port": mosquitto_broker.port,
                    "outbox_path": str(tmp_path / "outbox.sqlite"),
                },
                "updates": {
                    "enabled": True,
                    "trusted_keys": [str(public)],
                    "store_dir": str(tmp_path / "store"),
                    "confirm_windows": 2,
                },
            }
        )
    )
    states = mqtt_subscriber(mosquitto_broker, STATE_TOPIC)
    detections = mqtt_subscriber(mosquitto_broker, f"chorus/{DEVICE}/detections")
    online = mqtt_subscriber(mosquitto_broker, f"chorus/{DEVICE}/availability")
    env = {**os.environ, "XDG_STATE_HOME": str(tmp_path / "state")}
    agent = subprocess.Popen(
        [sys.executable, "-m", "agent", "run", "--config", str(config)],
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env=env,
    )

    def states_of(rid: str) -> list[dict[str, Any]]:
        decoded = (json.loads(m.payload) for m in states.messages)
        return [m for m in decoded if m["request_id"] == rid]

    def publish(bundle: Path) -> str:
        return publish_update(
            bundle,
            key,
            host=mosquitto_broker.host,
            port=mosquitto_broker.port,
            target=f"device:{DEVICE}",
        ).request_id

    try:
        assert wait_until(lambda: any(m.payload == b"online" for m in online.messages), 30)
        assert wait_until(lambda: bool(detections.messages), 30)  # the factory model at work
        rid = publish(make_bundle(tmp_path, "0.2.0", key))
        assert wait_until(lambda: any(m["state"] == "confirmed" for m in states_of(rid)), 40)
        bad = publish(make_bundle(tmp_path, "0.3.0", key, nan_separator))
        assert wait_until(lambda: any(m["state"] == "refused" for m in states_of(bad)), 40)
    finally:
        agent.send_signal(signal.SIGTERM)
        _, stderr = agent.communicate(timeout=30)
    assert agent.returncode == 0, stderr[-3000:]
    refused = states_of(bad)[-1]
    assert "separator outputs NaN/Inf" in refused["reason"]
    assert refused["active"]["version"] == "0.2.0"
    versions = [json.loads(m.payload)["model"]["version"] for m in detections.messages]
    assert set(versions) == {"0.1.0", "0.2.0"} and versions[-1] == "0.2.0"
    assert ModelStore(tmp_path / "store", DEMO).current().name == "chorus-demo-0.2.0"


# ---------------------------------------------------------------------------------------------
# HTTP(S) transfer


class _RangeServer:
    """Serves one file over HTTP with Range support; records the Range headers it saw."""

    def __init__(self, path: Path) -> None:
        ranges: list[str | None] = []
        self.ranges = ranges

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                data = path.read_bytes()
                wanted = self.headers.get("Range")
                ranges.append(wanted)
                start = int(wanted.split("=")[1].split("-")[0]) if wanted else 0
                self.send_response(206 if wanted else 200)
                if wanted:
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                self.send_header("Content-Length", str(len(data) - start))
                self.end_headers()
                self.wfile.write(data[start:])

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/bundle.tar.gz"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def http_file(tmp_path: Path) -> Iterator[Callable[[Path], _RangeServer]]:
    servers: list[_RangeServer] = []

    def serve(path: Path) -> _RangeServer:
        servers.append(_RangeServer(path))
        return servers[-1]

    yield serve
    for s in servers:
        s.close()


def test_download_resumes_a_partial_archive(
    tmp_path: Path, http_file: Callable[[Path], _RangeServer]
) -> None:
    key = tmp_path / "k.key"
    _, public = generate_key(key)
    archive = tmp_path / "served.tar.gz"
    archive.write_bytes(os.urandom(300_000))
    server = http_file(archive)
    data = archive.read_bytes()
    doc = build_announcement(
        name="x",
        version="1.0.0",
        sha256=hashlib.sha256(data).hexdigest(),
        size_bytes=len(data),
        url=server.url,
        target="all",
    )
    ann = parse_announcement(
        sign_document(doc, load_private_key(key)), TrustedKeys.load([str(public)])
    )
    job = tmp_path / "job"
    job.mkdir()
    (job / "archive.tar.gz.part").write_bytes(data[:120_000])  # the link dropped here
    out = download(ann, job, threading.Event())
    assert out.read_bytes() == data and server.ranges == ["bytes=120000-"]
    # Bytes that prove wrong are thrown away, never resumed onto.
    (job / "archive.tar.gz.part").write_bytes(b"\0" * 120_000)
    out.unlink()
    with pytest.raises(TransferError, match="does not match the announced sha256"):
        download(ann, job, threading.Event())
    assert not (job / "archive.tar.gz.part").exists()


def test_update_announced_by_url(
    running: Callable[..., RunningAgent],
    tmp_path: Path,
    http_file: Callable[[Path], _RangeServer],
    baseline: list[Detection],
) -> None:
    agent = running()
    bundle = make_bundle(tmp_path, "0.2.0", agent.key)
    archive = tmp_path / "upload" / "bundle.tar.gz"
    pack_bundle(bundle, archive)  # what the researcher uploads (packing is deterministic)
    server = http_file(archive)
    rid = agent.publish(bundle, url=server.url)
    agent.wait_state("activated", rid)
    assert agent.version == "0.2.0" and server.ranges == [None]
    agent.check_no_loss(baseline)
    agent.close()


# ---------------------------------------------------------------------------------------------
# Restarts, rollback command, broker limits


def _activated_by_hand(tmp_path: Path, version: str) -> ModelStore:
    """A store whose current bundle was activated and not yet confirmed (then a restart)."""
    store = ModelStore(tmp_path / "store", DEMO)
    store.incoming_dir.mkdir(parents=True, exist_ok=True)
    copy = make_bundle(tmp_path, version, None)
    installed = store.install(copy.rename(store.incoming_dir / "x"), "chorus-demo", version)
    store.activate(installed, "r-before-restart", "test")
    return store


def test_probation_goes_on_after_a_restart_and_confirms(
    running: Callable[..., RunningAgent], tmp_path: Path
) -> None:
    store = _activated_by_hand(tmp_path, "0.2.0")
    agent = running()  # builds the engine from the store: 0.2.0, pending
    assert agent.version == "0.2.0"
    confirmed = agent.wait_state("confirmed", "r-before-restart")
    assert confirmed["bundle"]["version"] == "0.2.0"
    assert store.read_state()["pending"] is None
    agent.close()


def test_failures_after_a_restart_roll_back_to_the_previous_bundle(
    running: Callable[..., RunningAgent], tmp_path: Path
) -> None:
    store = _activated_by_hand(tmp_path, "0.2.0")
    agent = running(confirm_windows=50)
    for clf in agent.engine.models.classifiers:
        clf.classify = lambda channels: np.full((channels.shape[0], 6), np.nan, np.float32)
    agent.pump(2)
    rolled = agent.wait_state("rolled_back", "r-before-restart")
    assert rolled["active"]["version"] == "0.1.0" and agent.version == "0.1.0"
    assert store.current() == DEMO.resolve()
    agent.close()


def test_crash_loop_is_rolled_back_before_the_models_load(
    running: Callable[..., RunningAgent], tmp_path: Path
) -> None:
    store = _activated_by_hand(tmp_path, "0.2.0")
    for _ in range(3):  # three starts that never confirmed: the agent died each time
        store.startup(max_restarts=3)
    agent = running()  # the fourth start: rolled back before any model is loaded
    assert agent.version == "0.1.0" and store.current() == DEMO.resolve()
    rolled = agent.wait_state("rolled_back")
    assert "not confirmed after 3 restart(s)" in rolled["reason"]
    assert store.is_refused("chorus-demo", "0.2.0")
    agent.close()


def test_rollback_command(
    mosquitto_broker: Any, running: Callable[..., RunningAgent], tmp_path: Path
) -> None:
    agent = running()
    rid = agent.publish(make_bundle(tmp_path, "0.2.0", agent.key))
    agent.pump(1)
    agent.wait_state("confirmed", rid)
    where = Broker(mosquitto_broker.host, mosquitto_broker.port)
    generate_key(tmp_path / "stranger.key")
    stranger = publish_rollback(tmp_path / "stranger.key", where, target=f"device:{DEVICE}")
    assert "does not trust" in agent.wait_state("refused", stranger)["reason"]
    assert agent.version == "0.2.0"
    cmd = publish_rollback(agent.key, where, target="all")
    rolled = agent.wait_state("rolled_back", cmd)
    assert f"requested by rollback command {cmd}" in rolled["reason"]
    assert agent.version == "0.1.0" and rolled["active"]["version"] == "0.1.0"
    agent.close()


class _LimitedBroker(MosquittoBroker):
    """Mosquitto with a maximum packet size (advertised to MQTT 5 clients in CONNACK)."""

    def _write_config(self) -> None:
        super()._write_config()
        with self.conf_path.open("a") as f:
            f.write("max_packet_size 100000\n")


def test_publisher_respects_the_broker_packet_limit(tmp_path: Path) -> None:
    pytest.importorskip("paho.mqtt")
    from conftest import MOSQUITTO

    if MOSQUITTO is None:
        pytest.skip("mosquitto is not installed")
    broker = _LimitedBroker(tmp_path / "broker")
    broker.start(pick_new_port_on_clash=True)
    key = tmp_path / "k.key"
    generate_key(key)
    bundle = make_bundle(tmp_path, "0.2.0", key)
    where = {"host": broker.host, "port": broker.port, "target": "group:north"}
    try:
        with pytest.raises(PublishError, match="accepts packets up to 100000 bytes"):
            publish_update(bundle, key, chunk_bytes=256 * 1024, **where)
        result = publish_update(bundle, key, chunk_bytes=64 * 1024, **where)
        assert result.chunks == -(-result.archive_bytes // (64 * 1024))
    finally:
        broker.stop()
