"""The SQLite outbox on a real database file: order, durability across reopen, bounds, locking."""

from __future__ import annotations

import logging
import sqlite3
from pathlib import Path

import pytest

from agent.outbox import (
    Outbox,
    OutboxError,
    default_outbox_path,
    encode_payload,
    read_outbox_ids,
)
from agent.state import default_state_dir


class FakeClock:
    def __init__(self, t: float = 1_700_000_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def put_n(box: Outbox, n: int, start: int = 0) -> list[int]:
    return [box.put(f"d{i}", f'{{"id":"d{i}"}}'.encode()) for i in range(start, start + n)]


def test_rows_come_back_oldest_first_and_leave_only_when_deleted(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.sqlite")
    seqs = put_n(box, 5)
    assert seqs == sorted(seqs) and len(set(seqs)) == 5
    rows = box.fetch(0, 3)
    assert [r.detection_id for r in rows] == ["d0", "d1", "d2"]
    assert rows[0].payload == b'{"id":"d0"}'
    assert [r.detection_id for r in box.fetch(rows[-1].seq, 10)] == ["d3", "d4"]
    assert box.delete([rows[0].seq, rows[2].seq, 999_999]) == 2  # unknown seqs are ignored
    assert box.ids() == ["d1", "d3", "d4"]
    st = box.stats()
    assert (st.depth, st.added, st.deleted, st.pruned) == (3, 5, 2, 0)
    box.close()
    box.close()  # idempotent
    with pytest.raises(ValueError, match="closed"):
        box.put("x", b"{}")


def test_a_sequence_number_is_never_reused(tmp_path: Path) -> None:
    # Without AUTOINCREMENT SQLite would hand the deleted maximum rowid out again, and a
    # forwarder whose cursor had passed it would skip the new row.
    box = Outbox(tmp_path / "o.sqlite")
    (last,) = put_n(box, 1)
    box.delete([last])
    (again,) = put_n(box, 1, start=1)
    assert again > last
    box.close()
    box = Outbox(tmp_path / "o.sqlite")
    box.delete(s.seq for s in box.fetch(0, 10))
    (third,) = put_n(box, 1, start=2)
    assert third > again
    box.close()


def test_rows_survive_close_and_reopen(tmp_path: Path) -> None:
    path = tmp_path / "state" / "o.sqlite"  # parent folders are created
    box = Outbox(path)
    put_n(box, 4)
    box.delete([box.fetch(0, 1)[0].seq])
    box.close()
    assert read_outbox_ids(path) == ["d1", "d2", "d3"]
    again = Outbox(path)
    assert again.ids() == ["d1", "d2", "d3"] and again.depth() == 3
    again.close()


def test_size_bound_prunes_the_oldest_counts_and_logs(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "o.sqlite"
    box = Outbox(path, max_rows=5)
    with caplog.at_level(logging.WARNING, logger="agent.outbox"):
        put_n(box, 8)
    assert box.ids() == ["d3", "d4", "d5", "d6", "d7"]
    st = box.stats()
    assert (st.depth, st.pruned, st.pruned_total) == (5, 3, 3)
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1 and "pruned the 1 oldest" in warnings[0]  # rate-limited
    box.close()
    # The lifetime count is persisted: a restart does not hide earlier losses.
    box = Outbox(path, max_rows=5)
    put_n(box, 1, start=8)
    st = box.stats()
    assert (st.pruned, st.pruned_total) == (1, 4)
    box.close()


def test_age_bound_prunes_old_rows(tmp_path: Path) -> None:
    clock = FakeClock()
    box = Outbox(tmp_path / "o.sqlite", max_age_s=60.0, clock=clock)
    put_n(box, 2)
    clock.t += 45
    put_n(box, 1, start=2)
    assert box.prune_expired() == 0
    assert box.stats().oldest_age_s == pytest.approx(45.0)
    clock.t += 30  # the first two are 75 s old now
    assert box.prune_expired() == 2
    assert box.ids() == ["d2"] and box.stats().pruned_total == 2
    box.close()
    clock.t += 3600
    box = Outbox(tmp_path / "o.sqlite", max_age_s=60.0, clock=clock)  # also pruned at start
    assert box.depth() == 0 and box.stats().pruned_total == 3
    box.close()


def test_second_process_on_the_same_outbox_is_refused(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.sqlite")
    with pytest.raises(OutboxError, match="in use by another process"):
        Outbox(tmp_path / "o.sqlite")
    box.close()
    Outbox(tmp_path / "o.sqlite").close()  # free again once closed


def test_unusable_outbox_file_is_one_clear_error(tmp_path: Path) -> None:
    bad = tmp_path / "o.sqlite"
    bad.write_bytes(b"this is not a database" * 100)
    with pytest.raises(OutboxError, match=r"cannot use outbox .*o\.sqlite"):
        Outbox(bad)
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(OutboxError, match="cannot create outbox"):
        Outbox(blocker / "o.sqlite")


def test_wal_mode_and_synchronous_level(tmp_path: Path) -> None:
    for fsync, level in ((True, 2), (False, 1)):  # FULL, NORMAL
        box = Outbox(tmp_path / f"o{fsync}.sqlite", fsync=fsync)
        assert box._db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert box._db.execute("PRAGMA synchronous").fetchone()[0] == level
        box.close()
    # Another connection sees committed rows at once (nothing is held back in memory).
    box = Outbox(tmp_path / "o.sqlite")
    put_n(box, 2)
    other = sqlite3.connect(tmp_path / "o.sqlite")
    assert other.execute("SELECT COUNT(*) FROM outbox").fetchone()[0] == 2
    other.close()
    box.close()


def test_default_paths_follow_systemd_then_xdg(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STATE_DIRECTORY", f"{tmp_path}/a:{tmp_path}/b")
    assert default_state_dir() == tmp_path / "a"
    assert default_outbox_path() == tmp_path / "a" / "outbox.sqlite"
    monkeypatch.delenv("STATE_DIRECTORY")
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg"))
    assert default_state_dir() == tmp_path / "xdg" / "chorus"
    monkeypatch.delenv("XDG_STATE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_state_dir() == tmp_path / "home" / ".local" / "state" / "chorus"


def test_payload_encoding_is_compact_utf8() -> None:
    assert encode_payload({"a": "é", "b": [1, 2]}) == '{"a":"é","b":[1,2]}'.encode()
