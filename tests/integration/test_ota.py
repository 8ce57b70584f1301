"""OTA model updates end to end: a real Mosquitto, a running pipeline (run_live), real LiteRT.

Each test runs the agent's live loop in a thread on demo audio that the test releases chunk by
chunk (one window per chunk), publishes with the real publisher (or crafts the bad input by
hand), and follows ``chorus/<device>/models/state``. "No detection lost" is checked against a
baseline run of the same audio without updates: same windows, same detections.
"""

from __future__ import annotations

import base64
import json
import tarfile
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from mqtt_helpers import RawPublisher

pytest.importorskip("ai_edge_litert")
pytest.importorskip("cryptography")

from ota_harness import (  # the harness
    DEMO,
    GROUP_TOPIC,
    UPDATE_TOPIC,
    RunningAgent,
    bundle_members,
    make_bundle,
    nan_separator,
    raw_archive,
)

from agent.detection.types import Detection
from agent.models.manifest import MANIFEST_NAME
from agent.ota.announce import chunk_topic
from agent.ota.archive import pack_bundle
from agent.ota.signing import (
    SIGNATURE_NAME,
    generate_key,
    load_private_key,
)
from modeltools.ota.publish import publish_update

# ---------------------------------------------------------------------------------------------
# The update that works


def test_signed_update_activates_between_windows_and_confirms(
    running: Callable[..., RunningAgent], tmp_path: Path, baseline: list[Detection]
) -> None:
    agent = running()
    bundle = make_bundle(tmp_path, "0.2.0", agent.key)
    windows_before = agent.engine.stats.windows
    started = datetime.now(UTC)
    t0 = time.perf_counter()
    rid = agent.publish(bundle)
    activated = agent.wait_state("activated", rid)
    activate_s = time.perf_counter() - t0
    assert agent.version == "0.2.0" and activated["active"]["version"] == "0.2.0"
    # The old model kept running while the update was received, verified and smoke-tested.
    assert agent.engine.stats.windows > windows_before
    agent.pump(3)
    confirmed = agent.wait_state("confirmed", rid)
    assert confirmed["detail"]["healthy_windows"] >= 3
    store = agent.updater.store
    assert store.current().name == "chorus-demo-0.2.0" and store.previous() == DEMO.resolve()
    assert store.read_state()["pending"] is None

    states = [m["state"] for m in agent.messages() if m["request_id"] == rid]
    assert states[0] == "announced" and states[-1] == "confirmed"
    for s in ("received", "verified", "smoke_tested", "activated"):
        assert s in states
    # The switch lands wherever the update finished (timing); pump on until a window of the
    # new model has a detection, so the version order below is checked on both sides.
    while not any(d.bundle_version == "0.2.0" for d in agent.sink.detections):
        assert agent.source.total - agent.source.allowed > 0, "no detection after the switch"
        agent.pump(1)
    # No window and no detection lost across the switch, and it happened between windows.
    agent.check_no_loss(baseline)
    versions = [d.bundle_version for d in agent.sink.detections]
    assert "0.1.0" in versions and "0.2.0" in versions
    assert versions == sorted(versions)  # old model strictly before the new one

    times = {
        m["state"]: datetime.fromisoformat(m["time_utc"].replace("Z", "+00:00"))
        for m in agent.messages()
        if m["request_id"] == rid
    }
    size = sum(p.stat().st_size for p in bundle.rglob("*") if p.is_file())
    print(
        f"\nOTA demo bundle ({size / 1e6:.2f} MB, 8 chunks of 256 KiB): "
        + ", ".join(f"{s} +{(t - started).total_seconds():.2f} s" for s, t in times.items())
        + f"; publish->activated {activate_s:.2f} s"
    )

    # A bad bundle after that: refused with a state message, 0.2.0 keeps running.
    bad = make_bundle(tmp_path, "0.3.0", agent.key)
    data = bytearray((bad / "classifier_a.tflite").read_bytes())
    data[-100] ^= 0x01  # one file altered after signing
    (bad / "classifier_a.tflite").write_bytes(bytes(data))
    doc = agent.publish_raw(raw_archive(bundle_members(bad)), version="0.3.0")
    refused = agent.wait_state("refused", doc["request_id"])
    assert "classifier_a.tflite does not match its sha256" in refused["reason"]
    assert agent.version == "0.2.0" and refused["active"]["version"] == "0.2.0"
    agent.pump(2)
    agent.check_no_loss(baseline)
    agent.close()


