"""Where the collector keeps detections: SQLite (default) or PostgreSQL (a DSN).

Both stores have the same tables and the same contract: :meth:`Store.write` stores a batch
(detections, rejects, device updates) in one transaction and returns the detection ids it
*newly* stored; an id already present (a re-delivery) is skipped, so the table holds each
detection exactly once however often it arrives. Any other failure rolls the whole batch back;
``refused_errors`` names the exceptions that mean *this data* can never be stored (a retry
cannot help), as opposed to the database being away, locked or full.

The SQLite file is created 0640 (0600 under a stricter umask) whatever the umask, and an
existing one is tightened to that: it holds every device's detections and status.
"""

from __future__ import annotations

import contextlib
import csv
import json
import logging
import os
import sqlite3
import stat
import threading
from collections.abc import Iterator, Sequence
from dataclasses import astuple, dataclass, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any, Protocol

from agent.errors import ChorusError

log = logging.getLogger(__name__)


class StoreError(ChorusError):
    """The database cannot be opened or written."""

    exit_code = 2


# Whatever the database: a value it has no type for, a string it cannot encode, bad JSON.
_DATA_ERRORS: tuple[type[Exception], ...] = (OverflowError, UnicodeError, ValueError)
_DB_MODE = 0o640  # owner rw, group (the service's group) r, others nothing


@dataclass(frozen=True)
class DetectionRow:
    """One stored detection (flattened payload; the full JSON is kept in ``payload``)."""

    id: str
    device: str
    start_utc: str
    end_utc: str
    species_code: str
    scientific_name: str
    common_name: str
    confidence: float
    logit: float
    channel: str
    windows: int
    start_s: float
    end_s: float
    bundle: str
    bundle_version: str
    classifier: str
    source: str
    latitude_deg: float | None
    longitude_deg: float | None
    received_utc: str
    payload: str

    @classmethod
    def from_payload(cls, p: dict[str, Any], received_utc: str, raw: str) -> DetectionRow:
        loc = p.get("location") or {}
        return cls(
            id=p["id"],
            device=p["device"],
            start_utc=canonical_utc(p["start_utc"]),
            end_utc=canonical_utc(p["end_utc"]),
            species_code=p["species"]["code"],
            scientific_name=p["species"]["scientific_name"],
            common_name=p["species"]["common_name"],
            confidence=float(p["confidence"]),
            logit=float(p["logit"]),
            channel=p["channel"],
            windows=int(p["windows"]),
            start_s=float(p["start_s"]),
            end_s=float(p["end_s"]),
            bundle=p["model"]["bundle"],
            bundle_version=p["model"]["version"],
            classifier=p["model"]["classifier"],
            source=p["source"],
            latitude_deg=loc.get("latitude_deg"),
            longitude_deg=loc.get("longitude_deg"),
            received_utc=received_utc,
            payload=raw,
        )


COLUMNS = tuple(f.name for f in fields(DetectionRow))
EXPORT_COLUMNS = tuple(c for c in COLUMNS if c != "payload")
_TIME_COLUMNS = ("start_utc", "end_utc", "received_utc")


@dataclass(frozen=True)
class Reject:
    received_utc: str
    topic: str
    reason: str
    detail: str
    payload_head: bytes  # the first bytes of the payload, for diagnosis


@dataclass(frozen=True)
class DeviceUpdate:
    device: str
    kind: str  # "availability" or "status"
    value: str  # the payload text
    received_utc: str


class Store(Protocol):
    refused_errors: tuple[type[Exception], ...]  # the data can never be stored: do not retry

    def write(
        self,
        rows: Sequence[DetectionRow],
        rejects: Sequence[Reject] = (),
        updates: Sequence[DeviceUpdate] = (),
    ) -> set[str]: ...
    def insert(self, rows: Sequence[DetectionRow]) -> set[str]: ...
    def count(self) -> int: ...
    def ids(self) -> list[str]: ...
    def reject_reasons(self) -> dict[str, int]: ...
    def iter_rows(
        self, device: str | None = None, since: str | None = None, until: str | None = None
    ) -> Iterator[tuple[Any, ...]]: ...
    def close(self) -> None: ...


def _sql_columns(time_type: str, real: str, text: str) -> str:
    types = {
        "confidence": real,
        "logit": real,
        "start_s": real,
        "end_s": real,
        "latitude_deg": real,
        "longitude_deg": real,
        "windows": "INTEGER",
    }
    cols = []
    for c in COLUMNS:
        if c == "id":
            cols.append("id TEXT PRIMARY KEY")
        elif c in _TIME_COLUMNS:
            cols.append(f"{c} {time_type} NOT NULL")
        elif c in ("latitude_deg", "longitude_deg"):
            cols.append(f"{c} {types[c]}")
        else:
            cols.append(f"{c} {types.get(c, text)} NOT NULL")
    return ",\n    ".join(cols)


