"""The collector: an MQTT 5 subscriber that validates, de-duplicates and stores detections.

* Detections come through ``<prefix>/+/detections``, or with a share group through the MQTT 5
  shared subscription ``$share/<group>/<prefix>/+/detections``, so several collectors (same
  group, different client ids) split the load; each message goes to one of them. Availability
  and status go to every collector (plain subscriptions, retained), upserted per device.
* Messages are acknowledged by hand, *after* their batch is committed (paho ``manual_ack``):
  a collector that dies before committing never acknowledged, so the broker re-delivers.
* It connects with ``clean_start=False`` and a session expiry, so the broker queues
  detections for it while it is away (a broker with ``persistence true`` keeps them across
  its own restarts too).
* Every payload is decoded as I-JSON (no NaN/Infinity, no lone surrogates) and checked
  against ``detection.schema.json`` and against its topic (the device in the payload must be
  the device in the topic). A bad one is counted by reason, kept in the ``rejects`` table
  (first bytes only), acknowledged, and never crashes anything.
* A batch is one transaction. When the store refuses a batch's *data* (its
  ``refused_errors``), the batch is stored again one message at a time, so the one message
  it refuses is rejected as ``store_refused`` (with the database's words) and acknowledged,
  and the rest are stored. Other failures (database away, locked, full) are retried.
* The detections table's primary key is the detection id: a duplicate is counted, not stored.
"""

from __future__ import annotations

import logging
import queue
import random
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from agent.backoff import backoff_delay_s
from agent.collector.store import DetectionRow, DeviceUpdate, Reject, Store
from agent.schemas import MessageError, parse_message, validator
from agent.topics import parse_device_topic

log = logging.getLogger(__name__)

MAX_PAYLOAD_BYTES = 64 * 1024
_REJECT_HEAD_BYTES = 1024
_LOG_EVERY_S = 60.0


@dataclass(frozen=True)
class CollectorConfig:
    host: str = "localhost"
    port: int = 1883
    topic_prefix: str = "chorus"
    # MQTT 5 shared subscription group; None: a plain subscription. See docs/mqtt.md: Mosquitto
    # 2.0.11 does not restore shared subscriptions after a broker restart.
    share_group: str | None = None
    client_id: str = "chorus-collector"
    username: str | None = None
    password: str | None = None
    tls_ca_file: str | None = None
    tls_cert_file: str | None = None
    tls_key_file: str | None = None
    tls: bool = False
    keepalive_s: int = 60
    session_expiry_s: int = 7 * 24 * 3600  # the broker keeps our queue this long while away
    backoff_initial_s: float = 1.0
    backoff_max_s: float = 60.0
    batch_max: int = 500  # messages per transaction at most
    batch_wait_s: float = 0.05  # how long a batch may wait to fill
    device_status: bool = True  # also store availability and status per device


@dataclass(frozen=True)
class CollectorStats:
    received: int  # messages taken from the broker (all topics)
    stored: int  # detections newly stored
    duplicates: int  # detections whose id was already stored
    redelivered: int  # ... of which the broker flagged as re-deliveries (DUP)
    rejected: int  # malformed payloads (see rejected_by_reason)
    device_updates: int
    store_errors: int  # failed commits (retried)
    connects: int
    connected: bool
    rejected_by_reason: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class _Message:
    mid: int
    qos: int
    dup: bool
    topic: str
    payload: bytes
    received_utc: str


