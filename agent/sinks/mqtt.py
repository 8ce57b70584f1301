"""MQTT client of the agent: detections, availability (Last Will), retained status, TLS.

All paho-mqtt specifics live in this module. The client runs paho's network thread
(``connect_async`` + ``loop_start``), so start-up never blocks on a broker that is down; paho
reconnects by itself, and this module replaces paho's fixed doubling delay with exponential
back-off *with jitter* (:func:`agent.backoff.backoff_delay_s`), so a fleet that lost its broker
at the same instant does not come back in lock-step. QoS 1/2 messages published while offline
stay in paho's memory and go out after the next CONNACK; memory is all paho has, so the outbox
(:mod:`agent.outbox`) sits in front of :meth:`MqttSink.publish_bytes` and deletes a row only from
the ``on_ack`` callback, which fires when the broker acknowledges the message (PUBACK for QoS 1).

Availability: the CONNECT carries a Last Will ``offline`` (retained, QoS 1) on
``<prefix>/<device>/availability``; every successful connect publishes ``online`` there, and a
clean :meth:`MqttSink.close` publishes ``offline`` itself (a clean DISCONNECT cancels the will).
"""

from __future__ import annotations

import json
import logging
import random
import ssl
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode

from agent.backoff import backoff_delay_s
from agent.config import MqttConfig, MqttTlsConfig
from agent.credentials import CredentialError, check_private_file, mqtt_password
from agent.detection.types import Detection
from agent.topics import availability_topic, detections_topic

__all__ = ["MqttSink", "MqttStats", "detections_topic"]

log = logging.getLogger(__name__)

AckCallback = Callable[[], None]
ClientFactory = Callable[[str], mqtt.Client]
ONLINE = b"online"
OFFLINE = b"offline"

_MISSING = object()
_UNTRACKED = object()  # a pending mid whose ack nobody waits for (availability, status)


@dataclass(frozen=True)
class MqttStats:
    """Counters of one :class:`MqttSink`; ``published == acked + failed + pending + abandoned``.

    They count detections only (availability and status messages are not counted).
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
    connects: int = 0  # successful connections (1 + reconnects)


def _paho_client(client_id: str) -> mqtt.Client:
    return mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv311)


def _configure_tls(client: mqtt.Client, tls: MqttTlsConfig) -> None:
    for key, value in (("ca_file", tls.ca_file), ("cert_file", tls.cert_file)):
        if value is not None and not Path(value).is_file():
            raise CredentialError(f"mqtt.tls.{key}: file not found: {value}")
    if tls.key_file is not None:
        check_private_file(Path(tls.key_file), "mqtt.tls.key_file")
    try:
        client.tls_set(
            ca_certs=tls.ca_file,
            certfile=tls.cert_file,
            keyfile=tls.key_file,
            cert_reqs=ssl.CERT_REQUIRED,
            tls_version=ssl.PROTOCOL_TLS_CLIENT,  # TLS 1.2+, verifies the broker's host name
        )
    except (ssl.SSLError, OSError, ValueError) as exc:
        raise CredentialError(f"mqtt.tls: cannot load the certificates: {exc}") from None


def connect_error_message(exc: BaseException | None, broker: str, ca_file: str | None) -> str:
    """One line for a failed connection attempt: a TLS verification failure (naming the CA
    file it was checked against) is a configuration error, not an unreachable broker."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        ca = f"CA file {ca_file}" if ca_file else "the system CAs"
        why = exc.verify_message or exc.reason or str(exc)
        return f"TLS verification of MQTT broker {broker} failed against {ca}: {why}"
    if isinstance(exc, ssl.SSLError):
        return f"TLS handshake with MQTT broker {broker} failed: {exc.reason or exc}"
    return f"cannot reach MQTT broker {broker}" + (f": {exc}" if exc is not None else "")


def configure_client(client: mqtt.Client, config: MqttConfig) -> None:
    """Apply TLS and credentials from the config (also used by ``chorus-agent selftest``)."""
    password = mqtt_password(config.password_file, config.password_env)  # may raise
    if config.tls.enabled:
        _configure_tls(client, config.tls)
    if config.username:
        if password is None:
            log.warning(
                "mqtt.username is set but $%s is not; connecting without a password",
                config.password_env,
            )
        client.username_pw_set(config.username, password)


