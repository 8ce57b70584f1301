"""chorus-collector against a real Mosquitto, real SQLite and a real PostgreSQL server."""

from __future__ import annotations

import csv
import io
import json
import os
import signal
import stat
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from mqtt_helpers import RawPublisher, agent_config, make_detection, wait_until

from agent.collector.store import EXPORT_COLUMNS, PostgresStore, SqliteStore, export_csv
from agent.sinks.mqtt_output import MqttOutput

if TYPE_CHECKING:
    from conftest import MosquittoBroker

ROOT = Path(__file__).resolve().parents[2]
TOPIC = "chorus/field-01/detections"


def payload(i: int, device: str = "field-01", **changes: Any) -> dict[str, Any]:
    p = make_detection(i, device).to_payload()
    p.update(changes)
    return p


def test_malformed_payloads_are_rejected_counted_and_never_crash_it(
    mosquitto_broker: MosquittoBroker, collector_factory: Callable[..., Any], tmp_path: Path
) -> None:
    store = SqliteStore(tmp_path / "c.sqlite")
    collector = collector_factory(mosquitto_broker, store=store)
    pub = RawPublisher(mosquitto_broker.host, mosquitto_broker.port)
    good = [payload(i) for i in range(3)]
    no_id = payload(10)
    del no_id["id"]
    bad: list[tuple[str, bytes, str]] = [
        (TOPIC, b"{not json", "not_json"),
        (TOPIC, b"\xff\xfe\x00garbage", "not_utf8"),
        (TOPIC, b"", "not_json"),
        (TOPIC, b"[1, 2, 3]", "schema"),
        (TOPIC, b"null", "schema"),
        (TOPIC, json.dumps(no_id).encode(), "schema"),
        (TOPIC, json.dumps(payload(11, confidence="high")).encode(), "schema"),
        (TOPIC, json.dumps(payload(12, start_utc="yesterday")).encode(), "schema"),
        (TOPIC, json.dumps(payload(13, device="someone-else")).encode(), "device_mismatch"),
        (TOPIC, b"[" * 100_000 + b"]" * 100_000, "too_large"),
        (TOPIC, b"[" * 20_000 + b"]" * 20_000, "not_json"),  # deep nesting: RecursionError
        ("chorus/field-01/availability", b"maybe", "schema"),
        ("chorus/field-01/status", b'{"schema": "chorus.status/1"}', "schema"),
    ]
    pub.publish(TOPIC, json.dumps(good[0]))
    for topic, data, _ in bad:
        pub.publish(topic, data)
    for p in good[1:]:
        pub.publish(TOPIC, json.dumps(p))
    expected: dict[str, int] = {}
    for _, _, reason in bad:
        expected[reason] = expected.get(reason, 0) + 1
    assert collector.wait_until(lambda s: s.rejected >= len(bad) and s.stored >= 3, 10.0)
    st = collector.stats()
    assert st.rejected == len(bad) and st.rejected_by_reason == expected
    assert st.stored == 3 and st.duplicates == 0
    assert sorted(store.ids()) == sorted(p["id"] for p in good)
    assert store.reject_reasons() == expected
    # Still alive and storing after all that.
    pub.publish(TOPIC, json.dumps(payload(99)))
    assert collector.wait_until(lambda s: s.stored == 4, 5.0)
    pub.close()


def test_duplicates_are_stored_once_and_counted(
    mosquitto_broker: MosquittoBroker, collector_factory: Callable[..., Any], tmp_path: Path
) -> None:
    store = SqliteStore(tmp_path / "c.sqlite")
    collector = collector_factory(mosquitto_broker, store=store)
    pub = RawPublisher(mosquitto_broker.host, mosquitto_broker.port)
    p = payload(0)
    for _ in range(3):
        pub.publish(TOPIC, json.dumps(p))
    pub.publish(TOPIC, json.dumps(payload(1)))
    assert collector.wait_until(lambda s: s.received >= 4, 5.0)
    st = collector.stats()
    assert (st.stored, st.duplicates) == (2, 2)
    assert [i for i, _ in collector.duplicate_log] == [p["id"], p["id"]]
    assert store.count() == 2
    pub.close()


def test_collector_away_gets_what_was_published_meanwhile(
    mosquitto_broker: MosquittoBroker, collector_factory: Callable[..., Any], tmp_path: Path
) -> None:
    store = SqliteStore(tmp_path / "c.sqlite")
    first = collector_factory(mosquitto_broker, store=store, client_id="central-1")
    pub = RawPublisher(mosquitto_broker.host, mosquitto_broker.port)
    pub.publish(TOPIC, json.dumps(payload(0)))
    assert first.wait_until(lambda s: s.stored == 1, 5.0)
    first.stop()
    sent = [payload(i) for i in range(1, 51)]
    for p in sent:
        pub.publish(TOPIC, json.dumps(p))  # queued by the broker in the collector's session
    again = collector_factory(mosquitto_broker, store=store, client_id="central-1")
    assert again.wait_until(lambda s: s.stored == 50, 10.0)
    assert store.count() == 51
    pub.close()


