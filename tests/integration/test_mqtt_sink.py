"""MqttSink against a real mosquitto broker (see conftest.py): delivery, acks, outages, auth."""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from agent.config import MqttConfig
from agent.detection.types import DETECTION_SCHEMA, Detection
from agent.sinks import Sink
from agent.sinks.mqtt import MqttSink, detections_topic

if TYPE_CHECKING:  # the fixtures' types; conftest is not importable as a module at run time
    from conftest import MessageCollector, MosquittoBroker

    Factory = Callable[..., MosquittoBroker]
    Subscribe = Callable[..., MessageCollector]

T0 = datetime(2024, 5, 1, 4, 30, tzinfo=UTC)
PREFIX = "chorus-test"
DEVICE = "pi-01"
TOPIC = f"{PREFIX}/{DEVICE}/detections"


def make_detection(i: int = 0) -> Detection:
    return Detection(
        species_code="eurrob1",
        scientific_name="Erithacus rubecula",
        common_name='Robin, "the\tred"',
        confidence=0.9,
        logit=2.2,
        start_utc=T0 + timedelta(seconds=i),
        end_utc=T0 + timedelta(seconds=i + 5),
        start_s=float(i),
        end_s=float(i + 5),
        channel="mix",
        classifier="sep_logits",
        bundle_name="demo",
        bundle_version="1.0.0",
        device_id=DEVICE,
        source="mic:default",
    )


def config_for(broker: MosquittoBroker, **kw: Any) -> MqttConfig:
    return MqttConfig(enabled=True, host=broker.host, port=broker.port, topic_prefix=PREFIX, **kw)


