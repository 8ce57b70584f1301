"""MQTT benchmarks: outbox drain rate, collector ingest rate, window end -> PUBACK latency.

    .venv/bin/python benchmarks/mqtt_bench.py            # all three, about a minute
    .venv/bin/python benchmarks/mqtt_bench.py --only drain --count 50000
    CHORUS_COLLECTOR_DSN='host=127.0.0.1 dbname=bench' \
        .venv/bin/python benchmarks/mqtt_bench.py --only ingest

Starts its own Mosquitto (``mosquitto`` must be installed) on a free loopback port in a temp
folder, prints figures and exits. Not a test: nothing is asserted; compare runs on one machine.

* drain: N detections already in the outbox (a long outage ended), then the agent's MQTT
  output starts; detections/s until the outbox is empty (every row acknowledged and deleted).
* ingest: N detections queued by the broker for an absent collector (persistent session),
  then the collector connects; detections/s until it has validated, de-duplicated and
  committed all of them (SQLite, and PostgreSQL when ``$CHORUS_COLLECTOR_DSN`` is set).
* latency: the real pipeline (shipped default bundle) on a real-time synthetic stream, every
  window reported (threshold 1 %, no merging); for each detection, the time from the end of its
  window (the moment its last sample was captured) to the broker's PUBACK, p50/p95/max.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from agent.config import AgentConfig, parse_config
from agent.detection.types import Detection
from agent.outbox import Outbox, encode_payload
from agent.sinks.mqtt_output import MqttOutput

T0 = datetime(2026, 5, 1, 4, 30, tzinfo=UTC)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def mosquitto(folder: Path) -> Iterator[int]:
    exe = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    port = free_port()
    conf = folder / "mosquitto.conf"
    lines = [f"listener {port} 127.0.0.1", "allow_anonymous true", "persistence false",
             "max_queued_messages 1000000", "log_dest none"]  # fmt: skip
    if os.geteuid() == 0:
        lines.append("user root")
    conf.write_text("\n".join(lines) + "\n")
    proc = subprocess.Popen([exe, "-c", str(conf)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
                break
            time.sleep(0.02)
        yield port
    finally:
        proc.terminate()
        proc.wait(5)


def detection(i: int) -> Detection:
    return Detection(
        "eurrob1", "Erithacus rubecula", "European Robin", 0.9, 2.2,
        T0 + timedelta(seconds=2.5 * i), T0 + timedelta(seconds=2.5 * i + 5), 2.5 * i,
        2.5 * i + 5, "sep1", "birds", "chorus-demo", "0.1.0", "field-01", "mic:default",
    )  # fmt: skip


def config(port: int, outbox: Path, **mqtt_keys: object) -> AgentConfig:
    section = {"enabled": True, "host": "127.0.0.1", "port": port, "outbox_path": str(outbox)}
    section.update(mqtt_keys)
    return parse_config({"device_id": "field-01", "mqtt": section})


def bench_drain(port: int, folder: Path, count: int) -> None:
    print(f"\n== outbox drain: {count} waiting detections -> local Mosquitto, QoS 1")
    payload = encode_payload(detection(0).to_payload())
    for fsync in (True, False):
        for inflight in (100, 1000):
            path = folder / f"drain-{fsync}-{inflight}.sqlite"
            box = Outbox(path, max_rows=count + 1, fsync=False)
            box._db.execute("BEGIN")  # bulk fill in one transaction (the fill is not timed)
            box._db.executemany(
                "INSERT INTO outbox (detection_id, created_s, payload) VALUES (?, ?, ?)",
                ((f"{i:032x}", time.time(), payload) for i in range(count)),
            )
            box._db.execute("COMMIT")
            box.close()
            t = time.perf_counter()
            out = MqttOutput(
                config(
                    port, path, outbox_fsync=fsync, max_inflight=inflight, status_interval_s=3600
                )
            )
            while out.outbox.depth() > 0:
                time.sleep(0.002)
            dt = time.perf_counter() - t
            out.close()
            print(f"  outbox_fsync={str(fsync).lower():5}  max_inflight={inflight:<5} "
                  f"{count / dt:8.0f} detections/s  ({dt:.2f} s)")  # fmt: skip


def bench_ingest(port: int, folder: Path, count: int) -> None:
    from agent.collector.service import Collector, CollectorConfig
    from agent.collector.store import PostgresStore, SqliteStore

    print(f"\n== collector ingest: {count} detections published at QoS 1, validated, stored")
    stores: list[tuple[str, object]] = [("SQLite", lambda: SqliteStore(folder / "c.sqlite"))]
    dsn = os.environ.get("CHORUS_COLLECTOR_DSN")
    if dsn:
        stores.append(("PostgreSQL", lambda: PostgresStore(dsn)))
    else:
        print("  (set CHORUS_COLLECTOR_DSN to measure PostgreSQL too)")
    for name, make in stores:
        store = make()  # type: ignore[operator]
        cfg = CollectorConfig(host="127.0.0.1", port=port, client_id=f"bench-{name}")
        # 1. Create the collector's persistent session, then leave: the broker queues for it.
        collector = Collector(cfg, store)
        collector.start()
        collector.subscribed.wait(10)
        collector.stop()
        # 2. Publish the backlog (timed apart: a single paho publisher is slower than the
        #    collector, so timing both together would measure the publisher).
        pub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-pub")
        pub.max_inflight_messages_set(1000)
        pub.connect("127.0.0.1", port)
        pub.loop_start()
        base = detection(0).to_payload()
        run = time.time_ns()
        t = time.perf_counter()
        for i in range(count):
            base["id"] = f"{run:x}{i:012x}"[-32:]
            info = pub.publish(
                "chorus/field-01/detections", json.dumps(base, separators=(",", ":")), qos=1
            )
        info.wait_for_publish(60)
        t_pub = time.perf_counter() - t
        pub.disconnect()
        pub.loop_stop()
        # 3. The collector comes back and works through the backlog: that is the ingest rate.
        collector = Collector(cfg, store)
        t = time.perf_counter()
        collector.start()
        collector.wait_until(lambda s: s.stored >= count, 120)
        dt = time.perf_counter() - t
        st = collector.stats()
        collector.stop()
        store.close()  # type: ignore[attr-defined]
        print(
            f"  {name:10} {st.stored / dt:8.0f} detections/s  ({st.stored} stored in "
            f"{dt:.2f} s; {st.rejected} rejected; the backlog took {t_pub:.2f} s to publish)"
        )


def bench_latency(port: int, folder: Path, duration_s: float) -> None:
    from agent.app import build_engine, run_live
    from agent.audio.synthetic import SyntheticSource

    print(
        f"\n== window end -> PUBACK: real pipeline, real-time synthetic stream, {duration_s:.0f} s"
    )
    cfg = parse_config(
        {
            "device_id": "field-01",
            "audio": {"source": "synthetic", "synthetic": {"duration_s": duration_s}},
            "detection": {"threshold": 0.01, "merge": False},
            "mqtt": {"enabled": True, "host": "127.0.0.1", "port": port,
                     "outbox_path": str(folder / "latency.sqlite")},
        }
    )  # fmt: skip
    engine = build_engine(cfg)
    acked: dict[str, tuple[float, float]] = {}  # id -> (committed, acknowledged), wall clock

    def on_delivered(detection_id: str, created_s: float) -> None:
        acked[detection_id] = (created_s, time.time())

    class Ends:
        """Records each detection's window end (after the outbox, which comes first)."""

        def __init__(self) -> None:
            self.end_s: dict[str, float] = {}

        def emit(self, d: Detection) -> None:
            self.end_s[d.id] = d.end_utc.timestamp()

        def close(self) -> None:
            pass

    out = MqttOutput(cfg, on_delivered=on_delivered)
    ends = Ends()
    source = SyntheticSource(cfg.audio.synthetic, engine.models.sample_rate_hz, realtime=True)
    run_live(engine, [source], [out, ends], threading.Event())
    total, commit, ack = [], [], []
    for detection_id, end in ends.end_s.items():
        if detection_id in acked:
            created, ack_t = acked[detection_id]
            total.append(ack_t - end)
            commit.append(created - end)
            ack.append(ack_t - created)
    if not total:
        print("  no detections were acknowledged")
        return

    def fmt(xs: list[float]) -> str:
        q = statistics.quantiles(xs, n=20) if len(xs) > 1 else xs * 19
        return (f"p50 {1000 * statistics.median(xs):7.1f} ms  p95 {1000 * q[18]:7.1f} ms  "
                f"max {1000 * max(xs):7.1f} ms")  # fmt: skip

    print(f"  {len(total)} detections from {engine.stats.windows} windows "
          f"(real-time factor {engine.stats.real_time_factor:.3f})")  # fmt: skip
    print(f"  window end -> PUBACK        {fmt(total)}")
    print(f"  window end -> outbox commit {fmt(commit)}   (capture block + inference)")
    print(f"  outbox commit -> PUBACK     {fmt(ack)}")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--only", choices=["drain", "ingest", "latency"])
    p.add_argument("--count", type=int, default=20_000, help="detections for drain/ingest")
    p.add_argument("--duration-s", type=float, default=30.0, help="stream length for latency")
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    print(f"machine: {os.cpu_count()} CPU(s), Python {sys.version.split()[0]}")
    with tempfile.TemporaryDirectory(prefix="chorus-bench-") as tmp:
        folder = Path(tmp)
        with mosquitto(folder) as port:
            if args.only in (None, "drain"):
                bench_drain(port, folder, args.count)
            if args.only in (None, "ingest"):
                bench_ingest(port, folder, args.count)
            if args.only in (None, "latency"):
                bench_latency(port, folder, args.duration_s)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
