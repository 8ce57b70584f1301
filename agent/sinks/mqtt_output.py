"""The live MQTT output: outbox first, a forwarder to the broker, the status heartbeat and
Home Assistant discovery, behind the plain :class:`~agent.sinks.Sink` interface.

``emit`` commits the detection to the outbox (durably) and wakes the forwarder; it never waits
for the network. The app puts this sink first, so a detection is on disk before any other sink
sees it. The outbox exists only with MQTT enabled: without MQTT the JSONL/CSV logs, flushed per
line, are the agent's durable record and there is nothing to forward.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent.config import AgentConfig
from agent.detection.types import Detection
from agent.forwarder import Forwarder
from agent.health import build_status, pipeline_counters
from agent.outbox import Outbox, default_outbox_path, encode_payload
from agent.sinks.homeassistant import discovery_messages
from agent.sinks.mqtt import ClientFactory, MqttSink
from agent.topics import status_topic

if TYPE_CHECKING:
    from agent.audio.chunk import AudioSource
    from agent.pipeline import StreamProcessor

log = logging.getLogger(__name__)


class MqttOutput:
    """Outbox + forwarder + MQTT client for one device (see the module docstring).

    ``outbox_path`` overrides ``mqtt.outbox_path``; ``on_delivered(detection_id, created_s)``
    is called when the broker acknowledged a detection (benchmarks). Raises
    :class:`~agent.outbox.OutboxError` or :class:`~agent.credentials.CredentialError` with one
    clear line when the outbox or a secret cannot be used.
    """

    def __init__(
        self,
        config: AgentConfig,
        *,
        client_factory: ClientFactory | None = None,
        outbox_path: str | Path | None = None,
        on_delivered: Callable[[str, float], None] | None = None,
        drain_timeout_s: float = 5.0,
        close_timeout_s: float = 5.0,
    ) -> None:
        mqtt = config.mqtt
        self.device_id = config.device_id
        self.status_topic = status_topic(mqtt.topic_prefix, config.device_id)
        self.status_interval_s = mqtt.status_interval_s
        self.drain_timeout_s = drain_timeout_s
        self.close_timeout_s = close_timeout_s
        loc = config.location
        self._location = (
            None
            if loc.latitude_deg is None or loc.longitude_deg is None
            else {"latitude_deg": loc.latitude_deg, "longitude_deg": loc.longitude_deg}
        )
        self._discovery = (
            discovery_messages(
                mqtt.homeassistant.discovery_prefix, mqtt.topic_prefix, config.device_id
            )
            if mqtt.homeassistant.enabled
            else []
        )
        path = Path(outbox_path or mqtt.outbox_path or default_outbox_path())
        self.state_dir = path.parent
        self.outbox = Outbox(
            path,
            mqtt.outbox_max_rows,
            mqtt.outbox_max_age_s,
            mqtt.outbox_fsync,
            min_free_bytes=mqtt.outbox_min_free_bytes,
        )
        try:
            self.client = MqttSink(mqtt, config.device_id, client_factory)
        except BaseException:
            self.outbox.close()
            raise
        self.forwarder = Forwarder(
            self.outbox, self.client, mqtt.max_inflight, on_delivered=on_delivered
        )
        self._started_s = time.monotonic()
        self._next_status_s = 0.0
        self._snapshot: tuple[dict[str, Any], str, dict[str, Any], tuple[str, str]] | None = None
        self._close_lock = threading.Lock()
        self._closed = False
        self.client.add_listener(on_connect=self._on_connect)
        self.forwarder.start()
        log.info("outbox %s: %d detection(s) waiting", path, self.outbox.depth())

    # -- Sink ---------------------------------------------------------------------------------

    def emit(self, detection: Detection) -> None:
        """Commit the detection to the outbox, then wake the forwarder."""
        payload = detection.to_payload()
        if self._location is not None:
            payload["location"] = dict(self._location)
        self.outbox.put(detection.id, encode_payload(payload))
        self.forwarder.notify()

    def close(self) -> None:
        """Give the forwarder a few seconds to empty the outbox (only while connected), stop it,
        publish a last status and ``offline``, disconnect. Rows not acknowledged stay in the
        outbox for the next start. Idempotent."""
        with self._close_lock:
            if self._closed:
                return
            self._closed = True
            try:
                self.forwarder.drain(self.drain_timeout_s, lambda: self.client.connected)
                self.forwarder.stop()
                self._publish_status()
                self.client.close(timeout_s=self.close_timeout_s)
                self.forwarder.flush()
            finally:
                left = self.outbox.depth()
                self.outbox.close()
            if left:
                log.warning("%d detection(s) stay in the outbox for the next start", left)

    # -- health -------------------------------------------------------------------------------

    def on_tick(self, processor: StreamProcessor, source: AudioSource) -> None:
        """Publish the status heartbeat when it is due (pipeline thread; cheap otherwise)."""
        now = time.monotonic()
        if now < self._next_status_s:
            return
        self._next_status_s = now + self.status_interval_s
        manifest = processor.inference.models.bundle.manifest
        self._snapshot = (
            pipeline_counters(processor.stats),
            processor.info.name,
            # NaN/Inf input skipped as gaps: a fault of the audio, reported with its counters.
            {
                **source.stats(),
                "nonfinite_samples": processor.stats.nonfinite_samples,
                "nonfinite_gaps": processor.stats.nonfinite_gaps,
            },
            (manifest.name, manifest.version),
        )
        self._publish_status()

    def status_payload(self) -> dict[str, Any]:
        """The status heartbeat as it would be published now."""
        pipeline, source_name, source_stats, bundle = self._snapshot or (None, None, None, None)
        return build_status(
            device_id=self.device_id,
            uptime_s=time.monotonic() - self._started_s,
            pipeline=pipeline,
            source_name=source_name,
            source_stats=source_stats,
            bundle=bundle,
            outbox=self.outbox.stats(),
            forwarder=self.forwarder.stats(),
            mqtt=self.client.stats(),
            state_dir=self.state_dir,
        )

    def _publish_status(self) -> bool:
        try:
            return self.client.publish_retained(
                self.status_topic, encode_payload(self.status_payload())
            )
        except Exception:  # a heartbeat must never break the pipeline
            log.exception("could not publish the status heartbeat")
            return False

    def _on_connect(self) -> None:
        # Network thread, after every (re)connect: retained topics may have been lost with a
        # broker that restarted without persistence; publish them again.
        for topic, payload in self._discovery:
            self.client.publish_retained(topic, payload)
        self._publish_status()