def test_shared_subscription_splits_load_into_postgresql(
    mosquitto_broker: MosquittoBroker,
    collector_factory: Callable[..., Any],
    postgres_dsn: str,
) -> None:
    stores = [PostgresStore(postgres_dsn), PostgresStore(postgres_dsn)]
    collectors = [
        collector_factory(mosquitto_broker, store=s, share_group="central") for s in stores
    ]
    pub = RawPublisher(mosquitto_broker.host, mosquitto_broker.port)
    sent = []
    for i in range(200):
        device = f"pi-{i % 4}"
        p = payload(i, device)
        sent.append(p["id"])
        pub.publish(f"chorus/{device}/detections", json.dumps(p))
    assert wait_until(lambda: sum(c.stats().stored for c in collectors) == 200, 15.0)
    shares = [c.stats().stored for c in collectors]
    assert all(n > 0 for n in shares), shares  # both took part
    assert sum(c.stats().duplicates for c in collectors) == 0  # each message went to one
    assert sorted(stores[0].ids()) == sorted(sent)
    out = io.StringIO()
    assert export_csv(stores[0], out, device="pi-1") == 50
    rows = list(csv.DictReader(io.StringIO(out.getvalue())))
    assert tuple(rows[0]) == EXPORT_COLUMNS and {r["device"] for r in rows} == {"pi-1"}
    assert rows[0]["start_utc"].endswith("Z") and float(rows[0]["confidence"]) == 0.9
    pub.close()


def test_postgresql_connection_loss_is_retried_without_loss(
    mosquitto_broker: MosquittoBroker,
    collector_factory: Callable[..., Any],
    postgres_dsn: str,
) -> None:
    import psycopg

    store = PostgresStore(postgres_dsn)
    collector = collector_factory(mosquitto_broker, store=store)
    pub = RawPublisher(mosquitto_broker.host, mosquitto_broker.port)
    sent = [payload(i) for i in range(40)]
    for p in sent[:20]:
        pub.publish(TOPIC, json.dumps(p))
    assert collector.wait_until(lambda s: s.stored == 20, 10.0)
    # The server drops the collector's session (as in a failover or restart).
    with psycopg.connect(postgres_dsn, autocommit=True) as admin:
        admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
    for p in sent[20:]:
        pub.publish(TOPIC, json.dumps(p))
    assert collector.wait_until(lambda s: s.stored == 40, 15.0)
    assert collector.stats().store_errors >= 1
    assert sorted(store.ids()) == sorted(p["id"] for p in sent)
    pub.close()


def test_status_and_availability_are_kept_per_device(
    mosquitto_broker: MosquittoBroker, collector_factory: Callable[..., Any], tmp_path: Path
) -> None:
    store = SqliteStore(tmp_path / "c.sqlite")
    collector = collector_factory(mosquitto_broker, store=store)
    out = MqttOutput(
        agent_config(mosquitto_broker.host, mosquitto_broker.port, tmp_path / "o.sqlite")
    )
    assert wait_until(lambda: (store.device("field-01") or {}).get("status") is not None, 10.0)
    row = store.device("field-01")
    assert row is not None and row["availability"] == "online"
    assert json.loads(row["status"])["schema"] == "chorus.status/1"
    out.close()
    assert wait_until(lambda: (store.device("field-01") or {}).get("availability") == "offline")
    assert collector.stats().rejected == 0


def _collector_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "agent.collector", *args]


