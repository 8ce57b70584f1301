"""The outbox on a real 2-MiB tmpfs with a real Mosquitto stopped, then started (issue 24, item 3).

Without a bound on the WAL and a disk floor, 211 of 1,175 detections fitted and the rest failed
with a traceback each; after a restart on the full disk the delivered rows could not be
deleted and were sent again at every start. Here the outbox prunes its oldest rows before the
disk fills, loses nothing else, deletes what the broker acknowledged on a disk that something
else filled, and says each condition once, without a traceback.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from mqtt_helpers import make_detection, wait_until

from agent.config import parse_config
from agent.schemas import validator
from agent.sinks.mqtt_output import MqttOutput

if TYPE_CHECKING:
    from conftest import MessageCollector, MosquittoBroker

PREFIX = "chorus-test"
DEVICE = "pi-01"
TOPIC = f"{PREFIX}/{DEVICE}/detections"
FLOOR_BYTES = 512 * 1024


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A 2-MiB tmpfs, unmounted at teardown (skipped where mounting is not permitted)."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    proc = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=2m,mode=0755", "tmpfs", str(mnt)],
        capture_output=True,
        text=True,
        timeout=10,
    )
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a 2-MiB tmpfs (needs root): {proc.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True, timeout=10)


def output_for(broker: MosquittoBroker, fs: Path, **mqtt: Any) -> MqttOutput:
    config = parse_config(
        {
            "device_id": DEVICE,
            "mqtt": {
                "enabled": True,
                "host": broker.host,
                "port": broker.port,
                "topic_prefix": PREFIX,
                "outbox_path": str(fs / "outbox.sqlite"),
                "outbox_min_free_bytes": FLOOR_BYTES,
                "reconnect_backoff": {"initial_s": 0.2, "max_s": 0.5},
                **mqtt,
            },
        },
        "test",
    )
    return MqttOutput(config, drain_timeout_s=0.5, close_timeout_s=2.0)


def fill(fs: Path) -> int:
    """Fill the file system with a junk file, as another program would; returns its size."""
    written = 0
    with open(fs / "junk", "wb", buffering=0) as f:
        block = bytes(4096)
        while True:
            try:
                n = f.write(block)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC
                break
            if not n:
                break
            written += n
    return written


def free_bytes(fs: Path) -> int:
    return shutil.disk_usage(fs).free


def tracebacks(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.exc_info]


def emit_all(out: MqttOutput, ids: range) -> list[str]:
    emitted = []
    for i in ids:
        d = make_detection(i, DEVICE)
        out.emit(d)  # raises if the outbox could not take it
        emitted.append(d.id)
    return emitted


def received_ids(sub: MessageCollector) -> list[str]:
    import json

    return [json.loads(m.payload)["id"] for m in sub.messages]


def test_full_disk_prunes_oldest_first_loses_nothing_else_and_recovers(
    small_fs: Path,
    mosquitto_factory: Callable[..., MosquittoBroker],
    mqtt_subscriber: Callable[..., MessageCollector],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    broker = mosquitto_factory(start=False)  # down: everything waits in the outbox
    out = output_for(broker, small_fs)
    # 1,175 detections (the red-team's count) fit under the bounds: none is lost.
    emitted = emit_all(out, range(1175))
    stats = out.outbox.stats()
    assert (stats.depth, stats.pruned_total) == (1175, 0)
    # Far more than fit: the floor prunes the oldest, every other row is kept.
    emitted += emit_all(out, range(1175, 4000))
    stats = out.outbox.stats()
    assert stats.pruned_disk == stats.pruned_total > 0
    assert stats.depth + stats.pruned_total == 4000 and stats.depth > 1175
    assert stats.below_floor and stats.reserve_held
    kept = emitted[-stats.depth :]
    assert out.outbox.ids() == kept  # oldest first: the newest detections are the ones kept
    free = free_bytes(small_fs)
    assert free > FLOOR_BYTES // 2  # the disk never filled
    status = out.status_payload()  # the heartbeat reports the floor and what it pruned
    assert status["outbox"]["pruned_total"] == stats.pruned_total
    assert status["outbox"]["pruned_disk"] == stats.pruned_disk
    assert status["disk"]["below_floor"] is True and status["disk"]["reserve_held"] is True
    validator("status").validate(status)
    floor_warnings = [r for r in caplog.records if "below outbox_min_free_bytes" in r.message]
    assert len(floor_warnings) == 1
    out.close()

    # Something else fills the disk to the last byte; the agent restarts; the broker is back.
    fill(small_fs)
    assert free_bytes(small_fs) < 4096
    broker.start()
    sub = mqtt_subscriber(broker, TOPIC)
    out = output_for(broker, small_fs)
    assert wait_until(lambda: out.outbox.depth() == 0, 30.0), out.outbox.stats()
    # Delivered and deleted on the full disk: new detections still go in and out.
    late = emit_all(out, range(4000, 4050))
    assert wait_until(lambda: out.outbox.depth() == 0, 10.0)
    assert sub.wait_for(len(kept) + 50, 10.0)
    assert received_ids(sub) == kept + late  # each exactly once, in order
    assert not out.outbox.stats().reserve_held  # it paid for the deletes
    out.close()

    # The next start sends nothing again.
    out = output_for(broker, small_fs)
    time.sleep(1.5)
    assert out.outbox.depth() == 0 and len(sub.messages) == len(kept) + 50
    out.close()
    assert tracebacks(caplog) == []
    reserve_warnings = [r for r in caplog.records if "released the outbox" in r.message]
    assert len(reserve_warnings) == 1


def test_full_disk_with_a_row_bound_keeps_exactly_that_many(
    small_fs: Path,
    mosquitto_factory: Callable[..., MosquittoBroker],
    mqtt_subscriber: Callable[..., MessageCollector],
    caplog: pytest.LogCaptureFixture,
) -> None:
    broker = mosquitto_factory(start=False)
    out = output_for(broker, small_fs, outbox_max_rows=50)
    emitted = emit_all(out, range(1175))
    stats = out.outbox.stats()
    assert (stats.depth, stats.pruned_total, stats.pruned_disk) == (50, 1125, 0)
    assert out.outbox.ids() == emitted[-50:]
    broker.start()
    sub = mqtt_subscriber(broker, TOPIC)
    assert wait_until(lambda: out.outbox.depth() == 0, 30.0)
    assert sub.wait_for(50, 10.0) and received_ids(sub) == emitted[-50:]
    out.close()
    assert tracebacks(caplog) == []


def test_outbox_files_are_private_whatever_the_umask(
    tmp_path: Path, mosquitto_factory: Callable[..., MosquittoBroker]
) -> None:
    broker = mosquitto_factory(start=False)
    old = os.umask(0o022)
    try:
        out = output_for(broker, tmp_path)
        emit_all(out, range(3))
        names = {"outbox.sqlite", "outbox.sqlite.lock", "outbox.sqlite.reserve"}
        names |= {"outbox.sqlite-wal", "outbox.sqlite-shm"}
        modes = {p.name: p.stat().st_mode & 0o777 for p in tmp_path.iterdir() if p.name in names}
        assert modes == dict.fromkeys(names, 0o600)
        out.close()
    finally:
        os.umask(old)