def _where(device: str | None, since: str | None, until: str | None, mark: str) -> tuple[str, list]:
    clauses, args = [], []
    for clause, value in (("device = ", device), ("start_utc >= ", since), ("start_utc < ", until)):
        if value is not None:
            clauses.append(clause + mark)
            args.append(value)
    return (" WHERE " + " AND ".join(clauses) if clauses else ""), args


def _private_file(path: Path) -> None:
    """Create ``path`` (0640 at most, whatever the umask) or tighten an existing one, and its
    WAL files (SQLite gives those the database's mode when it creates them).

    By path only: closing any descriptor of a database file would drop the POSIX locks that
    another connection of this process holds on it."""
    with contextlib.suppress(FileExistsError):
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, _DB_MODE))
    for side in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
        try:
            mode = stat.S_IMODE(side.stat().st_mode)
            if mode & ~_DB_MODE:
                side.chmod(mode & _DB_MODE)
        except FileNotFoundError:
            continue


class SqliteStore:
    """SQLite file in WAL mode; several collector processes may share it (busy timeout).

    ``create=False`` (export) opens an existing collector database only: a mistyped path is
    an error, not a new empty database."""

    refused_errors: tuple[type[Exception], ...] = (
        sqlite3.IntegrityError,
        sqlite3.DataError,
        *_DATA_ERRORS,
    )

    def __init__(self, path: str | Path, *, create: bool = True) -> None:
        self.path = Path(path)
        self._lock = threading.RLock()  # one connection, used by the writer and by readers
        if not create and not self.path.is_file():
            raise StoreError(f"no collector database at {self.path}")
        try:
            if create:
                self.path.parent.mkdir(mode=0o750, parents=True, exist_ok=True)
                _private_file(self.path)
            self._db = sqlite3.connect(
                f"{self.path.resolve().as_uri()}?mode=rw",
                uri=True,
                isolation_level=None,
                check_same_thread=False,
            )
            self._db.execute("PRAGMA busy_timeout = 10000")
            if not create:
                self._check_tables()
                return
            self._db.execute("PRAGMA journal_mode = WAL")
            self._db.execute("PRAGMA synchronous = FULL")
            self._db.executescript(
                f"""
                CREATE TABLE IF NOT EXISTS detections (
                    {_sql_columns("TEXT", "REAL", "TEXT")}
                );
                CREATE INDEX IF NOT EXISTS detections_start ON detections (start_utc);
                CREATE INDEX IF NOT EXISTS detections_device ON detections (device, start_utc);
                CREATE TABLE IF NOT EXISTS rejects (
                    n INTEGER PRIMARY KEY AUTOINCREMENT, received_utc TEXT NOT NULL,
                    topic TEXT NOT NULL, reason TEXT NOT NULL, detail TEXT NOT NULL,
                    payload_head BLOB NOT NULL
                );
                CREATE TABLE IF NOT EXISTS devices (
                    device TEXT PRIMARY KEY, availability TEXT, availability_utc TEXT,
                    status TEXT, status_utc TEXT
                );
                """
            )
        except (sqlite3.Error, OSError) as exc:
            raise StoreError(f"cannot open collector database {self.path}: {exc}") from None
        _private_file(self.path)  # the WAL files exist now
        marks = ",".join("?" * len(COLUMNS))
        # Only a duplicate id is skipped: a NOT NULL or CHECK failure must raise, not vanish.
        self._insert_sql = (
            f"INSERT INTO detections ({','.join(COLUMNS)}) VALUES ({marks}) "
            "ON CONFLICT (id) DO NOTHING"
        )

    def _check_tables(self) -> None:
        tables = {r[0] for r in self._db.execute("SELECT name FROM sqlite_master")}
        if "detections" not in tables:
            self._db.close()
            raise StoreError(f"{self.path} is not a collector database (no detections table)")

    def _tx(self) -> Any:
        return _SqliteTx(self._db, self._lock)

    def write(
        self,
        rows: Sequence[DetectionRow],
        rejects: Sequence[Reject] = (),
        updates: Sequence[DeviceUpdate] = (),
    ) -> set[str]:
        new: set[str] = set()
        with self._tx():
            for row in rows:
                if self._db.execute(self._insert_sql, astuple(row)).rowcount == 1:
                    new.add(row.id)
            self._db.executemany(
                "INSERT INTO rejects (received_utc, topic, reason, detail, payload_head) "
                "VALUES (?, ?, ?, ?, ?)",
                [astuple(r) for r in rejects],
            )
            for u in updates:
                col = "availability" if u.kind == "availability" else "status"
                self._db.execute(
                    f"INSERT INTO devices (device, {col}, {col}_utc) VALUES (?, ?, ?) "
                    f"ON CONFLICT(device) DO UPDATE SET {col} = excluded.{col}, "
                    f"{col}_utc = excluded.{col}_utc",
                    (u.device, u.value, u.received_utc),
                )
        return new

    def insert(self, rows: Sequence[DetectionRow]) -> set[str]:
        return self.write(rows)

    def _query(self, sql: str, args: Sequence[Any] = ()) -> list[Any]:
        with self._lock:
            return self._db.execute(sql, args).fetchall()

    def count(self) -> int:
        return int(self._query("SELECT COUNT(*) FROM detections")[0][0])

    def ids(self) -> list[str]:
        return [r[0] for r in self._query("SELECT id FROM detections ORDER BY id")]

    def reject_reasons(self) -> dict[str, int]:
        rows = self._query("SELECT reason, COUNT(*) FROM rejects GROUP BY reason")
        return {str(r): int(n) for r, n in rows}

    def device(self, device: str) -> dict[str, Any] | None:
        rows = self._query(
            "SELECT availability, availability_utc, status, status_utc FROM devices "
            "WHERE device = ?",
            (device,),
        )
        if not rows:
            return None
        keys = ("availability", "availability_utc", "status", "status_utc")
        return dict(zip(keys, rows[0], strict=True))

    def iter_rows(
        self, device: str | None = None, since: str | None = None, until: str | None = None
    ) -> Iterator[tuple[Any, ...]]:
        where, args = _where(
            device,
            None if since is None else canonical_utc(since),
            None if until is None else canonical_utc(until),
            "?",
        )
        yield from self._query(
            f"SELECT {','.join(EXPORT_COLUMNS)} FROM detections{where} ORDER BY start_utc, id",
            args,
        )

    def close(self) -> None:
        with self._lock:
            self._db.close()


