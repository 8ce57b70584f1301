"""The outbox: a SQLite (WAL) table every live detection is committed to before anything else.

paho keeps unsent messages only in memory, so persistence is ours. The pipeline calls
:meth:`Outbox.put` (one committed transaction per detection); the :class:`~agent.forwarder.
Forwarder` publishes rows oldest first and deletes a row only once the broker acknowledged it.
A row therefore leaves the table only (a) acknowledged or (b) pruned by the size/age bound or
the disk floor, and pruning is counted (persistently, in the ``meta`` table) and logged, never
silent.

Disk: the outbox must keep working on a small or full disk. Three bounds see to it:

* the **WAL bound**: a checkpoint every ``_WAL_AUTOCHECKPOINT_PAGES`` pages (SQLite's default,
  1,000 pages, is 4 MB) and ``journal_size_limit`` cut the write-ahead log back after each one;
* the **disk floor** (``min_free_bytes``): while the file system has less free space than this,
  the database file stops growing: before a new row goes in, the oldest rows are pruned until a
  page of the file is free for it, so the outbox keeps the newest detections it has room for;
* a **reserve** file (:mod:`agent.disk_reserve`), released when a write fails for want of space
  (something else filled the disk), so acknowledged rows can still be deleted and old ones
  pruned; written again once there is room.

Files are created 0600 whatever the umask (SQLite gives its -wal and -shm the database's mode).

Durability: WAL with ``synchronous=FULL`` (``fsync=True``) survives power loss; with
``fsync=False`` (``synchronous=NORMAL``) it survives any crash of the process, SIGKILL
included, but a power cut may lose the last commits. An exclusive lock file next to the database
stops two agents from sending the same rows; the OS drops it when the process dies.
"""

from __future__ import annotations

import contextlib
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

from agent.disk_reserve import DiskReserve, create_private, free_bytes
from agent.errors import ChorusError
from agent.state import default_state_dir

log = logging.getLogger(__name__)

OUTBOX_FILE = "outbox.sqlite"
_PRUNE_LOG_EVERY_S = 60.0
_DELETE_CHUNK = 500  # SQLite's default limit on host parameters is 999 on old builds
_WAL_AUTOCHECKPOINT_PAGES = 32  # 128 KiB of 4-KiB pages between checkpoints (default 1,000)
_WAL_LIMIT_BYTES = 128 * 1024  # journal_size_limit: the WAL file is cut back to this
RESERVE_BYTES = 256 * 1024  # the -shm index (32 KiB) and a bounded WAL fit in it
DEFAULT_MIN_FREE_BYTES = 32 * 1024 * 1024
_FLOOR_KEEP_ROWS = 16  # below the floor, never prune the outbox below this many rows
_FLOOR_BATCH_ROWS = 4  # oldest rows deleted at a time until a page of the file is free
_RESTORE_EVERY_S = 60.0  # how often a released reserve is tried again
_SQLITE_FULL, _SQLITE_IOERR = 13, 10

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
    pruned: int  # rows dropped by the size/age bound or the disk floor since opened
    pruned_total: int  # ... over the outbox's whole life (persisted)
    pruned_disk: int = 0  # of ``pruned``: by the disk floor
    below_floor: bool = False  # the file system had less than min_free_bytes free at last put
    reserve_held: bool = True  # the disk reserve is in place (False: released on a full disk)


def default_outbox_path() -> Path:
    return default_state_dir() / OUTBOX_FILE


def encode_payload(payload: dict[str, Any]) -> bytes:
    """Compact UTF-8 JSON, exactly as published."""
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


