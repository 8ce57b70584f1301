"""The JSONL, CSV and Raven file sinks, read back with the json and csv readers."""

from __future__ import annotations

import csv
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from agent.config import OutputsConfig
from agent.detection.types import DETECTION_SCHEMA, Detection
from agent.errors import ChorusError
from agent.sinks import Sink
from agent.sinks.files import (
    CSV_COLUMNS,
    RAVEN_COLUMNS,
    CsvSink,
    JsonlSink,
    RavenSink,
    open_file_sinks,
)

T0 = datetime(2024, 5, 1, 4, 30, tzinfo=UTC)
NASTY = 'Robin, "the\tred"\nbreast;\r\\ end'  # comma, quotes, tab, newlines, backslash


def make_detection(start_s: float = 0.0, **overrides: Any) -> Detection:
    fields: dict[str, Any] = dict(
        species_code="eurrob1",
        scientific_name="Erithacus rubecula",
        common_name="European Robin",
        confidence=0.8734567891,
        logit=1.93,
        start_utc=T0 + timedelta(seconds=start_s),
        end_utc=T0 + timedelta(seconds=start_s + 5.0),
        start_s=start_s,
        end_s=start_s + 5.0,
        channel="sep2",
        classifier="sep_logits",
        bundle_name="chorus-demo",
        bundle_version="1.0.0",
        device_id="pi-01",
        source="file:dawn.wav",
    )
    fields.update(overrides)
    return Detection(**fields)


def nasty_detection() -> Detection:
    return make_detection(
        common_name=NASTY,
        scientific_name="Erithacus\trubecula\n",
        species_code='eur,"rob"',
        source="file:C:\\rec\\dawn, take 2.wav",
        channel="sep\t0",
    )


