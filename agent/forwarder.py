"""The forwarder: a thread that moves outbox rows to the broker, oldest first, at QoS 1.

A row is deleted only when the broker's PUBACK for it arrives (the publisher's ``on_ack``).
Rows are handed to the client only while it is connected, and at most ``max_inflight`` of them
are published and unacknowledged at a time, so paho's memory stays bounded however long the
outage: what was in flight when a connection dropped is re-sent by paho after the next
CONNACK, everything else waits in the outbox (where the size/age bound applies to it). After a
crash or restart the forwarder starts again from the oldest row: rows that were in flight when
the process died are published again with the same detection id (the only duplicates the
design allows).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Protocol

from agent.errors import ChorusError
from agent.outbox import Outbox

log = logging.getLogger(__name__)

_MAX_LOSS_IDS = 100_000


class Publisher(Protocol):
    """What the forwarder needs from the MQTT client (:class:`~agent.sinks.mqtt.MqttSink`)."""

    @property
    def connected(self) -> bool: ...

    def publish_bytes(
        self,
        data: bytes,
        on_ack: Callable[[], None] | None = None,
        on_fail: Callable[[], None] | None = None,
    ) -> bool: ...

    def add_listener(
        self,
        on_connect: Callable[[], None] | None = None,
        on_disconnect: Callable[[], None] | None = None,
    ) -> None: ...


@dataclass(frozen=True)
class ForwarderStats:
    published: int  # publish calls (re-sends after a refusal or rejection included)
    acked: int  # rows acknowledged by the broker
    refused: int  # publishes the client refused (retried after retry_s)
    rejected: int  # publishes the broker rejected (retried after retry_s)
    inflight: int  # published, not yet acknowledged


class Forwarder:
    """Publishes ``outbox`` rows through ``publisher``; deletes each on its acknowledgement.

    ``on_delivered(detection_id, created_s)`` (optional) is called on the network thread when
    a row is acknowledged; ``created_s`` is the wall-clock time the row was committed.
    """

    def __init__(
        self,
        outbox: Outbox,
        publisher: Publisher,
        max_inflight: int = 100,
        retry_s: float = 1.0,
        prune_every_s: float = 60.0,
        on_delivered: Callable[[str, float], None] | None = None,
    ) -> None:
        if max_inflight < 1:
            raise ValueError(f"max_inflight must be >= 1, got {max_inflight}")
        self.outbox = outbox
        self.publisher = publisher
        self.max_inflight = max_inflight
        self.retry_s = retry_s
        self.prune_every_s = prune_every_s
        self.on_delivered = on_delivered
        self._cond = threading.Condition()
        self._inflight: dict[int, tuple[str, float]] = {}  # seq -> (detection id, created_s)
        self._acked: list[int] = []  # acknowledged, not yet deleted
        self._acked_set: set[int] = set()
        self._retry: set[int] = set()  # rejected by the broker: publish again
        self._cursor = 0  # highest seq handed to the publisher (except retries)
        self._wake = False
        self._stopping = False
        self._paused_until = 0.0
        self._published = self._acked_total = self._refused = self._rejected = 0
        self._loss_ids: deque[str] = deque(maxlen=_MAX_LOSS_IDS)
        self._error_text: str | None = None  # the failing condition already logged
        self._errors = 0  # failed rounds since it began
        self._thread: threading.Thread | None = None
        publisher.add_listener(on_connect=self.notify, on_disconnect=self._on_connection_lost)

    # -- life cycle ---------------------------------------------------------------------------

    def start(self) -> None:
        """Start the forwarding thread (once)."""
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self._run, name="outbox-forwarder", daemon=True)
        self._thread.start()

    def notify(self) -> None:
        """A row was added: wake the thread."""
        with self._cond:
            self._wake = True
            self._cond.notify_all()

    def drain(self, timeout_s: float, connected: Callable[[], bool]) -> bool:
        """Wait up to ``timeout_s`` for the outbox to empty while ``connected()`` holds.

        Returns True if it emptied. Returns early (False) as soon as the client is offline:
        waiting then only delays shutdown; the rows stay for the next start.
        """
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            depth = self.outbox.depth()
            with self._cond:
                if depth - len(self._acked) <= 0:
                    return True
            if not connected():
                return False
            self.notify()
            time.sleep(0.02)
        return False

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop publishing (rows in flight may still be acknowledged: see :meth:`flush`)."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout_s)
            if self._thread.is_alive():
                log.warning("outbox forwarder did not stop within %.1f s", timeout_s)
        self.flush()

    def flush(self) -> None:
        """Delete the rows acknowledged so far (called after the client has closed)."""
        with self._cond:
            acked, self._acked = self._acked, []
        failure = self._delete_acked(acked)
        if failure is not None:
            log.warning(
                "could not delete %d acknowledged detection(s) from the outbox (%s); they "
                "will be sent again at the next start",
                len(acked),
                failure,
            )

    # -- callbacks (network thread: keep them short) -----------------------------------------

    def _on_ack(self, seq: int) -> None:
        with self._cond:
            entry = self._inflight.pop(seq, None)
            if entry is None:
                return
            self._acked.append(seq)
            self._acked_set.add(seq)
            self._acked_total += 1
            self._cond.notify_all()
        if self.on_delivered is not None:
            self.on_delivered(*entry)

    def _on_fail(self, seq: int) -> None:
        with self._cond:
            if self._inflight.pop(seq, None) is None:
                return
            self._rejected += 1
            self._retry.add(seq)
            self._paused_until = time.monotonic() + self.retry_s
            self._cond.notify_all()

    def _on_connection_lost(self) -> None:
        # Whatever is in flight now may reach the broker twice (paho re-sends it after the
        # next CONNACK, and the broker may already have it): the only explained duplicates.
        with self._cond:
            self._loss_ids.extend(detection_id for detection_id, _ in self._inflight.values())

    # -- the thread ---------------------------------------------------------------------------

    def _run(self) -> None:
        next_prune = time.monotonic() + self.prune_every_s
        while True:
            with self._cond:
                while not (
                    self._stopping
                    or self._acked
                    or (self._wake and self._room() and time.monotonic() >= self._paused_until)
                ):
                    self._cond.wait(self._wait_s())
                    if time.monotonic() >= next_prune:
                        break
                    if self._room() and time.monotonic() >= self._paused_until:
                        self._wake = True  # periodic poll: rows may be waiting
                if self._stopping:
                    return
                acked, self._acked = self._acked, []
                self._wake = False
            try:
                # A failed delete keeps the rows (in _acked_set: never published again by this
                # process) and does not stop the rest of the outbox from being sent.
                failure = self._delete_acked(acked)
                if time.monotonic() >= next_prune:
                    self.outbox.prune_expired()
                    next_prune = time.monotonic() + self.prune_every_s
                self._publish_some()
                if failure is not None:
                    raise failure
                self._recovered()
            except Exception as exc:
                # A failing disk must not kill the thread: say so once, back off, try again.
                self._failed(exc)
                with self._cond:
                    self._paused_until = time.monotonic() + self.retry_s
                    if not self._stopping:
                        self._cond.wait(self.retry_s)  # no busy loop on a failing disk

    def _delete_acked(self, acked: list[int]) -> Exception | None:
        if not acked:
            return None
        try:
            self.outbox.delete(acked)
        except Exception as exc:
            with self._cond:  # keep them: delete again on the next round
                self._acked[:0] = acked
            return exc
        with self._cond:
            self._acked_set.difference_update(acked)
        return None

    def _failed(self, exc: Exception) -> None:
        """Log a failure once per condition (the same message again is only counted)."""
        self._errors += 1
        text = str(exc)
        if text == self._error_text:
            return
        self._error_text = text
        if isinstance(exc, ChorusError):  # explains itself: one line, no traceback
            log.warning("outbox forwarder: %s; retrying every %.1f s", text, self.retry_s)
        else:
            log.exception("outbox forwarder error; retrying every %.1f s", self.retry_s)

    def _recovered(self) -> None:
        if self._error_text is not None:
            log.info("outbox forwarder recovered after %d failed round(s)", self._errors)
            self._error_text, self._errors = None, 0

    def _room(self) -> int:
        return self.max_inflight - len(self._inflight)

    def _wait_s(self) -> float:
        paused = self._paused_until - time.monotonic()
        return max(0.01, min(0.5, paused)) if paused > 0 else 0.5

    def _publish_some(self) -> None:
        if not self.publisher.connected:
            return  # the rows wait in the outbox; the connect listener wakes us
        with self._cond:
            if time.monotonic() < self._paused_until:
                return
            room = self._room()
            retry = sorted(self._retry)
            after = min(retry[0] - 1, self._cursor) if retry else self._cursor
            skip = set(self._inflight) | self._acked_set
        if room <= 0:
            return
        rows = self.outbox.fetch(after, room + len(skip))
        sent = 0
        for row in rows:
            if sent >= room or self._stopping:
                break
            if row.seq in skip:
                continue
            with self._cond:
                self._inflight[row.seq] = (row.detection_id, row.created_s)
                self._retry.discard(row.seq)
                self._published += 1
            ok = self.publisher.publish_bytes(
                row.payload,
                on_ack=partial(self._on_ack, row.seq),
                on_fail=partial(self._on_fail, row.seq),
            )
            if not ok:
                with self._cond:
                    self._inflight.pop(row.seq, None)
                    self._retry.add(row.seq)
                    self._refused += 1
                    self._paused_until = time.monotonic() + self.retry_s
                log.debug("publish refused; retrying from seq %d in %.1f s", row.seq, self.retry_s)
                return
            sent += 1
            with self._cond:
                self._cursor = max(self._cursor, row.seq)
        if sent >= room:
            with self._cond:
                self._wake = True  # more rows may wait once acks free the window

    # -- state --------------------------------------------------------------------------------

    def stats(self) -> ForwarderStats:
        with self._cond:
            return ForwarderStats(
                published=self._published,
                acked=self._acked_total,
                refused=self._refused,
                rejected=self._rejected,
                inflight=len(self._inflight),
            )

    def inflight_at_connection_loss(self) -> set[str]:
        """Ids that were in flight when a connection was lost (they may arrive twice)."""
        with self._cond:
            return set(self._loss_ids)