class _SqliteTx:
    def __init__(self, db: sqlite3.Connection, lock: threading.RLock) -> None:
        self.db = db
        self.lock = lock

    def __enter__(self) -> None:
        self.lock.acquire()
        try:
            self.db.execute("BEGIN IMMEDIATE")
        except BaseException:
            self.lock.release()
            raise

    def __exit__(self, exc_type: Any, *_: Any) -> None:
        try:
            self.db.execute("ROLLBACK" if exc_type else "COMMIT")
        finally:
            self.lock.release()


class PostgresStore:
    """PostgreSQL through psycopg 3 (the ``collector`` extra). Times are ``timestamptz``."""

    def __init__(self, dsn: str) -> None:
        try:
            import psycopg
        except ImportError:
            raise StoreError("PostgreSQL needs psycopg: pip install 'chorus[collector]'") from None
        self._psycopg = psycopg
        self.refused_errors: tuple[type[Exception], ...] = (
            psycopg.DataError,
            psycopg.IntegrityError,
            *_DATA_ERRORS,
        )
        self._dsn = dsn
        self._lock = threading.Lock()
        try:
            self._db = psycopg.connect(dsn, autocommit=True, connect_timeout=10)
            with self._db.transaction():
                self._db.execute(
                    f"""
                    CREATE TABLE IF NOT EXISTS detections (
                        {_sql_columns("TIMESTAMPTZ", "DOUBLE PRECISION", "TEXT")}
                    )"""
                )
                self._db.execute(
                    "CREATE INDEX IF NOT EXISTS detections_start ON detections (start_utc)"
                )
                self._db.execute(
                    "CREATE INDEX IF NOT EXISTS detections_device ON detections (device, start_utc)"
                )
                self._db.execute(
                    "CREATE TABLE IF NOT EXISTS rejects (n BIGSERIAL PRIMARY KEY, "
                    "received_utc TIMESTAMPTZ NOT NULL, topic TEXT NOT NULL, "
                    "reason TEXT NOT NULL, detail TEXT NOT NULL, payload_head BYTEA NOT NULL)"
                )
                self._db.execute(
                    "CREATE TABLE IF NOT EXISTS devices (device TEXT PRIMARY KEY, "
                    "availability TEXT, availability_utc TIMESTAMPTZ, status JSONB, "
                    "status_utc TIMESTAMPTZ)"
                )
        except psycopg.Error as exc:
            raise StoreError(f"cannot use PostgreSQL: {_pg_message(exc)}") from None
        marks = ",".join(["%s"] * len(COLUMNS))
        self._insert_sql = (
            f"INSERT INTO detections ({','.join(COLUMNS)}) VALUES ({marks}) "
            "ON CONFLICT (id) DO NOTHING RETURNING id"
        )

    def _conn(self) -> Any:
        """The connection, re-opened if the server dropped it (restart, failover)."""
        if self._db.closed or self._db.broken:
            log.warning("PostgreSQL connection lost; reconnecting")
            self._db.close()
            self._db = self._psycopg.connect(self._dsn, autocommit=True, connect_timeout=10)
        return self._db

    @staticmethod
    def _params(row: DetectionRow) -> tuple[Any, ...]:
        values = list(astuple(row))
        for i, c in enumerate(COLUMNS):
            if c in _TIME_COLUMNS:
                values[i] = _parse_utc(values[i])
        return tuple(values)

    def write(
        self,
        rows: Sequence[DetectionRow],
        rejects: Sequence[Reject] = (),
        updates: Sequence[DeviceUpdate] = (),
    ) -> set[str]:
        new: set[str] = set()
        params = [self._params(r) for r in rows]
        reject_params = [
            (_parse_utc(r.received_utc), r.topic, r.reason, r.detail, r.payload_head)
            for r in rejects
        ]
        with self._lock:
            db = self._conn()
            with db.transaction(), db.cursor() as cur:
                if params:
                    cur.executemany(self._insert_sql, params, returning=True)
                    while True:
                        new.update(detection_id for (detection_id,) in cur.fetchall())
                        if not cur.nextset():
                            break
                if reject_params:
                    cur.executemany(
                        "INSERT INTO rejects (received_utc, topic, reason, detail, payload_head) "
                        "VALUES (%s, %s, %s, %s, %s)",
                        reject_params,
                    )
                for u in updates:
                    col = "availability" if u.kind == "availability" else "status"
                    value: Any = u.value
                    if col == "status":
                        from psycopg.types.json import Jsonb

                        value = Jsonb(json.loads(u.value))
                    cur.execute(
                        f"INSERT INTO devices (device, {col}, {col}_utc) VALUES (%s, %s, %s) "
                        f"ON CONFLICT (device) DO UPDATE SET {col} = excluded.{col}, "
                        f"{col}_utc = excluded.{col}_utc",
                        (u.device, value, _parse_utc(u.received_utc)),
                    )
        return new

    def insert(self, rows: Sequence[DetectionRow]) -> set[str]:
        return self.write(rows)

    def _query(self, sql: str, args: Sequence[Any] = ()) -> list[Any]:
        with self._lock:
            return list(self._conn().execute(sql, args).fetchall())

    def count(self) -> int:
        return int(self._query("SELECT COUNT(*) FROM detections")[0][0])

    def ids(self) -> list[str]:
        return [r[0] for r in self._query("SELECT id FROM detections ORDER BY id")]

    def reject_reasons(self) -> dict[str, int]:
        rows = self._query("SELECT reason, COUNT(*) FROM rejects GROUP BY reason")
        return {str(r): int(n) for r, n in rows}

    def iter_rows(
        self, device: str | None = None, since: str | None = None, until: str | None = None
    ) -> Iterator[tuple[Any, ...]]:
        where, args = _where(
            device,
            None if since is None else _parse_utc(since),  # type: ignore[arg-type]
            None if until is None else _parse_utc(until),  # type: ignore[arg-type]
            "%s",
        )
        rows = self._query(
            f"SELECT {','.join(EXPORT_COLUMNS)} FROM detections{where} ORDER BY start_utc, id",
            args,
        )
        for row in rows:
            yield tuple(_iso(v) if isinstance(v, datetime) else v for v in row)

    def close(self) -> None:
        with self._lock:
            self._db.close()