class MqttSink:
    """Publishes detections to an MQTT broker without ever blocking the pipeline on it.

    ``client_factory(client_id)`` builds the paho client (default: a paho 2.x ``Client`` with the
    VERSION2 callback API, MQTT 3.1.1); tests may pass their own. The password, if
    ``config.username`` is set, comes from ``config.password_file`` or the environment variable
    ``config.password_env``, never from the config file. ``max_queued`` bounds the messages paho
    holds in memory during an outage; beyond it publishes fail (counted in :meth:`stats`)
    rather than eat the RAM. Raises :class:`~agent.credentials.CredentialError` for a missing or
    world-readable secret file.
    """

    def __init__(
        self,
        config: MqttConfig,
        device_id: str,
        client_factory: ClientFactory | None = None,
        *,
        max_queued: int = 10_000,
        reconnect_min_s: float | None = None,
        reconnect_max_s: float | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.topic = detections_topic(config.topic_prefix, device_id)
        self.availability_topic = availability_topic(config.topic_prefix, device_id)
        self.qos = config.qos
        self._broker = f"{config.host}:{config.port}"
        self._tls_ca_file = config.tls.ca_file if config.tls.enabled else None
        self._backoff_initial_s = reconnect_min_s or config.reconnect_backoff.initial_s
        self._backoff_max_s = max(
            reconnect_max_s or config.reconnect_backoff.max_s, self._backoff_initial_s
        )
        self._rng = rng or random.Random()
        self._attempt = 0
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._close_lock = threading.Lock()
        # mid -> on_ack (detections), or _UNTRACKED (availability, status), once paho gave a mid
        self._pending: dict[int, Any] = {}
        self._early_acks: set[int] = set()  # acks that beat publish() to registering their mid
        self._published = self._acked = self._failed = self._abandoned = 0
        self._connect_failures = 0
        self._connects = 0
        self._connected = False
        self._outage_logged = False  # log an outage once, not at every retry
        self._queue_full_logged = False
        self._closed = False
        self._shut_down = False  # close() finished
        self._listeners: list[tuple[Callable[[], None] | None, Callable[[], None] | None]] = []

        client_id = config.client_id or f"chorus-{device_id}"
        self._client = (client_factory or _paho_client)(client_id)
        if log.isEnabledFor(logging.DEBUG):
            # paho logs "not connected" at ERROR on every retry; only wanted when debugging.
            self._client.enable_logger(logging.getLogger(f"{__name__}.paho"))
        configure_client(self._client, config)  # may raise CredentialError
        self._client.will_set(self.availability_topic, OFFLINE, qos=1, retain=True)
        self._client.max_queued_messages_set(max_queued)
        self._client.max_inflight_messages_set(config.max_inflight)
        self._client.reconnect_delay_set(
            min_delay=max(1, round(self._backoff_initial_s)),
            max_delay=max(1, round(self._backoff_max_s)),
        )
        if hasattr(self._client, "_reconnect_wait"):
            # paho's own wait doubles a fixed delay with no jitter; use ours (same hook, same
            # thread). Guarded: a paho without this private hook keeps its plain back-off.
            self._client._reconnect_wait = self._reconnect_wait  # type: ignore[method-assign]
        self._client.on_connect = self._on_connect
        self._client.on_connect_fail = self._on_connect_fail
        self._client.on_disconnect = self._on_disconnect
        self._client.on_publish = self._on_publish
        # connect_async only records where to connect; the network thread does the connecting
        # and retries, so a broker that is down never delays or fails the agent's start-up.
        self._client.connect_async(config.host, config.port, keepalive=config.keepalive_s)
        self._client.loop_start()
        log.info("MQTT sink publishing to %s on %s (QoS %d)", self.topic, self._broker, self.qos)

    def add_listener(
        self,
        on_connect: Callable[[], None] | None = None,
        on_disconnect: Callable[[], None] | None = None,
    ) -> None:
        """Call ``on_connect`` after every successful connect (after ``online`` is published)
        and ``on_disconnect`` when a connection is lost; both on the network thread."""
        with self._lock:
            self._listeners.append((on_connect, on_disconnect))
            connected = self._connected
        if connected and on_connect is not None:
            self._run_callback(on_connect)

    # -- publishing -------------------------------------------------------------------------

    def emit(self, detection: Detection) -> None:
        """Publish one detection (never blocks on the network; see :meth:`publish`)."""
        self.publish(detection.to_payload())

    def publish(
        self,
        payload: dict[str, Any],
        on_ack: AckCallback | None = None,
        on_fail: AckCallback | None = None,
    ) -> bool:
        """Queue ``payload`` as compact JSON on the detections topic (see :meth:`publish_bytes`)."""
        data = json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
        return self.publish_bytes(data, on_ack, on_fail)

    def publish_bytes(
        self, data: bytes, on_ack: AckCallback | None = None, on_fail: AckCallback | None = None
    ) -> bool:
        """Queue one encoded detection on the detections topic.

        Returns True if the client accepted it (sent, or held in memory until connected), False
        if it was refused (queue full; QoS 0 while offline). ``on_ack`` is called exactly once
        when the broker acknowledges it, ``on_fail`` if the broker rejects it (MQTT 5 reason
        code); both usually on the MQTT network thread and while paho holds its message lock:
        keep them short. Neither is called for refused or abandoned messages.
        """
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
                self._pending[info.mid] = (on_ack, on_fail)
            if accepted:
                self._queue_full_logged = False
        if not accepted:
            level = logging.WARNING if first else logging.DEBUG
            log.log(
                level, "MQTT publish refused (%s); detection not sent", mqtt.error_string(info.rc)
            )
        elif acked_early:
            self._run_callback(on_ack)
        return accepted

    def publish_retained(self, topic: str, data: bytes, qos: int = 1) -> bool:
        """Publish a retained message (status, discovery) if connected; False if not sent.

        Nothing is queued while offline: only the latest value of a retained topic matters,
        and the caller republishes it after the next connect.
        """
        with self._lock:
            if self._closed or not self._connected:
                return False
        return self._publish_untracked(topic, data, qos, retain=True)

    def _publish_untracked(self, topic: str, data: bytes, qos: int, retain: bool) -> bool:
        info = self._client.publish(topic, data, qos=qos, retain=retain)
        if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            return False
        if qos > 0:
            with self._lock:
                if info.mid in self._early_acks:
                    self._early_acks.discard(info.mid)
                else:
                    self._pending[info.mid] = _UNTRACKED
        return True

    def _on_publish(
        self, client: Any, userdata: Any, mid: int, reason_code: Any, properties: Any
    ) -> None:
        failed = bool(getattr(reason_code, "is_failure", False))
        with self._lock:
            entry = self._pending.pop(mid, _MISSING)
            if entry is _UNTRACKED:
                return
            if entry is _MISSING:
                # publish() has not stored this mid yet; it will find the ack here.
                if not failed:
                    self._early_acks.add(mid)
                return
            if failed:
                self._failed += 1
            else:
                self._acked += 1
            self._cond.notify_all()
        on_ack, on_fail = entry
        if failed:
            log.warning("MQTT broker rejected a detection: %s", reason_code)
            self._run_callback(on_fail)
        else:
            self._run_callback(on_ack)

    @staticmethod
    def _run_callback(callback: Callable[[], None] | None) -> None:
        if callback is None:
            return
        try:
            callback()
        except Exception:  # an exception would kill paho's network thread
            log.exception("MQTT callback failed")

    # -- connection state -------------------------------------------------------------------

    def _reconnect_wait(self) -> None:
        """Runs on the network thread between attempts; returns early when closing."""
        delay_s = backoff_delay_s(
            self._attempt, self._backoff_initial_s, self._backoff_max_s, self._rng
        )
        self._attempt += 1
        log.debug("reconnecting to %s in %.3f s", self._broker, delay_s)
        deadline = time.monotonic() + delay_s
        while not self._stopping.is_set():
            remaining = deadline - time.monotonic()
            if remaining <= 0 or getattr(self._client, "_thread_terminate", False):
                return
            self._stopping.wait(min(remaining, 0.1))

    def _on_connect(
        self, client: Any, userdata: Any, flags: Any, reason_code: Any, properties: Any
    ) -> None:
        if getattr(reason_code, "is_failure", False):
            self._note_failure(
                logging.ERROR,
                f"MQTT broker {self._broker} refused the connection: {reason_code}; retrying",
            )
            return
        with self._lock:
            self._connected = True
            self._connects += 1
            self._outage_logged = False
            self._attempt = 0
            queued = sum(1 for v in self._pending.values() if v is not _UNTRACKED)
            listeners = list(self._listeners)
        log.info("connected to MQTT broker %s (%d detection(s) queued)", self._broker, queued)
        self._publish_untracked(self.availability_topic, ONLINE, qos=1, retain=True)
        for on_connect, _ in listeners:
            self._run_callback(on_connect)

    def _on_connect_fail(self, client: Any, userdata: Any) -> None:
        # paho calls this inside its ``except OSError`` around the attempt: the exception is
        # the one being handled (ssl.SSLError is an OSError).
        exc = sys.exc_info()[1]
        message = connect_error_message(exc, self._broker, self._tls_ca_file)
        level = logging.ERROR if isinstance(exc, ssl.SSLError) else logging.WARNING
        self._note_failure(level, f"{message}; retrying")

    def _note_failure(self, level: int, message: str) -> None:
        """Count a failed connection attempt; log an outage once at ``level``, then at DEBUG."""
        with self._lock:
            self._connect_failures += 1
            first = not self._outage_logged
            self._outage_logged = True
        log.log(level if first else logging.DEBUG, "%s", message)

    def _on_disconnect(
        self, client: Any, userdata: Any, flags: Any, reason_code: Any, properties: Any
    ) -> None:
        with self._lock:
            was_connected, self._connected = self._connected, False
            closing = self._closed
            if was_connected and not closing:
                self._outage_logged = True
            refused = not was_connected and not closing
            if refused:
                # Closed before CONNACK: a TLS handshake the broker rejected afterwards (TLS
                # 1.3 checks client certificates late) or plain TCP on a TLS port.
                self._connect_failures += 1
                first = not self._outage_logged
                self._outage_logged = True
            listeners = list(self._listeners) if was_connected else []
        if refused:
            log.log(
                logging.ERROR if first else logging.DEBUG,
                "MQTT broker %s closed the connection before accepting it (%s): check TLS "
                "settings and credentials; retrying",
                self._broker,
                reason_code,
            )
        if was_connected and not closing:
            log.warning(
                "lost connection to MQTT broker %s (%s); reconnecting", self._broker, reason_code
            )
        for _, on_disconnect in listeners:
            self._run_callback(on_disconnect)

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
                connects=self._connects,
            )

    @property
    def connected(self) -> bool:
        """Whether the client is connected to the broker right now."""
        with self._lock:
            return self._connected

    def wait_for_acks(self, timeout_s: float) -> bool:
        """Block until no detection is pending or ``timeout_s`` passes; True if none is."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while self._unresolved() > 0:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._cond.wait(remaining)
            return True

    def _announce_offline(self, timeout_s: float) -> None:
        """Publish retained ``offline`` and wait (bounded) for it to leave."""
        with self._lock:
            if not self._connected:
                return
        info = self._client.publish(self.availability_topic, OFFLINE, qos=1, retain=True)
        if info.rc == MQTTErrorCode.MQTT_ERR_SUCCESS:
            deadline = time.monotonic() + timeout_s
            while not info.is_published() and time.monotonic() < deadline:
                time.sleep(0.01)

    def close(self, timeout_s: float = 5.0) -> None:
        """Wait up to ``timeout_s`` for every published detection to be acknowledged, publish
        ``offline``, then disconnect and stop the network thread.

        Detections still unacknowledged then are counted in ``stats().abandoned`` and logged as
        a warning; they are lost unless something upstream (the outbox) re-sends them.
        Idempotent: later calls do nothing.
        """
        with self._close_lock:
            if self._shut_down:
                return
            with self._lock:
                self._closed = True
            self.wait_for_acks(timeout_s)
            self._announce_offline(min(timeout_s, 1.0))
            self._stopping.set()
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
