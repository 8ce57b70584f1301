"""MQTT sink: publishes each detection as compact JSON to ``<prefix>/<device_id>/detections``.

All paho-mqtt specifics live in this module. The client runs paho's network thread
(``connect_async`` + ``loop_start``), so start-up never blocks on a broker that is down: paho
keeps retrying (back-off from 1 s doubling to 60 s; paho 2.2 in fact tries at 0, 3, 7, 15 ... s)
and keeps QoS 1/2 messages published meanwhile in memory, sending them once connected. Memory
is all it has, so a restart loses them; the outbox (a later addition) will sit in front of
:meth:`MqttSink.publish` and delete a row only from the ``on_ack`` callback, which fires when the
broker acknowledges the message (PUBACK for QoS 1).
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode

from agent.config import MqttConfig
from agent.detection.types import Detection

log = logging.getLogger(__name__)

AckCallback = Callable[[], None]
ClientFactory = Callable[[str], mqtt.Client]

_MISSING = object()


@dataclass(frozen=True)
class MqttStats:
    """Counters of one :class:`MqttSink`; ``published == acked + failed + pending + abandoned``.

    ``published``: publish calls made. ``acked``: acknowledged by the broker (for QoS 0: written
    to the socket). ``failed``: refused on the spot (paho's queue full, QoS 0 while offline) or
    rejected by the broker. ``pending``: in flight or queued in paho's memory. ``abandoned``:
    still unacknowledged when :meth:`MqttSink.close` gave up waiting.
    """

    published: int
    acked: int
    failed: int
    pending: int
    abandoned: int
    connected: bool
    connect_failures: int  # attempts that could not reach the broker or were refused


def detections_topic(topic_prefix: str, device_id: str) -> str:
    """``<topic_prefix>/<device_id>/detections``; rejects a device id that is not one level."""
    if not device_id or any(c in device_id for c in "/+#"):
        raise ValueError(f"device_id must be one topic level without '/', '+', '#': {device_id!r}")
    return f"{topic_prefix}/{device_id}/detections"


def _paho_client(client_id: str) -> mqtt.Client:
    return mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv311)


class MqttSink:
    """Publishes detections to an MQTT broker without ever blocking the pipeline on it.

    ``client_factory(client_id)`` builds the paho client (default: a paho 2.x ``Client`` with the
    VERSION2 callback API, MQTT 3.1.1); tests may pass their own. The password, if
    ``config.username`` is set, comes from the environment variable ``config.password_env``,
    never from the config file. ``max_queued`` bounds the messages paho holds in memory during
    an outage; beyond it publishes fail (counted in :meth:`stats`) rather than eat the RAM.
    """

    def __init__(
        self,
        config: MqttConfig,
        device_id: str,
        client_factory: ClientFactory | None = None,
        *,
        max_queued: int = 10_000,
        reconnect_min_s: int = 1,
        reconnect_max_s: int = 60,
    ) -> None:
        self.topic = detections_topic(config.topic_prefix, device_id)
        self.qos = config.qos
        self._broker = f"{config.host}:{config.port}"
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._close_lock = threading.Lock()
        self._pending: dict[int, AckCallback | None] = {}  # mid -> on_ack, once paho gave a mid
        self._early_acks: set[int] = set()  # acks that beat publish() to registering their mid
        self._published = self._acked = self._failed = self._abandoned = 0
        self._connect_failures = 0
        self._connected = False
        self._outage_logged = False  # log an outage once, not at every retry
        self._queue_full_logged = False
        self._closed = False
        self._shut_down = False  # close() finished

        client_id = config.client_id or f"chorus-{device_id}"
        self._client = (client_factory or _paho_client)(client_id)
        if log.isEnabledFor(logging.DEBUG):
            # paho logs "not connected" at ERROR on every retry; only wanted when debugging.
            self._client.enable_logger(logging.getLogger(f"{__name__}.paho"))
        if config.username:
            password = os.environ.get(config.password_env)
            if password is None:
                log.warning(
                    "mqtt.username is set but $%s is not; connecting without a password",
                    config.password_env,
                )
            self._client.username_pw_set(config.username, password)
        self._client.max_queued_messages_set(max_queued)
        self._client.reconnect_delay_set(min_delay=reconnect_min_s, max_delay=reconnect_max_s)
        self._client.on_connect = self._on_connect
        self._client.on_connect_fail = self._on_connect_fail
        self._client.on_disconnect = self._on_disconnect
        self._client.on_publish = self._on_publish
        # connect_async only records where to connect; the network thread does the connecting
        # and retries, so a broker that is down never delays or fails the agent's start-up.
        self._client.connect_async(config.host, config.port, keepalive=config.keepalive_s)
        self._client.loop_start()
        log.info("MQTT sink publishing to %s on %s (QoS %d)", self.topic, self._broker, self.qos)

    # -- publishing -------------------------------------------------------------------------

    def emit(self, detection: Detection) -> None:
        """Publish one detection (never blocks on the network; see :meth:`publish`)."""
        self.publish(detection.to_payload())

    def publish(self, payload: dict[str, Any], on_ack: AckCallback | None = None) -> bool:
        """Queue ``payload`` as compact JSON on the detections topic.

        Returns True if the client accepted it (sent, or held in memory until connected), False
        if it was refused (queue full; QoS 0 while offline). ``on_ack`` is called exactly once
        when the broker acknowledges it, usually on the MQTT network thread and while paho holds
        its message lock: keep it short. It is not called for refused or abandoned messages.
        """
        data = json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
        with self._lock:
            if self._closed:
                raise ValueError("MqttSink is closed")
            self._published += 1
        info = self._client.publish(self.topic, data, qos=self.qos)
        # With QoS > 0 a message published while offline stays in paho's queue (rc NO_CONN) and
        # goes out after the next CONNACK; with QoS 0 paho drops it.
        accepted = info.rc == MQTTErrorCode.MQTT_ERR_SUCCESS or (
            info.rc == MQTTErrorCode.MQTT_ERR_NO_CONN and self.qos > 0
        )
        acked_early = first = False
        with self._lock:
            if not accepted:
                self._failed += 1
                self._cond.notify_all()
                first = not self._queue_full_logged
                self._queue_full_logged = True
            elif info.mid in self._early_acks:
                self._early_acks.discard(info.mid)
                self._acked += 1
                acked_early = True
                self._cond.notify_all()
            else:
                self._pending[info.mid] = on_ack
            if accepted:
                self._queue_full_logged = False
        if not accepted:
            level = logging.WARNING if first else logging.DEBUG
            log.log(
                level, "MQTT publish refused (%s); detection not sent", mqtt.error_string(info.rc)
            )
        elif acked_early:
            self._run_ack(on_ack)
        return accepted

    def _on_publish(
        self, client: Any, userdata: Any, mid: int, reason_code: Any, properties: Any
    ) -> None:
        failed = bool(getattr(reason_code, "is_failure", False))
        with self._lock:
            on_ack = self._pending.pop(mid, _MISSING)
            if on_ack is _MISSING:
                # publish() has not stored this mid yet; it will find the ack here.
                if not failed:
                    self._early_acks.add(mid)
                return
            if failed:
                self._failed += 1
            else:
                self._acked += 1
            self._cond.notify_all()
        if failed:
            log.warning("MQTT broker rejected a detection: %s", reason_code)
        else:
            self._run_ack(on_ack)  # type: ignore[arg-type]

    @staticmethod
    def _run_ack(on_ack: AckCallback | None) -> None:
        if on_ack is None:
            return
        try:
            on_ack()
        except Exception:  # an exception would kill paho's network thread
            log.exception("on_ack callback failed")

    # -- connection state -------------------------------------------------------------------

    def _on_connect(
        self, client: Any, userdata: Any, flags: Any, reason_code: Any, properties: Any
    ) -> None:
        if getattr(reason_code, "is_failure", False):
            with self._lock:
                self._connect_failures += 1
                first = not self._outage_logged
                self._outage_logged = True
            log.log(
                logging.ERROR if first else logging.DEBUG,
                "MQTT broker %s refused the connection: %s; retrying",
                self._broker,
                reason_code,
            )
            return
        with self._lock:
            self._connected = True
            self._outage_logged = False
            queued = len(self._pending)
        log.info("connected to MQTT broker %s (%d detection(s) queued)", self._broker, queued)

    def _on_connect_fail(self, client: Any, userdata: Any) -> None:
        with self._lock:
            self._connect_failures += 1
            first = not self._outage_logged
            self._outage_logged = True
        log.log(
            logging.WARNING if first else logging.DEBUG,
            "cannot reach MQTT broker %s; retrying, detections are kept in memory",
            self._broker,
        )

    def _on_disconnect(
        self, client: Any, userdata: Any, flags: Any, reason_code: Any, properties: Any
    ) -> None:
        with self._lock:
            was_connected, self._connected = self._connected, False
            closing = self._closed
            if was_connected and not closing:
                self._outage_logged = True
        if was_connected and not closing:
            log.warning(
                "lost connection to MQTT broker %s (%s); reconnecting", self._broker, reason_code
            )

    # -- state and shutdown -----------------------------------------------------------------

    def _unresolved(self) -> int:
        return self._published - self._acked - self._failed - self._abandoned

    def stats(self) -> MqttStats:
        """A consistent snapshot of the counters."""
        with self._lock:
            return MqttStats(
                published=self._published,
                acked=self._acked,
                failed=self._failed,
                pending=self._unresolved(),
                abandoned=self._abandoned,
                connected=self._connected,
                connect_failures=self._connect_failures,
            )

    @property
    def connected(self) -> bool:
        """Whether the client is connected to the broker right now."""
        with self._lock:
            return self._connected

    def wait_for_acks(self, timeout_s: float) -> bool:
        """Block until nothing is pending or ``timeout_s`` passes; True if nothing is pending."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while self._unresolved() > 0:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._cond.wait(remaining)
            return True

    def close(self, timeout_s: float = 5.0) -> None:
        """Wait up to ``timeout_s`` for every published message to be acknowledged, then
        disconnect and stop the network thread.

        Messages still unacknowledged then are counted in ``stats().abandoned`` and logged as a
        warning; they are lost unless something upstream (the outbox) re-sends them.
        Idempotent: later calls do nothing. With the broker down, stopping paho's retry loop
        can add up to about 1 s.
        """
        with self._close_lock:
            if self._shut_down:
                return
            with self._lock:
                self._closed = True
            self.wait_for_acks(timeout_s)
            self._client.disconnect()
            self._client.loop_stop()
            with self._lock:
                left = self._unresolved()
                self._abandoned += left
                self._pending.clear()
                self._early_acks.clear()
                acked = self._acked
            self._shut_down = True
        if left:
            log.warning(
                "closed MQTT sink with %d detection(s) not acknowledged by %s", left, self._broker
            )
        else:
            log.info("closed MQTT sink; all %d detection(s) acknowledged", acked)