def canonical_utc(text: str) -> str:
    """``2026-05-01T04:30:00.000Z``: one spelling, so text order is time order (SQLite)."""
    try:
        return _iso(_parse_utc(text))
    except ValueError:
        raise StoreError(f"not an ISO 8601 time with a zone: {text!r}") from None


def _pg_message(exc: Exception) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


def _parse_utc(text: str) -> datetime:
    t = datetime.fromisoformat(text.upper().replace("Z", "+00:00"))
    if t.tzinfo is None:
        raise ValueError(f"no time zone: {text!r}")
    return t


def _iso(t: datetime) -> str:
    return t.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def open_store(
    db: str | Path | None = None, dsn: str | None = None, *, create: bool = True
) -> Store:
    """PostgreSQL if ``dsn`` is given, else the SQLite file ``db`` (created unless
    ``create`` is false)."""
    if dsn:
        return PostgresStore(dsn)
    if db is None:
        raise StoreError("give a SQLite file (--db) or a PostgreSQL DSN")
    return SqliteStore(db, create=create)


def export_csv(store: Store, out: IO[str], **filters: str | None) -> int:
    """Write the stored detections as CSV (header + one row each); returns the row count."""
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(EXPORT_COLUMNS)
    n = 0
    for row in store.iter_rows(**filters):
        writer.writerow(["" if v is None else v for v in row])
        n += 1
    return n