def _storable(text: str) -> str:
    """``text`` with lone surrogates and NULs escaped, so that any store takes it."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8").replace("\x00", "\\x00")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__


def _now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _paho_client(client_id: str) -> mqtt.Client:
    return mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)


class Collector:
    """Subscribes, validates and stores; :meth:`start` / :meth:`stop`. Thread-safe stats."""

    def __init__(
        self,
        config: CollectorConfig,
        store: Store,
        client_factory: Callable[[str], mqtt.Client] | None = None,
    ) -> None:
        self.config = config
        self.store = store
        self._validate = validator("detection")
        self._validate_status = validator("status")
        self._queue: queue.Queue[_Message] = queue.Queue(maxsize=10 * config.batch_max)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._counts: Counter[str] = Counter()
        self._reasons: Counter[str] = Counter()
        self._connected = False
        self._attempt = 0
        self._rng = random.Random()
        self._last_log: dict[str, float] = {}
        self.duplicate_log: deque[tuple[str, bool]] = deque(maxlen=100_000)  # (id, DUP flag)
        self._writer: threading.Thread | None = None
        self.subscribed = threading.Event()  # set at each SUBACK, cleared on disconnect
        detections = f"{config.topic_prefix}/+/detections"
        self.detections_filter = (
            f"$share/{config.share_group}/{detections}" if config.share_group else detections
        )
        self._client = (client_factory or _paho_client)(config.client_id)
        self._client.manual_ack_set(True)
        if config.tls:
            import ssl

            self._client.tls_set(
                ca_certs=config.tls_ca_file,
                certfile=config.tls_cert_file,
                keyfile=config.tls_key_file,
                cert_reqs=ssl.CERT_REQUIRED,
                tls_version=ssl.PROTOCOL_TLS_CLIENT,
            )
        if config.username:
            self._client.username_pw_set(config.username, config.password)
        if hasattr(self._client, "_reconnect_wait"):
            self._client._reconnect_wait = self._reconnect_wait  # type: ignore[method-assign]
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        self._client.on_message = self._on_message
        self._client.on_subscribe = self._on_subscribe

    # -- life cycle ---------------------------------------------------------------------------

    def start(self) -> None:
        """Connect (in the background; retried with back-off) and start storing."""
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = self.config.session_expiry_s
        self._writer = threading.Thread(target=self._write_loop, name="collector-writer")
        self._writer.start()
        self._client.connect_async(
            self.config.host,
            self.config.port,
            keepalive=self.config.keepalive_s,
            clean_start=False,
            properties=props,
        )
        self._client.loop_start()
        log.info(
            "collector %s subscribing to %s on %s:%d",
            self.config.client_id,
            self.detections_filter,
            self.config.host,
            self.config.port,
        )

    def stop(self, timeout_s: float = 10.0) -> None:
        """Store what was received, disconnect (the session stays on the broker), stop."""
        self._stop.set()
        if self._writer is not None:
            self._writer.join(timeout_s)
        self._client.disconnect()
        self._client.loop_stop()

    def stats(self) -> CollectorStats:
        with self._lock:
            return CollectorStats(
                received=self._counts["received"],
                stored=self._counts["stored"],
                duplicates=self._counts["duplicates"],
                redelivered=self._counts["redelivered"],
                rejected=self._counts["rejected"],
                device_updates=self._counts["device_updates"],
                store_errors=self._counts["store_errors"],
                connects=self._counts["connects"],
                connected=self._connected,
                rejected_by_reason=dict(self._reasons),
            )

    def wait_until(self, predicate: Callable[[CollectorStats], bool], timeout_s: float) -> bool:
        """Poll :meth:`stats` until ``predicate`` holds (tests and tools); bounded."""
        deadline = time.monotonic() + timeout_s
        while not predicate(self.stats()):
            if time.monotonic() > deadline:
                return False
            time.sleep(0.02)
        return True

    # -- MQTT callbacks (network thread) ------------------------------------------------------

    def _reconnect_wait(self) -> None:
        delay_s = backoff_delay_s(
            self._attempt, self.config.backoff_initial_s, self.config.backoff_max_s, self._rng
        )
        self._attempt += 1
        deadline = time.monotonic() + delay_s
        while not self._stop.is_set() and time.monotonic() < deadline:
            if getattr(self._client, "_thread_terminate", False):
                return
            self._stop.wait(min(0.1, max(0.0, deadline - time.monotonic())))

    def _on_connect(
        self, client: Any, userdata: Any, flags: Any, reason_code: Any, properties: Any
    ) -> None:
        if getattr(reason_code, "is_failure", False):
            log.error("broker refused the collector: %s", reason_code)
            return
        with self._lock:
            self._connected = True
            self._counts["connects"] += 1
        self._attempt = 0
        subs = [(self.detections_filter, 1)]
        if self.config.device_status:
            prefix = self.config.topic_prefix
            subs += [(f"{prefix}/+/availability", 1), (f"{prefix}/+/status", 1)]
        # Always (re)subscribe: idempotent, and needed when the broker lost our session.
        client.subscribe(subs)
        log.info(
            "collector connected (session %s)",
            "resumed" if getattr(flags, "session_present", False) else "new",
        )

    def _on_subscribe(
        self, client: Any, userdata: Any, mid: int, reason_codes: Any, properties: Any
    ) -> None:
        failed = [rc for rc in reason_codes if getattr(rc, "is_failure", False)]
        if failed:
            log.error("broker refused a subscription of the collector: %s", failed)
        else:
            log.info("collector subscribed to %s", self.detections_filter)
            self.subscribed.set()

    def _on_disconnect(
        self, client: Any, userdata: Any, flags: Any, reason_code: Any, properties: Any
    ) -> None:
        self.subscribed.clear()
        with self._lock:
            was, self._connected = self._connected, False
        if was and not self._stop.is_set():
            log.warning("collector lost the broker (%s); reconnecting", reason_code)

    def _on_message(self, client: Any, userdata: Any, msg: Any) -> None:
        # Bounded queue: when the store falls behind, this blocks paho's thread, which stops
        # reading the socket, and the broker holds the rest (back-pressure, no loss).
        m = _Message(msg.mid, msg.qos, bool(msg.dup), msg.topic, bytes(msg.payload), _now_iso())
        while True:
            try:
                self._queue.put(m, timeout=0.5)
                return
            except queue.Full:
                if self._stop.is_set():
                    return  # shutting down: not acknowledged, so the broker re-delivers it

    # -- the writer thread --------------------------------------------------------------------

    def _write_loop(self) -> None:
        pending: list[_Message] = []
        while True:
            if not pending:
                pending = self._take_batch()
                if not pending:
                    if self._stop.is_set():
                        return
                    continue
            try:
                self._commit(pending)
            except Exception:
                with self._lock:
                    self._counts["store_errors"] += 1
                log.exception("storing %d message(s) failed; retrying", len(pending))
                if self._stop.wait(1.0):
                    return  # unacknowledged: the broker re-delivers them to the next run

    def _commit(self, pending: list[_Message]) -> None:
        """Store and acknowledge ``pending``, emptying it. Raises what is worth retrying,
        with what is not yet stored left in ``pending``."""
        try:
            self._store(pending)
        except self.store.refused_errors as exc:
            if len(pending) == 1:
                self._store_refused(pending[0], exc)
            else:
                log.warning(
                    "the store refused a batch of %d (%s); storing one message at a time",
                    len(pending),
                    _first_line(exc),
                )
                while pending:
                    self._commit(pending[:1])
                    del pending[0]
                return
        for m in pending:
            if m.qos > 0:
                self._client.ack(m.mid, m.qos)
        pending.clear()

    def _store_refused(self, m: _Message, exc: Exception) -> None:
        """Keep the message the store refused in ``rejects`` (the rest of it, by reason)."""
        r = self._reject(m, "store_refused", f"{type(exc).__name__}: {_first_line(exc)}")
        self.store.write((), [r])
        with self._lock:
            self._counts["received"] += 1
            self._counts["rejected"] += 1
            self._reasons[r.reason] += 1
        self._log_reject(r)

    def _take_batch(self) -> list[_Message]:
        try:
            batch = [self._queue.get(timeout=0.2)]
        except queue.Empty:
            return []
        deadline = time.monotonic() + self.config.batch_wait_s
        while len(batch) < self.config.batch_max:
            remaining = deadline - time.monotonic()
            try:
                batch.append(
                    self._queue.get(timeout=remaining)
                    if remaining > 0
                    else self._queue.get_nowait()
                )
            except queue.Empty:
                break
        return batch

    def _store(self, batch: list[_Message]) -> None:
        rows: list[tuple[DetectionRow, bool]] = []
        rejects: list[Reject] = []
        updates: list[DeviceUpdate] = []
        for m in batch:
            parsed = parse_device_topic(self.config.topic_prefix, m.topic)
            if parsed is None:
                rejects.append(self._reject(m, "bad_topic", m.topic))
            elif parsed[1] == "detections":
                row_or_reject = self._check_detection(m, parsed[0])
                if isinstance(row_or_reject, Reject):
                    rejects.append(row_or_reject)
                else:
                    rows.append((row_or_reject, m.dup))
            else:
                update = self._check_device_message(m, parsed[0], parsed[1])
                if isinstance(update, Reject):
                    rejects.append(update)
                else:
                    updates.append(update)
        new = self.store.write([r for r, _ in rows], rejects, updates)
        seen: set[str] = set()
        dups = []
        for row, dup in rows:
            if row.id in new and row.id not in seen:
                seen.add(row.id)
            else:
                dups.append((row.id, dup))
        with self._lock:
            self._counts["received"] += len(batch)
            self._counts["stored"] += len(seen)
            self._counts["duplicates"] += len(dups)
            self._counts["redelivered"] += sum(1 for _, d in dups if d)
            self._counts["rejected"] += len(rejects)
            self._counts["device_updates"] += len(updates)
            for r in rejects:
                self._reasons[r.reason] += 1
            self.duplicate_log.extend(dups)
        for r in rejects:
            self._log_reject(r)

    def _check_detection(self, m: _Message, topic_device: str) -> DetectionRow | Reject:
        if len(m.payload) > MAX_PAYLOAD_BYTES:
            return self._reject(m, "too_large", f"{len(m.payload)} bytes")
        try:
            payload = parse_message(m.payload)
        except MessageError as exc:
            return self._reject(m, exc.reason, exc.detail)
        error = next(iter(self._validate.iter_errors(payload)), None)
        if error is not None:
            where = "/".join(str(p) for p in error.absolute_path) or "(top level)"
            return self._reject(m, "schema", f"{where}: {error.message}"[:300])
        if payload["device"] != topic_device:
            return self._reject(
                m, "device_mismatch", f"topic {topic_device!r}, payload {payload['device']!r}"
            )
        return DetectionRow.from_payload(payload, m.received_utc, m.payload.decode("utf-8"))

    def _check_device_message(self, m: _Message, device: str, kind: str) -> DeviceUpdate | Reject:
        try:
            text = m.payload.decode("utf-8")
        except UnicodeDecodeError as exc:
            return self._reject(m, "not_utf8", str(exc))
        if kind == "availability":
            if text not in ("online", "offline"):
                return self._reject(m, "schema", f"availability must be online/offline: {text!r}")
        else:
            if not text:
                return DeviceUpdate(device, kind, "null", m.received_utc)  # retained cleared
            try:
                status = parse_message(m.payload)
            except MessageError as exc:
                return self._reject(m, exc.reason, exc.detail)
            error = next(iter(self._validate_status.iter_errors(status)), None)
            if error is not None:
                where = "/".join(str(p) for p in error.absolute_path) or "(top level)"
                return self._reject(m, "schema", f"status {where}: {error.message}"[:300])
            if status["device"] != device:
                return self._reject(m, "device_mismatch", f"status of {status['device']!r}")
        return DeviceUpdate(device, kind, text, m.received_utc)

    @staticmethod
    def _reject(m: _Message, reason: str, detail: str) -> Reject:
        return Reject(
            m.received_utc,
            _storable(m.topic),
            reason,
            _storable(detail),
            m.payload[:_REJECT_HEAD_BYTES],
        )

    def _log_reject(self, r: Reject) -> None:
        now = time.monotonic()
        if now - self._last_log.get(r.reason, -_LOG_EVERY_S) >= _LOG_EVERY_S:
            self._last_log[r.reason] = now
            log.warning("rejected a message on %s (%s): %s", r.topic, r.reason, r.detail)