class Outbox:
    """A bounded, durable FIFO of encoded detections. Thread-safe (one connection + a lock).

    ``max_rows``: beyond it the oldest rows are pruned at each :meth:`put`. ``max_age_s``: rows
    older than this are pruned by :meth:`prune_expired` (the forwarder calls it periodically)
    and at start-up. ``min_free_bytes``: the disk floor (0: none; see the module docstring).
    Raises :class:`OutboxError` with one clear line if the file cannot be used.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        max_rows: int = 100_000,
        max_age_s: float | None = None,
        fsync: bool = True,
        clock: Callable[[], float] = time.time,
        min_free_bytes: int = DEFAULT_MIN_FREE_BYTES,
    ) -> None:
        if max_rows < 1:
            raise ValueError(f"max_rows must be >= 1, got {max_rows}")
        if min_free_bytes < 0:
            raise ValueError(f"min_free_bytes must be >= 0, got {min_free_bytes}")
        self.path = Path(path)
        self.max_rows = max_rows
        self.max_age_s = max_age_s
        self.min_free_bytes = min_free_bytes
        self._clock = clock
        self._lock = threading.Lock()
        self._added = self._deleted = self._pruned = self._pruned_disk = 0
        self._last_prune_log = -_PRUNE_LOG_EVERY_S
        self._unlogged_pruned = 0
        self._below_floor = False
        self._closed = False
        self._lockfile = self._take_lock()
        self._reserve = DiskReserve(self.path.with_name(self.path.name + ".reserve"), RESERVE_BYTES)
        try:
            try:
                self._db = self._open(fsync)
            except sqlite3.Error as exc:  # a full disk: the reserve makes room for the WAL
                if not (_is_disk_full(exc) and self._release_reserve()):
                    raise
                self._db = self._open(fsync)
            self._depth = int(self._db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0])
            self._pruned_total = self._meta("pruned_total")
        except (sqlite3.Error, OSError) as exc:
            self._lockfile.close()
            raise OutboxError(f"cannot use outbox {self.path}: {_why(exc)}") from None
        except BaseException:
            self._lockfile.close()
            raise
        self._reserve_held = self._reserve.restore()
        self._next_restore_s = time.monotonic() + _RESTORE_EVERY_S
        if self._depth:
            log.info("outbox %s holds %d detection(s) from before; re-sending", path, self._depth)
        self.prune_expired()

    def _take_lock(self) -> IO[bytes]:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            lock_path = self.path.with_name(self.path.name + ".lock")
            create_private(lock_path)
            fh = open(lock_path, "ab")  # noqa: SIM115
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
        create_private(self.path)  # before SQLite creates it with the umask's mode
        # Autocommit mode; writes use explicit BEGIN IMMEDIATE ... COMMIT.
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        try:
            db.execute("PRAGMA busy_timeout = 5000")
            mode = db.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                log.warning("outbox %s: journal mode is %s, not WAL", self.path, mode)
            db.execute(f"PRAGMA synchronous = {'FULL' if fsync else 'NORMAL'}")
            db.execute(f"PRAGMA wal_autocheckpoint = {_WAL_AUTOCHECKPOINT_PAGES}")
            db.execute(f"PRAGMA journal_size_limit = {_WAL_LIMIT_BYTES}")
            db.executescript(_SCHEMA)
        except BaseException:
            db.close()
            raise
        return db

    def _meta(self, key: str) -> int:
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return int(row[0]) if row else 0

    def _write(self, fn: Callable[[], Any]) -> Any:
        """Run ``fn`` in one IMMEDIATE transaction (caller holds the lock); on a full disk,
        release the reserve and run it once more."""
        if self._closed:
            raise ValueError("outbox is closed")
        try:
            try:
                return self._transaction(fn)
            except sqlite3.Error as exc:
                if not (_is_disk_full(exc) and self._release_reserve()):
                    raise
            return self._transaction(fn)
        except sqlite3.Error as exc:
            raise OutboxError(f"outbox {self.path}: {exc}") from None

    def _transaction(self, fn: Callable[[], Any]) -> Any:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            result = fn()
            self._db.execute("COMMIT")
        except BaseException:
            # SQLite rolls back by itself on some errors (a full disk among them).
            if self._db.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    self._db.execute("ROLLBACK")
            raise
        return result

    def _release_reserve(self) -> bool:
        if not self._reserve.release():
            return False
        self._reserve_held = False
        self._next_restore_s = time.monotonic() + _RESTORE_EVERY_S
        log.warning(
            "outbox %s: the disk is full; released the outbox's %d-KiB reserve so that "
            "delivered rows can still be deleted and old ones pruned (written again once "
            "there is room)",
            self.path,
            self._reserve.size_bytes // 1024,
        )
        return True

    # -- the disk floor -----------------------------------------------------------------------

    def _check_floor(self) -> bool:
        """True while the file system is below ``min_free_bytes``; logs each crossing once."""
        free = free_bytes(self.path.parent) if self.min_free_bytes else None
        # Leaving takes a margin above the floor: the WAL alone moves free space by ~128 KiB.
        limit = self.min_free_bytes + (RESERVE_BYTES if self._below_floor else 0)
        below = free is not None and free < limit
        if below and not self._below_floor:
            log.warning(
                "outbox %s: %d KiB free on its disk, below outbox_min_free_bytes (%d KiB): the "
                "outbox stops growing and prunes its oldest rows to make room for new ones",
                self.path,
                (free or 0) // 1024,
                self.min_free_bytes // 1024,
            )
        elif not below and self._below_floor:
            log.info("outbox %s: the disk is above its floor again", self.path)
        self._below_floor = below
        if not below and not self._reserve_held and time.monotonic() >= self._next_restore_s:
            self._reserve_held = self._reserve.restore()
            self._next_restore_s = time.monotonic() + _RESTORE_EVERY_S
        return below

    def _make_room(self) -> int:
        """Below the floor, in the put's transaction: delete the oldest rows until a page of
        the file is free for the new row, so the file does not grow. Returns how many."""
        pruned = 0
        while (
            int(self._db.execute("PRAGMA freelist_count").fetchone()[0]) < 1
            and self._depth - pruned > _FLOOR_KEEP_ROWS
        ):
            n = self._delete_oldest(_FLOOR_BATCH_ROWS)
            if n <= 0:
                break
            pruned += n
        return pruned

    # -- writing ----------------------------------------------------------------------------

    def put(self, detection_id: str, payload: bytes) -> int:
        """Commit one row (durably, before returning); prune beyond ``max_rows``. Returns seq."""
        now = self._clock()

        def insert(below_floor: bool) -> tuple[int, int, int]:
            by_floor = self._make_room() if below_floor else 0
            cur = self._db.execute(
                "INSERT INTO outbox (detection_id, created_s, payload) VALUES (?, ?, ?)",
                (detection_id, now, payload),
            )
            excess = self._depth - by_floor + 1 - self.max_rows
            by_size = self._delete_oldest(excess) if excess > 0 else 0
            return int(cur.lastrowid or 0), by_size, by_floor

        with self._lock:
            below = self._check_floor()
            seq, by_size, by_floor = self._write(lambda: insert(below))
            self._depth += 1 - by_size - by_floor
            self._added += 1
            self._pruned_disk += by_floor
            self._count_pruned(by_size, "size bound")
            self._count_pruned(by_floor, "disk floor")
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
                pruned_disk=self._pruned_disk,
                below_floor=self._below_floor,
                reserve_held=self._reserve_held,
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


def _is_disk_full(exc: sqlite3.Error) -> bool:
    """SQLITE_FULL, or an I/O error (creating the -shm index on a full tmpfs gives one)."""
    code = getattr(exc, "sqlite_errorcode", None)
    return code is not None and code & 0xFF in (_SQLITE_FULL, _SQLITE_IOERR)


def _why(exc: BaseException) -> str:
    return str(exc.strerror or exc) if isinstance(exc, OSError) else str(exc)


def read_outbox_ids(path: str | os.PathLike[str]) -> list[str]:
    """Ids waiting in an outbox file, read-only and without taking its lock (tests, tools)."""
    db = sqlite3.connect(f"file:{Path(path)}?mode=ro", uri=True)
    try:
        return [str(r[0]) for r in db.execute("SELECT detection_id FROM outbox ORDER BY seq")]
    finally:
        db.close()