def test_group_roll_out_reaches_a_device_that_comes_online_later(
    mosquitto_broker: Any,
    running: Callable[..., RunningAgent],
    tmp_path: Path,
) -> None:
    """Staged roll-out: published to a group before the device is up; retained, so the
    device finds it when it starts. Chunked small to exercise many chunks."""
    key = tmp_path / "publisher.key"
    _, public = generate_key(key)
    bundle = make_bundle(tmp_path, "0.2.0", key)
    result = publish_update(
        bundle,
        key,
        host=mosquitto_broker.host,
        port=mosquitto_broker.port,
        target="group:north",
        chunk_bytes=64 * 1024,
    )
    assert result.chunks == 32 and result.topic == "chorus/_group/north/cmd/update"
    agent = running(groups=["north"], trusted_keys=[str(public)])
    agent.wait_state("activated", result.request_id)
    assert agent.version == "0.2.0"
    # A newer publish to the group clears the retained chunks of the older one.
    newer = make_bundle(tmp_path, "0.3.0", key)
    second = publish_update(
        newer,
        key,
        host=mosquitto_broker.host,
        port=mosquitto_broker.port,
        target="group:north",
        chunk_bytes=1 << 20,
    )
    assert second.chunks == 2 and second.cleared == 32
    agent.pump(3)
    agent.wait_state("confirmed", result.request_id)
    agent.wait_state("activated", second.request_id)
    assert agent.version == "0.3.0"
    agent.close()


def test_group_push_to_two_agents_tampered_refused_and_nan_kept_out(
    mosquitto_broker: Any,
    running: Callable[..., RunningAgent],
    tmp_path: Path,
    baseline: list[Detection],
) -> None:
    """The issue's end-to-end case: one signed publish to a group; two agents on loopback
    receive, verify, smoke-test and switch between windows without losing one; a bundle
    altered after signing is refused by both; a NaN-producing bundle never becomes active."""
    key = tmp_path / "publisher.key"
    _, public = generate_key(key)
    where = {"host": mosquitto_broker.host, "port": mosquitto_broker.port, "target": "group:north"}
    fleet = [
        running(device=d, groups=["north"], trusted_keys=[str(public)])
        for d in ("north-1", "north-2")
    ]
    bad = make_bundle(tmp_path, "0.2.0", key)
    data = bytearray((bad / "classifier_a.tflite").read_bytes())
    data[-100] ^= 0x01  # one file altered after signing
    (bad / "classifier_a.tflite").write_bytes(bytes(data))
    # publish_update itself refuses an altered bundle, so it goes out by hand, to the group.
    doc = fleet[0].publish_raw(
        raw_archive(bundle_members(bad)), version="0.2.0", key=key, topic=GROUP_TOPIC
    )
    for agent in fleet:
        msg = agent.wait_state("refused", doc["request_id"])
        assert "does not match its sha256" in msg["reason"] and agent.version == "0.1.0"

    good = publish_update(make_bundle(tmp_path, "0.3.0", key), key, **where)
    for agent in fleet:
        assert agent.wait_state("activated", good.request_id)["active"]["version"] == "0.3.0"
    for agent in fleet:
        agent.pump(3)
        agent.wait_state("confirmed", good.request_id)
        agent.check_no_loss(baseline)  # no window missed across the switch
        assert agent.engine.stats.window_errors == 0 and agent.version == "0.3.0"

    nan = publish_update(make_bundle(tmp_path, "0.4.0", key, nan_separator), key, **where)
    for agent in fleet:
        msg = agent.wait_state("refused", nan.request_id)
        assert "NaN" in msg["reason"] and agent.version == "0.3.0"
        agent.pump(2)
        agent.check_no_loss(baseline)
        agent.close()