def test_collector_cli_run_and_export(mosquitto_broker: MosquittoBroker, tmp_path: Path) -> None:
    db = tmp_path / "central.sqlite"
    env = {**os.environ, "CHORUS_COLLECTOR_DSN": ""}
    proc = subprocess.Popen(
        _collector_cmd(
            "run",
            "--host",
            mosquitto_broker.host,
            "--port",
            str(mosquitto_broker.port),
            "--db",
            str(db),
            "--client-id",
            "cli-collector",
        ),
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=ROOT,
    )
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stderr or []), daemon=True)
    reader.start()
    try:
        assert wait_until(lambda: any("collector subscribed" in x for x in lines), 15.0), lines
        out = MqttOutput(
            agent_config(mosquitto_broker.host, mosquitto_broker.port, tmp_path / "o.sqlite")
        )
        detections = [make_detection(i) for i in range(30)]
        for d in detections:
            out.emit(d)
        out.close()  # drained: every detection acknowledged by the broker
        assert out.outbox.stats().depth == 0

        def stored() -> int:
            if not db.exists():
                return 0
            store = SqliteStore(db)
            try:
                return store.count()
            finally:
                store.close()

        assert wait_until(lambda: stored() == 30, 15.0)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=20)
        reader.join(5.0)
    err = "".join(lines)
    assert proc.returncode == 0, err
    assert "30 stored, 0 duplicate(s), 0 rejected" in err

    csv_path = tmp_path / "export" / "all.csv"
    done = subprocess.run(
        _collector_cmd("export", "--db", str(db), "--out", str(csv_path), "--since",
                       "2026-05-01T04:30:10Z"),
        capture_output=True, text=True, timeout=30, env=env, cwd=ROOT,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    rows = list(csv.DictReader(csv_path.open(newline="")))
    expected = [d for d in detections if d.start_s >= 10.0]  # --since is inclusive
    assert [r["id"] for r in rows] == [d.id for d in expected]
    assert "exported 26 detection(s)" in done.stderr

    bad = subprocess.run(
        _collector_cmd("export", "--db", str(db), "--out", "-", "--since", "last tuesday"),
        capture_output=True, text=True, timeout=30, env=env, cwd=ROOT,
    )  # fmt: skip
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines() == [
        "chorus-collector: error: not an ISO 8601 time with a zone: 'last tuesday'"
    ]


def test_export_to_stdout_from_postgresql(postgres_dsn: str, tmp_path: Path) -> None:
    from agent.collector.store import DetectionRow

    store = PostgresStore(postgres_dsn)
    rows = [
        DetectionRow.from_payload(payload(i), "2026-05-01T05:00:00.000Z", "{}") for i in range(3)
    ]
    assert store.insert(rows + rows[:1]) == {r.id for r in rows}  # in-batch duplicate skipped
    store.close()
    done = subprocess.run(
        _collector_cmd("export", "--out", "-"),
        capture_output=True, text=True, timeout=30, cwd=ROOT,
        env={**os.environ, "CHORUS_COLLECTOR_DSN": postgres_dsn},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    exported = list(csv.DictReader(io.StringIO(done.stdout)))
    assert [r["id"] for r in exported] == [r.id for r in rows]
    assert exported[0]["received_utc"] == "2026-05-01T05:00:00.000Z"


@pytest.mark.parametrize("mode", [0o644, 0o600])
def test_dsn_file_must_be_private(tmp_path: Path, mode: int) -> None:
    dsn_file = tmp_path / "dsn"
    dsn_file.write_text("host=127.0.0.1 port=1 user=nobody dbname=none connect_timeout=1\n")
    dsn_file.chmod(mode)
    done = subprocess.run(
        _collector_cmd("export", "--dsn-file", str(dsn_file), "--out", "-"),
        capture_output=True, text=True, timeout=30, cwd=ROOT,
    )  # fmt: skip
    assert done.returncode == 2 and "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("chorus-collector: error: ")
    if mode == 0o644:
        assert "readable by every user" in lines[0]
    else:
        assert "cannot use PostgreSQL" in lines[0]


@pytest.mark.parametrize("name", ["typo.sqlite", "missing-dir/central.sqlite"])
def test_export_from_a_missing_database_is_one_error_and_creates_nothing(
    tmp_path: Path, name: str
) -> None:
    typo = tmp_path / name
    done = subprocess.run(
        _collector_cmd("export", "--db", str(typo), "--out", "-"),
        capture_output=True, text=True, timeout=30, cwd=ROOT,
        env={**os.environ, "CHORUS_COLLECTOR_DSN": ""},
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().splitlines() == [
        f"chorus-collector: error: no collector database at {typo}"
    ]
    assert done.stdout == ""
    assert sorted(tmp_path.iterdir()) == []  # nothing created, no folder either


def test_export_refuses_a_sqlite_file_that_is_not_a_collector_database(tmp_path: Path) -> None:
    import sqlite3

    other = tmp_path / "outbox.sqlite"
    with sqlite3.connect(other) as db:
        db.execute("CREATE TABLE outbox (seq INTEGER PRIMARY KEY)")
    done = subprocess.run(
        _collector_cmd("export", "--db", str(other), "--out", "-"),
        capture_output=True, text=True, timeout=30, cwd=ROOT,
        env={**os.environ, "CHORUS_COLLECTOR_DSN": ""},
    )  # fmt: skip
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        f"chorus-collector: error: {other} is not a collector database (no detections table)"
    ]
    with sqlite3.connect(other) as db:  # left as it was
        assert [r[0] for r in db.execute("SELECT name FROM sqlite_master")] == ["outbox"]


def test_collector_database_is_private_whatever_the_umask(tmp_path: Path) -> None:
    from agent.collector.store import DetectionRow

    row = DetectionRow.from_payload(payload(0), "2026-05-01T05:00:00.000Z", "{}")
    old = os.umask(0)
    try:
        store = SqliteStore(tmp_path / "new" / "central.sqlite")
        store.insert([row])
        made = list((tmp_path / "new").iterdir())
        assert {p.name for p in made} >= {"central.sqlite", "central.sqlite-wal"}
        modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in made}
        assert set(modes.values()) == {0o640}, modes
        assert stat.S_IMODE((tmp_path / "new").stat().st_mode) == 0o750
        store.close()
        # A database created 0644 by an older version is tightened when opened.
        (tmp_path / "new" / "central.sqlite").chmod(0o644)
        SqliteStore(tmp_path / "new" / "central.sqlite").close()
        assert stat.S_IMODE((tmp_path / "new" / "central.sqlite").stat().st_mode) == 0o640
    finally:
        os.umask(old)
