"""Forwarder logic against a scripted publisher: window, order, acks, refusals, restarts.

The real-broker behaviour (outages, kills, network cuts) is in tests/integration/test_faults.py;
here the publisher is a stand-in so that refusals and broker rejections, which a healthy
Mosquitto never produces, can be scripted.
"""

from __future__ import annotations

import json
import random
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from agent.backoff import backoff_delay_s
from agent.forwarder import Forwarder
from agent.outbox import Outbox

Callback = Callable[[], None] | None


class ScriptedPublisher:
    """Records publishes; the test acks, fails or drops them, or refuses new ones."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.sent: list[str] = []  # ids, in publish order (re-sends included)
        self.unacked: dict[str, tuple[Callback, Callback]] = {}
        self.max_unacked = 0
        self.refuse = False
        self.auto_ack = False
        self.connected = True
        self.on_connect: list[Callable[[], None]] = []
        self.on_disconnect: list[Callable[[], None]] = []

    def publish_bytes(self, data: bytes, on_ack: Callback = None, on_fail: Callback = None) -> bool:
        detection_id = json.loads(data)["id"]
        with self.lock:
            if self.refuse:
                return False
            self.sent.append(detection_id)
            if not self.auto_ack:
                self.unacked[detection_id] = (on_ack, on_fail)
                self.max_unacked = max(self.max_unacked, len(self.unacked))
        if self.auto_ack and on_ack:
            on_ack()
        return True

    def add_listener(
        self, on_connect: Callable[[], None] | None = None, on_disconnect: Callback = None
    ) -> None:
        if on_connect:
            self.on_connect.append(on_connect)
        if on_disconnect:
            self.on_disconnect.append(on_disconnect)

    def ack(self, n: int | None = None, fail: bool = False) -> list[str]:
        with self.lock:
            ids = list(self.unacked)[:n]
            callbacks = [self.unacked.pop(i) for i in ids]
        for on_ack, on_fail in callbacks:
            cb = on_fail if fail else on_ack
            if cb:
                cb()
        return ids


def wait_until(predicate: Callable[[], bool], timeout_s: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.005)
    return True


def fill(box: Outbox, n: int, start: int = 0) -> list[str]:
    ids = [f"d{i:04d}" for i in range(start, start + n)]
    for i in ids:
        box.put(i, json.dumps({"id": i}).encode())
    return ids


@pytest.fixture
def box(tmp_path: Path) -> Outbox:
    b = Outbox(tmp_path / "o.sqlite", fsync=False)
    yield b
    b.close()


def test_window_is_respected_order_kept_and_rows_deleted_on_ack(box: Outbox) -> None:
    ids = fill(box, 25)
    pub = ScriptedPublisher()
    fwd = Forwarder(box, pub, max_inflight=10)
    fwd.start()
    assert wait_until(lambda: len(pub.sent) == 10)
    time.sleep(0.1)
    assert len(pub.sent) == 10  # the window is full: nothing more until acks come
    assert pub.ack(4) == ids[:4]
    assert wait_until(lambda: len(pub.sent) == 14)
    assert wait_until(lambda: box.depth() == 21)  # deleted only once acknowledged
    while len(pub.sent) < 25 or pub.unacked:
        pub.ack()
        time.sleep(0.01)
    assert wait_until(lambda: box.depth() == 0)
    fwd.stop()
    assert pub.sent == ids  # oldest first, each exactly once
    assert pub.max_unacked == 10
    st = fwd.stats()
    assert (st.published, st.acked, st.inflight) == (25, 25, 0)


def test_new_rows_are_sent_promptly(box: Outbox) -> None:
    pub = ScriptedPublisher()
    pub.auto_ack = True
    fwd = Forwarder(box, pub, max_inflight=5)
    fwd.start()
    for i in range(20):
        fill(box, 1, start=i)
        fwd.notify()
    assert wait_until(lambda: box.depth() == 0)
    fwd.stop()
    assert pub.sent == [f"d{i:04d}" for i in range(20)]


def test_refused_publish_is_retried_after_a_pause(box: Outbox) -> None:
    ids = fill(box, 3)
    pub = ScriptedPublisher()
    pub.refuse = True
    pub.auto_ack = True
    fwd = Forwarder(box, pub, max_inflight=10, retry_s=0.2)
    fwd.start()
    assert wait_until(lambda: fwd.stats().refused >= 1)
    assert box.depth() == 3
    pub.refuse = False
    assert wait_until(lambda: box.depth() == 0)
    fwd.stop()
    assert pub.sent == ids


def test_broker_rejection_is_retried_without_skipping_or_repeating_others(box: Outbox) -> None:
    ids = fill(box, 4)
    pub = ScriptedPublisher()
    fwd = Forwarder(box, pub, max_inflight=10, retry_s=0.1)
    fwd.start()
    assert wait_until(lambda: len(pub.sent) == 4)
    # The broker rejects d0001 and accepts the rest.
    with pub.lock:
        rejected = pub.unacked.pop(ids[1])
    pub.ack()
    rejected[1]()
    assert wait_until(lambda: len(pub.sent) == 5)
    assert pub.sent[4] == ids[1]  # only the rejected row went again
    pub.ack()
    assert wait_until(lambda: box.depth() == 0)
    fwd.stop()
    assert fwd.stats().rejected == 1


def test_restart_resends_exactly_the_unacknowledged_rows(tmp_path: Path) -> None:
    path = tmp_path / "o.sqlite"
    box = Outbox(path)
    ids = fill(box, 6)
    pub = ScriptedPublisher()
    fwd = Forwarder(box, pub, max_inflight=6)
    fwd.start()
    assert wait_until(lambda: len(pub.sent) == 6)
    pub.ack(2)
    assert wait_until(lambda: box.depth() == 4)
    fwd.stop()  # "crash": four rows published, never acknowledged
    box.close()

    box = Outbox(path)
    pub2 = ScriptedPublisher()
    pub2.auto_ack = True
    fwd2 = Forwarder(box, pub2, max_inflight=6)
    fwd2.start()
    assert wait_until(lambda: box.depth() == 0)
    fwd2.stop()
    box.close()
    assert pub2.sent == ids[2:]  # same ids again, nothing acknowledged is repeated


def test_nothing_is_handed_to_the_client_while_it_is_offline(box: Outbox) -> None:
    pub = ScriptedPublisher()
    pub.connected = False
    pub.auto_ack = True
    fwd = Forwarder(box, pub, max_inflight=10)
    fwd.start()
    ids = fill(box, 3)
    fwd.notify()
    time.sleep(0.3)
    assert pub.sent == [] and box.depth() == 3  # kept on disk, where the bounds apply
    pub.connected = True
    for cb in pub.on_connect:
        cb()
    assert wait_until(lambda: box.depth() == 0, 2.0)
    fwd.stop()
    assert pub.sent == ids


def test_ids_in_flight_at_a_connection_loss_are_recorded(box: Outbox) -> None:
    ids = fill(box, 5)
    pub = ScriptedPublisher()
    fwd = Forwarder(box, pub, max_inflight=3)
    fwd.start()
    assert wait_until(lambda: len(pub.sent) == 3)
    pub.ack(1)
    assert wait_until(lambda: fwd.stats().inflight == 3)  # the window refilled
    for cb in pub.on_disconnect:
        cb()
    assert fwd.inflight_at_connection_loss() == set(ids[1:4])
    fwd.stop()


def test_drain_returns_early_when_offline(box: Outbox) -> None:
    fill(box, 2)
    pub = ScriptedPublisher()
    fwd = Forwarder(box, pub)
    fwd.start()
    t = time.monotonic()
    assert not fwd.drain(5.0, connected=lambda: False)
    assert time.monotonic() - t < 1.0
    pub.auto_ack = True
    pub.ack()
    assert fwd.drain(5.0, connected=lambda: True)
    fwd.stop()


def test_backoff_grows_is_capped_and_jittered() -> None:
    rng = random.Random(1)
    delays = [[backoff_delay_s(a, 1.0, 60.0, rng) for a in range(10)] for _ in range(50)]
    for attempt in range(10):
        ceiling = min(60.0, 2.0**attempt)
        column = [d[attempt] for d in delays]
        assert all(ceiling / 2 <= x <= ceiling for x in column)
        assert len(set(column)) == 50  # fifty devices do not retry in lock-step
    assert max(max(d) for d in delays) <= 60.0
    assert backoff_delay_s(10_000, 1.0, 60.0, rng) <= 60.0  # no overflow