def test_chunks_out_of_order_and_repeated_still_install(
    running: Callable[..., RunningAgent], tmp_path: Path
) -> None:
    agent = running()
    bundle = make_bundle(tmp_path, "0.2.0", agent.key)
    archive = tmp_path / "a.tar.gz"
    pack_bundle(bundle, archive)
    n = -(-archive.stat().st_size // (256 * 1024))
    order = [*reversed(range(n)), 0, 3, 3]  # reversed, and some twice
    doc = agent.publish_raw(archive.read_bytes(), version="0.2.0", order=order)
    agent.wait_state("activated", doc["request_id"])
    assert agent.version == "0.2.0"
    agent.close()


def test_window_errors_after_activation_roll_back(
    running: Callable[..., RunningAgent], tmp_path: Path, baseline: list[Detection]
) -> None:
    """A model that passes the smoke test but fails on live audio is rolled back to the
    models still held in memory, at the next window."""
    agent = running(confirm_windows=50)
    rid = agent.publish(make_bundle(tmp_path, "0.2.0", agent.key))
    agent.wait_state("activated", rid)
    for clf in agent.engine.models.classifiers:  # break the new models only
        clf.classify = lambda channels: np.full((channels.shape[0], 6), np.nan, np.float32)
    agent.pump(2)
    rolled = agent.wait_state("rolled_back", rid)
    assert "failed window" in rolled["reason"] and rolled["active"]["version"] == "0.1.0"
    assert agent.version == "0.1.0"
    store = agent.updater.store
    assert store.current() == DEMO.resolve() and store.is_refused("chorus-demo", "0.2.0")
    # Republishing the same version is refused now unless forced.
    rid2 = agent.publish(make_bundle(tmp_path, "0.2.0", agent.key))
    assert "rolled back on this device" in agent.wait_state("refused", rid2)["reason"]
    agent.close()


# ---------------------------------------------------------------------------------------------
# Bad input: each refused with a state message; the running model keeps running, no loss


def _refused(agent: RunningAgent, rid: str, baseline: list[Detection], contains: str = "") -> str:
    message = agent.wait_state("refused", rid, contains)
    assert agent.version == "0.1.0" and message["active"]["version"] == "0.1.0"
    assert agent.updater.store.current() == DEMO.resolve()
    agent.pump(2)
    agent.check_no_loss(baseline)
    return str(message["reason"])


def test_unsigned_bundle_is_refused(
    running: Callable[..., RunningAgent], tmp_path: Path, baseline: list[Detection]
) -> None:
    agent = running()
    bundle = make_bundle(tmp_path, "0.2.0", None)
    doc = agent.publish_raw(raw_archive(bundle_members(bundle)), version="0.2.0")
    assert "not signed" in _refused(agent, doc["request_id"], baseline)
    agent.close()


def test_bundle_signed_by_an_untrusted_key_is_refused(
    running: Callable[..., RunningAgent], tmp_path: Path, baseline: list[Detection]
) -> None:
    agent = running()
    generate_key(tmp_path / "stranger.key")
    bundle = make_bundle(tmp_path, "0.2.0", tmp_path / "stranger.key")
    doc = agent.publish_raw(raw_archive(bundle_members(bundle)), version="0.2.0")
    assert "which this device does not trust" in _refused(agent, doc["request_id"], baseline)
    # And an announcement signed by a stranger is refused before anything is downloaded.
    doc = agent.publish_raw(b"x" * 10, version="0.2.0", key=tmp_path / "stranger.key")
    assert "does not trust" in _refused(agent, doc["request_id"], baseline)
    agent.close()


def test_truncated_chunk_stream_is_refused(
    running: Callable[..., RunningAgent], tmp_path: Path, baseline: list[Detection]
) -> None:
    agent = running(transfer_timeout_s=3.0)
    bundle = make_bundle(tmp_path, "0.2.0", agent.key)
    archive = raw_archive(bundle_members(bundle))
    doc = agent.publish_raw(archive, version="0.2.0", order=[0, 1, 2])  # the rest never comes
    reason = _refused(agent, doc["request_id"], baseline)
    assert "incomplete transfer: 3 of" in reason
    assert not any((agent.updater.store.incoming_dir).iterdir())  # nothing half-written left


def test_altered_chunk_is_refused(
    running: Callable[..., RunningAgent], tmp_path: Path, baseline: list[Detection]
) -> None:
    agent = running()
    bundle = make_bundle(tmp_path, "0.2.0", agent.key)
    archive = raw_archive(bundle_members(bundle))
    doc = agent.publish_raw(archive, version="0.2.0", order=[0])
    pub = RawPublisher(agent.broker.host, agent.broker.port)
    try:  # chunk 1 truncated in transit
        topic = chunk_topic(UPDATE_TOPIC, doc["request_id"], 1)
        pub.publish(topic, archive[256 * 1024 : 256 * 1024 + 1000], retain=True)
    finally:
        pub.close()
    assert "chunk 1 is 1000 bytes" in _refused(agent, doc["request_id"], baseline)
    agent.close()


def test_manifest_with_path_traversal_is_refused(
    running: Callable[..., RunningAgent], tmp_path: Path, baseline: list[Detection]
) -> None:
    agent = running()
    bundle = make_bundle(tmp_path, "0.2.0", agent.key)
    manifest = json.loads((bundle / MANIFEST_NAME).read_text())
    manifest["files"]["../../../etc/cron.d/x"] = manifest["files"]["labels.csv"]
    manifest_bytes = json.dumps(manifest).encode()
    signature = json.loads((bundle / SIGNATURE_NAME).read_text())
    signature["signature"] = base64.b64encode(
        load_private_key(agent.key).sign(manifest_bytes)
    ).decode()
    members = [
        (MANIFEST_NAME, manifest_bytes, tarfile.REGTYPE),
        (SIGNATURE_NAME, json.dumps(signature).encode(), tarfile.REGTYPE),
        *[m for m in bundle_members(bundle) if m[0] not in (MANIFEST_NAME, SIGNATURE_NAME)],
    ]
    doc = agent.publish_raw(raw_archive(members), version="0.2.0")
    assert "stay inside the bundle" in _refused(agent, doc["request_id"], baseline)
    agent.close()


@pytest.mark.parametrize(
    ("extra", "reason"),
    [
        (("labels.csv", None, tarfile.SYMTYPE), "links are refused"),
        (("labels.csv", None, tarfile.LNKTYPE), "links are refused"),
        (("/etc/chorus-owned", b"x", tarfile.REGTYPE), "absolute path"),
    ],
    ids=["symlink", "hardlink", "absolute"],
)
def test_archive_with_links_or_absolute_paths_is_refused(
    running: Callable[..., RunningAgent],
    tmp_path: Path,
    baseline: list[Detection],
    extra: tuple[str, bytes | None, bytes],
    reason: str,
) -> None:
    agent = running()
    bundle = make_bundle(tmp_path, "0.2.0", agent.key)
    members = [m for m in bundle_members(bundle) if m[0] != extra[0]] + [extra]
    doc = agent.publish_raw(raw_archive(members), version="0.2.0")
    assert reason in _refused(agent, doc["request_id"], baseline)
    agent.close()


def test_model_with_mismatched_shapes_is_refused(
    running: Callable[..., RunningAgent], tmp_path: Path, baseline: list[Detection]
) -> None:
    agent = running()

    def three_sources(bundle: Path, fields: dict[str, Any]) -> None:
        fields["separator"]["num_sources"] = 3  # the model outputs 4

    rid = agent.publish(make_bundle(tmp_path, "0.2.0", agent.key, three_sources))
    reason = _refused(agent, rid, baseline)
    assert "smoke test" in reason and "shape is [1, 4, 110250]" in reason
    assert not (agent.updater.store.models_dir / "chorus-demo-0.2.0").exists()
    agent.close()


def test_model_that_outputs_nan_is_refused(
    running: Callable[..., RunningAgent], tmp_path: Path, baseline: list[Detection]
) -> None:
    agent = running()
    rid = agent.publish(make_bundle(tmp_path, "0.2.0", agent.key, nan_separator))
    assert "separator outputs NaN/Inf" in _refused(agent, rid, baseline)
    agent.close()


def test_model_too_slow_for_the_budget_is_refused(
    running: Callable[..., RunningAgent], tmp_path: Path, baseline: list[Detection]
) -> None:
    agent = running(latency_budget_ms=0.01)  # no real model runs a window in 10 µs
    rid = agent.publish(make_bundle(tmp_path, "0.2.0", agent.key))
    assert "too slow" in _refused(agent, rid, baseline)
    agent.close()


def test_downgrade_is_refused_unless_forced(
    running: Callable[..., RunningAgent], tmp_path: Path, baseline: list[Detection]
) -> None:
    agent = running()
    older = make_bundle(tmp_path, "0.0.9", agent.key)
    rid = agent.publish(older)
    assert "downgrade refused" in _refused(agent, rid, baseline)
    rid = agent.publish(older, force=True)
    agent.wait_state("activated", rid)
    assert agent.version == "0.0.9"
    agent.close()


def test_replayed_or_stale_announcements_are_refused(
    running: Callable[..., RunningAgent], baseline: list[Detection]
) -> None:
    agent = running()
    first = agent.publish_raw(b"x" * 10, version="0.0.9")  # signed; refused as a downgrade
    assert "downgrade refused" in _refused(agent, first["request_id"], baseline)
    stale = agent.publish_raw(
        b"y" * 10, version="0.2.0", issued_utc=datetime.now(UTC) - timedelta(days=1)
    )
    assert "stale announcement" in _refused(agent, stale["request_id"], baseline)
    pub = RawPublisher(agent.broker.host, agent.broker.port)
    try:  # someone replays the first announcement, byte for byte
        pub.publish(UPDATE_TOPIC, json.dumps(first), retain=True)
    finally:
        pub.close()
    reason = _refused(agent, first["request_id"], baseline, contains="replayed")
    assert f"request {first['request_id']} was already handled" in reason
    agent.close()
