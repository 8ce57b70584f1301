"""The outbox: a SQLite (WAL) table every live detection is committed to before anything else.

paho keeps unsent messages only in memory, so persistence is ours. The pipeline calls
:meth:`Outbox.put` (one committed transaction per detection); the :class:`~agent.forwarder.
Forwarder` publishes rows oldest first and deletes a row only once the broker acknowledged it.
A row therefore leaves the table only (a) acknowledged or (b) pruned by the size/age bound, and
pruning is counted (persistently, in the ``meta`` table) and logged, never silent.

Durability: WAL with ``synchronous=FULL`` (``fsync=True``) survives power loss; with
``fsync=False`` (``synchronous=NORMAL``) it survives any crash of the process, SIGKILL
included, but a power cut may lose the last commits. An exclusive lock file next to the database
stops two agents from sending the same rows; the OS drops it when the process dies.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, NamedTuple

from agent.errors import ChorusError
from agent.state import default_state_dir

log = logging.getLogger(__name__)

OUTBOX_FILE = "outbox.sqlite"
_PRUNE_LOG_EVERY_S = 60.0
_DELETE_CHUNK = 500  # SQLite's default limit on host parameters is 999 on old builds

_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,  -- AUTOINCREMENT: a seq is never reused
    detection_id TEXT NOT NULL,
    created_s REAL NOT NULL,                -- wall clock (Unix seconds) at commit
    payload BLOB NOT NULL                   -- the exact bytes published
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""


class OutboxError(ChorusError):
    """The outbox database cannot be opened or written (permissions, disk, corruption)."""

    exit_code = 2


class OutboxRow(NamedTuple):
    seq: int
    detection_id: str
    created_s: float
    payload: bytes


@dataclass(frozen=True)
class OutboxStats:
    depth: int  # rows waiting (not yet acknowledged)
    oldest_age_s: float | None  # age of the oldest waiting row
    added: int  # rows put since this process opened the outbox
    deleted: int  # rows deleted after an acknowledgement, since opened
    pruned: int  # rows dropped by the size/age bound since opened
    pruned_total: int  # ... over the outbox's whole life (persisted)


def default_outbox_path() -> Path:
    return default_state_dir() / OUTBOX_FILE


def encode_payload(payload: dict[str, Any]) -> bytes:
    """Compact UTF-8 JSON, exactly as published."""
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


class Outbox:
    """A bounded, durable FIFO of encoded detections. Thread-safe (one connection + a lock).

    ``max_rows``: beyond it the oldest rows are pruned at each :meth:`put`. ``max_age_s``: rows
    older than this are pruned by :meth:`prune_expired` (the forwarder calls it periodically)
    and at start-up. Raises :class:`OutboxError` with one clear line if the file cannot be used.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        max_rows: int = 100_000,
        max_age_s: float | None = None,
        fsync: bool = True,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if max_rows < 1:
            raise ValueError(f"max_rows must be >= 1, got {max_rows}")
        self.path = Path(path)
        self.max_rows = max_rows
        self.max_age_s = max_age_s
        self._clock = clock
        self._lock = threading.Lock()
        self._added = self._deleted = self._pruned = 0
        self._last_prune_log = -_PRUNE_LOG_EVERY_S
        self._unlogged_pruned = 0
        self._closed = False
        self._lockfile = self._take_lock()
        try:
            self._db = self._open(fsync)
            self._depth = int(self._db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0])
            self._pruned_total = self._meta("pruned_total")
        except sqlite3.Error as exc:
            self._lockfile.close()
            raise OutboxError(f"cannot use outbox {self.path}: {exc}") from None
        except BaseException:
            self._lockfile.close()
            raise
        if self._depth:
            log.info("outbox %s holds %d detection(s) from before; re-sending", path, self._depth)
        self.prune_expired()

    def _take_lock(self) -> IO[bytes]:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fh = open(self.path.with_name(self.path.name + ".lock"), "ab")  # noqa: SIM115
        except OSError as exc:
            raise OutboxError(f"cannot create outbox {self.path}: {exc.strerror or exc}") from None
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            fh.close()
            raise OutboxError(
                f"outbox {self.path} is in use by another process (another agent running?)"
            ) from None
        return fh

    def _open(self, fsync: bool) -> sqlite3.Connection:
        # Autocommit mode; writes use explicit BEGIN IMMEDIATE ... COMMIT.
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        db.execute("PRAGMA busy_timeout = 5000")
        mode = db.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            log.warning("outbox %s: journal mode is %s, not WAL", self.path, mode)
        db.execute(f"PRAGMA synchronous = {'FULL' if fsync else 'NORMAL'}")
        db.executescript(_SCHEMA)
        return db

    def _meta(self, key: str) -> int:
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return int(row[0]) if row else 0

    def _write(self, fn: Callable[[], Any]) -> Any:
        """Run ``fn`` in one IMMEDIATE transaction (caller holds the lock)."""
        if self._closed:
            raise ValueError("outbox is closed")
        try:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                result = fn()
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")
            return result
        except sqlite3.Error as exc:
            raise OutboxError(f"outbox {self.path}: {exc}") from None

    # -- writing ----------------------------------------------------------------------------

    def put(self, detection_id: str, payload: bytes) -> int:
        """Commit one row (durably, before returning); prune beyond ``max_rows``. Returns seq."""
        now = self._clock()

        def insert() -> tuple[int, int]:
            cur = self._db.execute(
                "INSERT INTO outbox (detection_id, created_s, payload) VALUES (?, ?, ?)",
                (detection_id, now, payload),
            )
            excess = self._depth + 1 - self.max_rows
            pruned = self._delete_oldest(excess) if excess > 0 else 0
            return int(cur.lastrowid or 0), pruned

        with self._lock:
            seq, pruned = self._write(insert)
            self._depth += 1 - pruned
            self._added += 1
            self._count_pruned(pruned, "size bound")
        return seq

    def put_payload(self, payload: dict[str, Any]) -> int:
        """:meth:`put` of a detection payload dict (its ``id`` names the row)."""
        return self.put(str(payload["id"]), encode_payload(payload))

    def _delete_oldest(self, n: int) -> int:
        cur = self._db.execute(
            "DELETE FROM outbox WHERE seq IN (SELECT seq FROM outbox ORDER BY seq LIMIT ?)", (n,)
        )
        pruned = cur.rowcount
        self._bump_pruned_total(pruned)
        return pruned

    def _bump_pruned_total(self, n: int) -> None:
        if n > 0:
            self._db.execute(
                "INSERT INTO meta (key, value) VALUES ('pruned_total', ?) "
                "ON CONFLICT(key) DO UPDATE SET value = value + excluded.value",
                (n,),
            )

    def _count_pruned(self, n: int, why: str) -> None:
        if n <= 0:
            return
        self._pruned += n
        self._pruned_total += n
        self._unlogged_pruned += n
        now = time.monotonic()
        if now - self._last_prune_log >= _PRUNE_LOG_EVERY_S:
            log.warning(
                "outbox full (%s): pruned the %d oldest undelivered detection(s); "
                "%d pruned in total",
                why,
                self._unlogged_pruned,
                self._pruned_total,
            )
            self._last_prune_log = now
            self._unlogged_pruned = 0

    def prune_expired(self) -> int:
        """Delete rows older than ``max_age_s`` (counted as pruned). Returns how many."""
        if self.max_age_s is None:
            return 0
        cutoff = self._clock() - self.max_age_s

        def delete() -> int:
            cur = self._db.execute("DELETE FROM outbox WHERE created_s < ?", (cutoff,))
            self._bump_pruned_total(cur.rowcount)
            return int(cur.rowcount)

        with self._lock:
            oldest = self._db.execute(
                "SELECT created_s FROM outbox ORDER BY seq LIMIT 1"
            ).fetchone()
            if oldest is None or oldest[0] >= cutoff:
                return 0
            n = int(self._write(delete))
            self._depth -= n
            self._count_pruned(n, "age bound")
        return n

    def delete(self, seqs: Iterable[int]) -> int:
        """Delete acknowledged rows (one transaction); unknown seqs are ignored."""
        seq_list = list(seqs)
        if not seq_list:
            return 0

        def delete() -> int:
            n = 0
            for i in range(0, len(seq_list), _DELETE_CHUNK):
                chunk = seq_list[i : i + _DELETE_CHUNK]
                marks = ",".join("?" * len(chunk))
                n += self._db.execute(f"DELETE FROM outbox WHERE seq IN ({marks})", chunk).rowcount
            return n

        with self._lock:
            n = int(self._write(delete))
            self._depth -= n
            self._deleted += n
        return n

    # -- reading ----------------------------------------------------------------------------

    def fetch(self, after_seq: int, limit: int) -> list[OutboxRow]:
        """Up to ``limit`` rows with ``seq > after_seq``, oldest first."""
        with self._lock:
            if self._closed:
                raise ValueError("outbox is closed")
            rows = self._db.execute(
                "SELECT seq, detection_id, created_s, payload FROM outbox WHERE seq > ? "
                "ORDER BY seq LIMIT ?",
                (after_seq, limit),
            ).fetchall()
        return [OutboxRow(int(s), str(i), float(c), bytes(p)) for s, i, c, p in rows]

    def ids(self) -> list[str]:
        """Detection ids of every waiting row, oldest first (diagnostics and tests)."""
        with self._lock:
            rows = self._db.execute("SELECT detection_id FROM outbox ORDER BY seq").fetchall()
        return [str(r[0]) for r in rows]

    def depth(self) -> int:
        with self._lock:
            return self._depth

    def stats(self) -> OutboxStats:
        with self._lock:
            oldest = None
            if not self._closed:
                row = self._db.execute(
                    "SELECT created_s FROM outbox ORDER BY seq LIMIT 1"
                ).fetchone()
                oldest = row[0] if row else None
            return OutboxStats(
                depth=self._depth,
                oldest_age_s=None if oldest is None else max(0.0, self._clock() - oldest),
                added=self._added,
                deleted=self._deleted,
                pruned=self._pruned,
                pruned_total=self._pruned_total,
            )

    def close(self) -> None:
        """Close the database and release the lock. Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            try:
                self._db.close()
            finally:
                self._lockfile.close()


def read_outbox_ids(path: str | os.PathLike[str]) -> list[str]:
    """Ids waiting in an outbox file, read-only and without taking its lock (tests, tools)."""
    db = sqlite3.connect(f"file:{Path(path)}?mode=ro", uri=True)
    try:
        return [str(r[0]) for r in db.execute("SELECT detection_id FROM outbox ORDER BY seq")]
    finally:
        db.close()