def wait_until(predicate: Callable[[], bool], timeout_s: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


@pytest.fixture
def sinks() -> Any:
    """Collects sinks made by a test and closes them at teardown (short timeout)."""
    made: list[MqttSink] = []
    yield made
    for s in made:
        s.close(timeout_s=0.1)


def test_topic_and_device_id_validation() -> None:
    assert detections_topic("a/b", "dev-1") == "a/b/dev-1/detections"
    for bad in ("", "a/b", "a+", "#"):
        with pytest.raises(ValueError, match="device_id"):
            MqttSink(MqttConfig(), bad)


@pytest.mark.parametrize("qos", [0, 1, 2])
def test_detections_arrive_as_json_on_device_topic(
    mosquitto_broker: MosquittoBroker, mqtt_subscriber: Subscribe, sinks: list[MqttSink], qos: int
) -> None:
    sub = mqtt_subscriber(mosquitto_broker, TOPIC, qos=2)  # not availability
    sink = MqttSink(config_for(mosquitto_broker, qos=qos), DEVICE)
    sinks.append(sink)
    assert isinstance(sink, Sink)
    assert wait_until(lambda: sink.connected)  # QoS 0 is dropped while offline
    detections = [make_detection(i) for i in range(5)]
    for d in detections:
        sink.emit(d)

    msgs = sub.wait_for(5)
    assert len(msgs) == 5
    assert {m.topic for m in msgs} == {TOPIC}
    assert {m.qos for m in msgs} == {qos}
    assert not any(m.retain for m in msgs)
    payloads = [json.loads(m.payload.decode("utf-8")) for m in msgs]
    assert [p["schema"] for p in payloads] == [DETECTION_SCHEMA] * 5
    assert [p["id"] for p in payloads] == [d.id for d in detections]  # in order, ids kept
    assert payloads[0] == detections[0].to_payload()
    assert b", " not in msgs[0].payload.split(b'"common_name"')[0]  # compact separators

    sink.close()
    st = sink.stats()
    assert (st.published, st.acked, st.failed, st.pending, st.abandoned) == (5, 5, 0, 0, 0)


def test_close_waits_until_every_message_is_acknowledged(
    mosquitto_broker: MosquittoBroker, mqtt_subscriber: Subscribe
) -> None:
    sub = mqtt_subscriber(mosquitto_broker, TOPIC)
    sink = MqttSink(config_for(mosquitto_broker), DEVICE)
    assert wait_until(lambda: sink.connected)
    n = 300
    acks: list[int] = []
    lock = threading.Lock()

    def on_ack_for(i: int) -> Callable[[], None]:
        def on_ack() -> None:
            with lock:
                acks.append(i)

        return on_ack

    for i in range(n):
        assert sink.publish(make_detection(i).to_payload(), on_ack=on_ack_for(i))
    # close() right away: without waiting, disconnect would cut most of these off in flight
    sink.close(timeout_s=10.0)
    st = sink.stats()
    assert (st.published, st.acked, st.pending, st.abandoned) == (n, n, 0, 0)
    assert sorted(acks) == list(range(n))  # each on_ack exactly once
    assert len(sub.wait_for(n)) == n
    sink.close()  # idempotent: nothing changes
    assert sink.stats() == st
    with pytest.raises(ValueError, match="closed"):
        sink.emit(make_detection())


def test_sink_started_while_broker_down_delivers_once_it_is_up(
    mosquitto_factory: Factory, mqtt_subscriber: Subscribe, sinks: list[MqttSink]
) -> None:
    broker = mosquitto_factory(start=False)
    t = time.monotonic()
    sink = MqttSink(config_for(broker), DEVICE)  # must neither block nor raise
    sinks.append(sink)
    print(f"\nMqttSink() with the broker down returned in {1000 * (time.monotonic() - t):.1f} ms")
    detections = [make_detection(i) for i in range(3)]
    for d in detections:
        sink.emit(d)  # QoS 1: held in memory
    assert wait_until(lambda: sink.stats().connect_failures >= 1)
    st = sink.stats()
    assert not st.connected and st.pending == 3 and st.acked == 0 and st.failed == 0

    # paho's next attempt comes >= 1 s after that failure (measured: 3 s, see the report);
    # the subscriber is up within milliseconds, so it sees the queued messages.
    broker.start()
    sub = mqtt_subscriber(broker, TOPIC)
    assert sink.wait_for_acks(timeout_s=10.0)
    assert sink.connected
    msgs = sub.wait_for(3)
    assert [json.loads(m.payload)["id"] for m in msgs] == [d.id for d in detections]
    assert sink.stats().acked == 3


def test_full_memory_queue_refuses_instead_of_growing(
    mosquitto_factory: Factory, sinks: list[MqttSink], caplog: pytest.LogCaptureFixture
) -> None:
    broker = mosquitto_factory(start=False)  # a free port nobody listens on
    sink = MqttSink(config_for(broker), DEVICE, max_queued=2)
    sinks.append(sink)
    with caplog.at_level(logging.WARNING, logger="agent.sinks.mqtt"):
        results = [sink.publish(make_detection(i).to_payload()) for i in range(4)]
    assert results == [True, True, False, False]
    st = sink.stats()
    assert (st.published, st.pending, st.failed) == (4, 2, 2)
    refusals = [r for r in caplog.records if "publish refused" in r.getMessage()]
    assert len(refusals) == 1  # one warning per burst, not one per detection


def test_outage_mid_run_queues_and_resends(
    mosquitto_broker: MosquittoBroker, sinks: list[MqttSink], caplog: pytest.LogCaptureFixture
) -> None:
    sink = MqttSink(config_for(mosquitto_broker), DEVICE)
    sinks.append(sink)
    sink.emit(make_detection(0))
    assert sink.wait_for_acks(timeout_s=5.0)

    with caplog.at_level(logging.WARNING, logger="agent.sinks.mqtt"):
        mosquitto_broker.stop()
        assert wait_until(lambda: not sink.connected)
        for i in range(1, 4):
            sink.emit(make_detection(i))
        assert sink.stats().pending == 3
        mosquitto_broker.start()
        assert sink.wait_for_acks(timeout_s=10.0)
    st = sink.stats()
    assert (st.published, st.acked, st.pending, st.failed) == (4, 4, 0, 0)
    assert any("lost connection" in r.getMessage() for r in caplog.records)


def test_password_comes_from_the_environment(
    mosquitto_factory: Factory,
    mqtt_subscriber: Subscribe,
    sinks: list[MqttSink],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    broker = mosquitto_factory(passwords={"chorus": "s3cret pw", "reader": "r"})
    sub = mqtt_subscriber(broker, TOPIC, username="reader", password="r")
    monkeypatch.setenv("CHORUS_TEST_MQTT_PW", "s3cret pw")
    monkeypatch.setenv("CHORUS_TEST_WRONG_PW", "nope")

    good = MqttSink(
        config_for(broker, username="chorus", password_env="CHORUS_TEST_MQTT_PW"), DEVICE
    )
    sinks.append(good)
    d = make_detection()
    good.emit(d)
    assert good.wait_for_acks(timeout_s=5.0)
    assert json.loads(sub.wait_for(1)[0].payload)["id"] == d.id

    with caplog.at_level(logging.WARNING, logger="agent.sinks.mqtt"):
        bad = MqttSink(
            config_for(
                broker,
                username="chorus",
                password_env="CHORUS_TEST_WRONG_PW",
                client_id="chorus-bad",
            ),
            DEVICE,
        )
        assert bad.publish(make_detection(1).to_payload())  # queued, not an error
        assert wait_until(lambda: bad.stats().connect_failures >= 1)
        assert not bad.connected
        bad.close(timeout_s=0.2)  # gives up waiting
    st = bad.stats()
    assert (st.published, st.acked, st.abandoned, st.pending) == (1, 0, 1, 0)
    assert any("refused the connection" in r.getMessage() for r in caplog.records)
    assert any("1 detection(s) not acknowledged" in r.getMessage() for r in caplog.records)
    assert not any("s3cret" in r.getMessage() or "nope" in r.getMessage() for r in caplog.records)


class ManualLoopClient(mqtt.Client):
    """A real paho client whose network loop the test drives (no thread).

    Without a network thread paho writes a QoS 0 PUBLISH inside ``publish()`` and calls
    ``on_publish`` before ``publish()`` has returned the message id: the race the sink must
    survive when its network thread is faster than the publishing thread.
    """

    def loop_start(self) -> mqtt.MQTTErrorCode:
        return mqtt.MQTTErrorCode.MQTT_ERR_SUCCESS


def test_ack_that_arrives_before_publish_returns_is_counted_once(
    mosquitto_broker: MosquittoBroker, mqtt_subscriber: Subscribe
) -> None:
    sub = mqtt_subscriber(mosquitto_broker, TOPIC)
    clients: list[ManualLoopClient] = []

    def factory(client_id: str) -> mqtt.Client:
        c = ManualLoopClient(
            CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv311
        )
        clients.append(c)
        return c

    sink = MqttSink(config_for(mosquitto_broker, qos=0), DEVICE, client_factory=factory)
    client = clients[0]
    client.reconnect()  # connect_async stored the address; connect synchronously here
    assert wait_until(lambda: client.loop(timeout=0.05) == 0 and sink.connected, 5.0)
    acks: list[str] = []
    d = make_detection()
    assert sink.publish(d.to_payload(), on_ack=lambda: acks.append(d.id))
    assert acks == [d.id]  # acknowledged (written) before publish() returned
    st = sink.stats()
    assert (st.published, st.acked, st.pending) == (1, 1, 0)
    assert json.loads(sub.wait_for(1)[0].payload)["id"] == d.id
    sink.close(timeout_s=1.0)
    assert sink.stats().abandoned == 0
    assert acks == [d.id]