# -- JSONL ----------------------------------------------------------------------------------


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_jsonl_round_trip_and_reopen_appends(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "er" / "detections.jsonl"  # parent folders are created
    first = [make_detection(float(i)) for i in range(3)]
    sink = JsonlSink(path)
    for d in first:
        sink.emit(d)
    sink.close()
    second = make_detection(9.0, common_name="Rotkehlchen – Ä")
    sink = JsonlSink(path)
    sink.emit(second)
    sink.close()

    rows = read_jsonl(path)
    assert rows == [d.to_payload() for d in [*first, second]]
    assert rows[0]["schema"] == DETECTION_SCHEMA
    # compact, UTF-8 (not \u-escaped)
    text = path.read_text(encoding="utf-8")
    assert ", " not in text.splitlines()[0] and "Rotkehlchen – Ä" in text


def test_jsonl_line_is_on_disk_before_close(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    sink = JsonlSink(path)
    d = make_detection()
    sink.emit(d)
    assert read_jsonl(path) == [d.to_payload()]  # flushed: a crash now would lose nothing
    sink.close()


def test_jsonl_ends_a_partial_line_left_by_a_crash(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    path.write_text('{"schema":"chorus.detection/1","id":"trunc', encoding="utf-8")
    sink = JsonlSink(path)
    d = make_detection()
    sink.emit(d)
    sink.close()
    lines = path.read_text(encoding="utf-8").splitlines()
    assert len(lines) == 2
    assert json.loads(lines[1]) == d.to_payload()


def test_jsonl_special_characters_stay_on_one_line(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    d = nasty_detection()
    with_nasty = [make_detection(), d, make_detection(2.0)]
    sink = JsonlSink(path)
    for x in with_nasty:
        sink.emit(x)
    sink.close()
    rows = read_jsonl(path)
    assert len(rows) == 3
    assert rows[1]["species"]["common_name"] == NASTY
    assert rows[1]["source"] == d.source


# -- CSV ------------------------------------------------------------------------------------


def read_csv(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with open(path, encoding="utf-8", newline="") as fh:
        reader = csv.DictReader(fh)
        rows = list(reader)
        return list(reader.fieldnames or []), rows


def test_csv_round_trip_header_once_across_reopen(tmp_path: Path) -> None:
    path = tmp_path / "out" / "detections.csv"
    a, b, c = make_detection(0.0), make_detection(2.5), make_detection(5.0)
    sink = CsvSink(path)
    sink.emit(a)
    sink.emit(b)
    sink.close()
    sink = CsvSink(path)
    sink.emit(c)
    sink.close()

    header, rows = read_csv(path)
    assert header == list(CSV_COLUMNS)
    assert path.read_text(encoding="utf-8").count("species_code") == 1
    assert [r["id"] for r in rows] == [a.id, b.id, c.id]
    p = a.to_payload()
    assert rows[0] == {
        "id": a.id,
        "start_utc": p["start_utc"],
        "end_utc": p["end_utc"],
        "start_s": "0.0",
        "end_s": "5.0",
        "species_code": "eurrob1",
        "scientific_name": "Erithacus rubecula",
        "common_name": "European Robin",
        "confidence": str(p["confidence"]),
        "channel": "sep2",
        "classifier": "sep_logits",
        "bundle": "chorus-demo",
        "bundle_version": "1.0.0",
        "device": "pi-01",
        "source": "file:dawn.wav",
    }
    assert float(rows[0]["confidence"]) == pytest.approx(0.873457)


def test_csv_header_written_into_existing_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    path.touch()
    sink = CsvSink(path)
    sink.emit(make_detection())
    sink.close()
    header, rows = read_csv(path)
    assert header == list(CSV_COLUMNS) and len(rows) == 1


def test_csv_row_is_on_disk_before_close(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    sink = CsvSink(path)
    d = make_detection()
    sink.emit(d)
    assert [r["id"] for r in read_csv(path)[1]] == [d.id]
    sink.close()


def test_csv_special_characters_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    d = nasty_detection()
    sink = CsvSink(path)
    sink.emit(make_detection())
    sink.emit(d)
    sink.emit(make_detection(3.0))
    sink.close()
    _, rows = read_csv(path)
    assert len(rows) == 3
    assert rows[1]["common_name"] == NASTY
    assert rows[1]["scientific_name"] == d.scientific_name
    assert rows[1]["species_code"] == d.species_code
    assert rows[1]["source"] == d.source
    assert rows[1]["channel"] == d.channel
    assert rows[2]["start_s"] == "3.0"


# -- Raven ----------------------------------------------------------------------------------


def read_raven(path: Path) -> list[list[str]]:
    text = path.read_text(encoding="utf-8")
    assert text.endswith("\n")
    return [line.split("\t") for line in text.split("\n")[:-1]]


def test_raven_sorted_numbered_and_written_at_close(tmp_path: Path) -> None:
    path = tmp_path / "tables" / "dawn.Table.1.selections.txt"
    late, early, mid = make_detection(30.0), make_detection(2.5), make_detection(12.25)
    sink = RavenSink(path, low_freq_hz=150.0, high_freq_hz=8000.0)
    for d in (late, early, mid):
        sink.emit(d)
    assert not path.exists()  # nothing until close: the table is sorted
    sink.close()

    table = read_raven(path)
    assert table[0] == list(RAVEN_COLUMNS)
    assert table[0][:4] == ["Selection", "View", "Channel", "Begin Time (s)"]
    rows = [dict(zip(RAVEN_COLUMNS, r, strict=True)) for r in table[1:]]
    assert [r["Selection"] for r in rows] == ["1", "2", "3"]
    assert [r["Detection ID"] for r in rows] == [early.id, mid.id, late.id]
    assert [float(r["Begin Time (s)"]) for r in rows] == [2.5, 12.25, 30.0]
    assert [float(r["End Time (s)"]) for r in rows] == [7.5, 17.25, 35.0]
    first = rows[0]
    assert first["View"] == "Spectrogram 1" and first["Channel"] == "1"
    assert float(first["Low Freq (Hz)"]) == 150.0 and float(first["High Freq (Hz)"]) == 8000.0
    assert first["Species Code"] == "eurrob1"
    assert first["Common Name"] == "European Robin"
    assert first["Scientific Name"] == "Erithacus rubecula"
    assert float(first["Confidence"]) == pytest.approx(0.873457, abs=1e-6)
    assert first["Separated Channel"] == "sep2"
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temp file left


def test_raven_default_band_and_empty_table(tmp_path: Path) -> None:
    path = tmp_path / "empty.txt"
    RavenSink(path).close()
    assert read_raven(path) == [list(RAVEN_COLUMNS)]
    path2 = tmp_path / "one.txt"
    sink = RavenSink(path2)
    sink.emit(make_detection())
    sink.close()
    row = read_raven(path2)[1]
    assert float(row[5]) == 0.0 and float(row[6]) == 11025.0


def test_raven_special_characters_keep_columns(tmp_path: Path) -> None:
    path = tmp_path / "t.txt"
    sink = RavenSink(path)
    sink.emit(nasty_detection())
    sink.emit(make_detection(1.0))
    sink.close()
    table = read_raven(path)
    assert len(table) == 3
    assert all(len(r) == len(RAVEN_COLUMNS) for r in table)
    nasty = table[1]
    assert nasty[8] == 'Robin, "the red" breast; \\ end'
    assert nasty[9] == "Erithacus rubecula"
    assert nasty[11] == "sep 0"


def test_raven_rejects_bad_band(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="low_freq_hz"):
        RavenSink(tmp_path / "t.txt", low_freq_hz=9000.0, high_freq_hz=8000.0)


# -- common behaviour -------------------------------------------------------------------------


@pytest.mark.parametrize("cls", [JsonlSink, CsvSink, RavenSink])
def test_close_is_idempotent_and_emit_after_close_fails(tmp_path: Path, cls: type) -> None:
    path = tmp_path / "out.txt"
    sink = cls(path)
    assert isinstance(sink, Sink)
    sink.emit(make_detection())
    sink.close()
    content = path.read_bytes()
    sink.close()
    assert path.read_bytes() == content  # second close neither fails nor rewrites
    with pytest.raises(ValueError, match="closed"):
        sink.emit(make_detection())


@pytest.mark.parametrize("cls", [JsonlSink, CsvSink])
def test_unwritable_path_is_a_domain_error(tmp_path: Path, cls: type) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(ChorusError, match="cannot open output file"):
        cls(blocker / "d.out")  # parent is a file


def test_open_file_sinks_from_config(tmp_path: Path) -> None:
    assert open_file_sinks(OutputsConfig()) == []
    cfg = OutputsConfig(jsonl=str(tmp_path / "d.jsonl"), csv=str(tmp_path / "d.csv"))
    sinks = open_file_sinks(cfg)
    assert [type(s) for s in sinks] == [JsonlSink, CsvSink]
    d = make_detection()
    for s in sinks:
        s.emit(d)
        s.close()
    assert read_jsonl(tmp_path / "d.jsonl")[0]["id"] == d.id
    assert read_csv(tmp_path / "d.csv")[1][0]["id"] == d.id
