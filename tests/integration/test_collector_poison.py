"""One message the store cannot take never halts ingestion (issue 24, item 1).

Each poison is published between two valid detections to a collector on a real Mosquitto
storing into real SQLite or a real PostgreSQL server. The poison is rejected with its reason,
acknowledged (a collector resuming the session does not get it again), and both valid
detections are stored.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from mqtt_helpers import RawPublisher, make_detection

from agent.collector.store import PostgresStore, SqliteStore

if TYPE_CHECKING:
    from conftest import MosquittoBroker

TOPIC = "chorus/field-01/detections"
STATUS_TOPIC = "chorus/field-01/status"


def detection(i: int, **changes: Any) -> dict[str, Any]:
    p = make_detection(i).to_payload()
    p.update(changes)
    return p


def with_species(i: int, **species: str) -> dict[str, Any]:
    p = detection(i)
    p["species"] = {**p["species"], **species}
    return p


def status(**changes: Any) -> dict[str, Any]:
    counts = dict.fromkeys(("windows", "detections", "window_errors", "dropped_samples"), 0)
    counts.update(sink_errors=0, real_time_factor=0.1, audio_s=5.0)
    p: dict[str, Any] = {
        "schema": "chorus.status/1",
        "device": "field-01",
        "time_utc": "2026-05-01T04:30:00.000Z",
        "agent_version": "0.1.0",
        "uptime_s": 5.0,
        "model": None,
        "pipeline": counts,
        "audio": {"source": "mic:default", "overflows": 0, "stats": {}},
        "outbox": {
            **dict.fromkeys(("depth", "inflight", "pruned_total", "delivered"), 0),
            "oldest_age_s": None,
        },
        "mqtt": {"connects": 1, "connect_failures": 0},
        "disk": {"path": "/var/lib/chorus", "free_bytes": 1},
    }
    p.update(changes)
    return p


def text(p: dict[str, Any], old: str = "", new: str = "") -> bytes:
    """The payload as JSON (Python's encoder writes NaN, Infinity and \\udXXX escapes)."""
    return json.dumps(p).replace(old, new).encode()


# name -> (topic, payload, the reject reason); the same on SQLite and PostgreSQL.
POISONS: dict[str, tuple[str, bytes, str]] = {
    "windows_1e30": (TOPIC, text(detection(1, windows=10**30)), "schema"),
    # Fits SQLite's 64-bit INTEGER, not PostgreSQL's INTEGER column.
    "windows_2e40": (TOPIC, text(detection(1, windows=2**40)), "schema"),
    "lone_surrogate_code": (TOPIC, text(with_species(1, code="\ud800")), "bad_unicode"),
    # PostgreSQL text cannot hold a NUL.
    "nul_in_common_name": (TOPIC, text(with_species(1, common_name="Robin\u0000")), "schema"),
    "nan_logit": (TOPIC, text(detection(1, logit=float("nan"))), "not_finite"),
    "infinite_start_s": (TOPIC, text(detection(1, start_s=float("inf"))), "not_finite"),
    "overflowing_float": (
        TOPIC,
        text(detection(1), '"logit": 2.2', '"logit": 1e400'),
        "not_finite",
    ),
    "int_of_5000_digits": (
        TOPIC,
        text(detection(1), '"windows": 1', '"windows": ' + "1" * 5000),
        "not_json",
    ),
    # A valid RFC 3339 time whose UTC equivalent is past year 9999.
    "time_past_9999_utc": (
        TOPIC,
        text(detection(1, end_utc="9999-12-31T23:59:59-23:59")),
        "schema",
    ),
    "status_nan": (STATUS_TOPIC, text(status(uptime_s=float("nan"))), "not_finite"),
    "status_lone_surrogate": (STATUS_TOPIC, text(status(agent_version="\udc00")), "bad_unicode"),
}


@pytest.fixture(params=["sqlite", "postgresql"])
def store_factory(request: pytest.FixtureRequest, tmp_path: Path) -> Callable[[], Any]:
    if request.param == "sqlite":
        return lambda: SqliteStore(tmp_path / "central.sqlite")
    dsn = request.getfixturevalue("postgres_dsn")
    return lambda: PostgresStore(dsn)


@pytest.mark.parametrize("poison", list(POISONS))
def test_a_poison_message_is_rejected_acknowledged_and_the_next_one_stored(
    poison: str,
    store_factory: Callable[[], Any],
    mosquitto_broker: MosquittoBroker,
    collector_factory: Callable[..., Any],
) -> None:
    topic, data, reason = POISONS[poison]
    store = store_factory()
    collector = collector_factory(mosquitto_broker, store=store, client_id="central-poison")
    pub = RawPublisher(mosquitto_broker.host, mosquitto_broker.port)
    before, after = detection(0), detection(2)
    pub.publish(TOPIC, json.dumps(before))
    pub.publish(topic, data)
    t0 = time.monotonic()
    pub.publish(TOPIC, json.dumps(after))
    stored = collector.wait_until(lambda s: s.stored == 2 and s.rejected == 1, 10.0)
    took_s = time.monotonic() - t0
    st = collector.stats()
    assert stored, st
    print(f"{poison}: next valid detection stored {took_s:.3f} s after the poison")
    assert st.rejected_by_reason == {reason: 1} and st.duplicates == 0, st
    assert sorted(store.ids()) == sorted([before["id"], after["id"]])
    assert store.reject_reasons() == {reason: 1}

    # Acknowledged: the same session, resumed, does not get the poison again.
    collector.stop()
    again = collector_factory(mosquitto_broker, store=store_factory(), client_id="central-poison")
    pub.publish(TOPIC, json.dumps(detection(3)))
    assert again.wait_until(lambda s: s.stored == 1, 10.0), again.stats()
    time.sleep(0.3)
    assert again.stats().received == 1 and again.stats().rejected == 0, again.stats()
    pub.close()


def test_what_the_database_itself_refuses_is_rejected_and_counted(
    mosquitto_broker: MosquittoBroker, collector_factory: Callable[..., Any], tmp_path: Path
) -> None:
    """A row the schema accepts but the database refuses (here a trigger an operator added)
    is rejected as ``store_refused`` with the database's reason; the rest of its batch is
    stored."""
    import sqlite3

    path = tmp_path / "central.sqlite"
    SqliteStore(path).close()  # the collector's tables
    with sqlite3.connect(path) as db:
        db.execute(
            "CREATE TRIGGER no_pigeons BEFORE INSERT ON detections "
            "WHEN NEW.species_code = 'rocpig' BEGIN SELECT RAISE(ABORT, 'no pigeons here'); END"
        )
    store = SqliteStore(path)
    collector = collector_factory(mosquitto_broker, store=store, batch_wait_s=0.5)
    pub = RawPublisher(mosquitto_broker.host, mosquitto_broker.port)
    sent = [detection(0), with_species(1, code="rocpig"), detection(2), detection(3)]
    for p in sent:  # within one batch
        pub.publish(TOPIC, json.dumps(p))
    assert collector.wait_until(lambda s: s.stored == 3 and s.rejected == 1, 10.0)
    st = collector.stats()
    assert st.rejected_by_reason == {"store_refused": 1} and st.duplicates == 0, st
    assert sorted(store.ids()) == sorted(p["id"] for i, p in enumerate(sent) if i != 1)
    with sqlite3.connect(path) as db:
        (detail,) = db.execute("SELECT detail FROM rejects").fetchone()
    assert "no pigeons here" in detail
    pub.publish(TOPIC, json.dumps(detection(4)))
    assert collector.wait_until(lambda s: s.stored == 4, 5.0)
    pub.close()


def test_a_status_postgresql_refuses_is_rejected_and_counted(
    mosquitto_broker: MosquittoBroker, collector_factory: Callable[..., Any], postgres_dsn: str
) -> None:
    """A NUL is valid JSON text and passes the status schema, but jsonb cannot hold it."""
    store = PostgresStore(postgres_dsn)
    collector = collector_factory(mosquitto_broker, store=store)
    pub = RawPublisher(mosquitto_broker.host, mosquitto_broker.port)
    pub.publish(STATUS_TOPIC, json.dumps(status(agent_version="0.1\u0000")))
    pub.publish(TOPIC, json.dumps(detection(0)))
    assert collector.wait_until(lambda s: s.stored == 1 and s.rejected == 1, 10.0)
    assert collector.stats().rejected_by_reason == {"store_refused": 1}
    assert store.reject_reasons() == {"store_refused": 1}
    pub.close()
