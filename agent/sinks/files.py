"""File sinks: a JSONL log, a CSV log and a Raven Pro selection table.

The JSONL and CSV sinks append and flush after every detection, so a crash of the agent loses
nothing already emitted (``fsync=True`` also survives a power cut, at the cost of one SD-card
write per detection). The Raven sink is for offline analysis of one recording: it sorts its
selections, so it holds them in memory and writes the table once, atomically, at ``close()``.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import tempfile
from pathlib import Path
from typing import IO, Any

from agent.config import OutputsConfig
from agent.detection.types import Detection
from agent.errors import ChorusError
from agent.sinks import Sink

log = logging.getLogger(__name__)

CSV_COLUMNS = (
    "id",
    "start_utc",
    "end_utc",
    "start_s",
    "end_s",
    "species_code",
    "scientific_name",
    "common_name",
    "confidence",
    "channel",
    "classifier",
    "bundle",
    "bundle_version",
    "device",
    "source",
)

# The columns every Raven Pro selection table starts with (also read by modeltools' importer).
RAVEN_STANDARD_COLUMNS = (
    "Selection",
    "View",
    "Channel",
    "Begin Time (s)",
    "End Time (s)",
    "Low Freq (Hz)",
    "High Freq (Hz)",
)
RAVEN_COLUMNS = (
    *RAVEN_STANDARD_COLUMNS,
    "Species Code",
    "Common Name",
    "Scientific Name",
    "Confidence",
    "Separated Channel",
    "Detection ID",
)


class OutputError(ChorusError):
    """An output file cannot be opened (a folder, no permission, a missing drive): a mistake in
    the configuration or the command line, so the CLI exits 2."""

    exit_code = 2


def _open_append(path: Path) -> tuple[IO[str], bool]:
    """Open ``path`` for appending text (creating parent folders).

    Returns the file and whether it was empty. If a previous run died in the middle of a line,
    the partial line is ended first so the next record starts on a line of its own.
    Raises :class:`OutputError` (one clear line) if the file cannot be opened.
    """
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fh = open(path, "a", encoding="utf-8", newline="")  # noqa: SIM115 - the sink owns it
    except OSError as exc:
        raise OutputError(f"cannot open output file {path}: {exc.strerror or exc}") from None
    try:
        size = path.stat().st_size
        if size > 0:
            with open(path, "rb") as raw:
                raw.seek(size - 1)
                if raw.read(1) != b"\n":
                    log.warning("%s: last line was incomplete (earlier crash?); ending it", path)
                    fh.write("\n")
                    fh.flush()
    except BaseException:
        fh.close()
        raise
    return fh, size == 0


class _AppendingSink:
    """Shared open/flush/close logic of the line-oriented sinks."""

    def __init__(self, path: str | os.PathLike[str], fsync: bool = False) -> None:
        self.path = Path(path)
        self._fsync = fsync
        self._fh: IO[str] | None
        self._fh, self._was_empty = _open_append(self.path)

    def _file(self) -> IO[str]:
        if self._fh is None:
            raise ValueError(f"{type(self).__name__}({self.path}) is closed")
        return self._fh

    def _flush(self) -> None:
        fh = self._file()
        fh.flush()
        if self._fsync:
            os.fsync(fh.fileno())

    def close(self) -> None:
        """Flush and close the file. Safe to call more than once."""
        if self._fh is None:
            return
        try:
            self._fh.flush()
            if self._fsync:
                os.fsync(self._fh.fileno())
        finally:
            self._fh.close()
            self._fh = None


class JsonlSink(_AppendingSink):
    """Appends one compact JSON object (:meth:`Detection.to_payload`) per line, UTF-8.

    JSON escapes control characters inside strings, so a text field can never split a line.
    """

    def emit(self, detection: Detection) -> None:
        """Append the detection and flush."""
        line = json.dumps(detection.to_payload(), separators=(",", ":"), ensure_ascii=False)
        self._file().write(line + "\n")
        self._flush()


def csv_row(detection: Detection) -> dict[str, Any]:
    """The CSV columns of one detection, formatted exactly as in the JSON payload."""
    p = detection.to_payload()
    return {
        "id": p["id"],
        "start_utc": p["start_utc"],
        "end_utc": p["end_utc"],
        "start_s": p["start_s"],
        "end_s": p["end_s"],
        "species_code": p["species"]["code"],
        "scientific_name": p["species"]["scientific_name"],
        "common_name": p["species"]["common_name"],
        "confidence": p["confidence"],
        "channel": p["channel"],
        "classifier": p["model"]["classifier"],
        "bundle": p["model"]["bundle"],
        "bundle_version": p["model"]["version"],
        "device": p["device"],
        "source": p["source"],
    }


class CsvSink(_AppendingSink):
    """Appends one CSV row per detection (RFC 4180 quoting via :mod:`csv`, UTF-8).

    The header (:data:`CSV_COLUMNS`) is written only when the file is new or empty, so a
    restarted agent keeps appending to the same table.
    """

    def __init__(self, path: str | os.PathLike[str], fsync: bool = False) -> None:
        super().__init__(path, fsync)
        self._writer = csv.DictWriter(self._file(), fieldnames=CSV_COLUMNS, lineterminator="\r\n")
        if self._was_empty:
            self._writer.writeheader()
            self._flush()
        else:
            self._check_header()

    def _check_header(self) -> None:
        # A table written by another version would silently get misaligned rows: say so.
        with open(self.path, encoding="utf-8", newline="") as fh:
            first = next(csv.reader(fh), [])
        if tuple(first) != CSV_COLUMNS:
            log.warning(
                "%s: existing header differs from %s; appending anyway",
                self.path,
                ",".join(CSV_COLUMNS),
            )

    def emit(self, detection: Detection) -> None:
        """Append the detection's row and flush."""
        self._file()
        self._writer.writerow(csv_row(detection))
        self._flush()


def _raven_text(value: str) -> str:
    # Raven tables have no quoting: a tab or line break inside a field would shift columns.
    return " ".join(value.replace("\t", " ").splitlines()).strip() if value else ""


class RavenSink:
    """A Raven Pro selection table (tab-separated ``.txt``) of one recording.

    Meant for offline analysis of a single file: Begin/End Time are the detections'
    ``start_s``/``end_s`` offsets, which only make sense within one recording. Selections are
    numbered from 1 in order of begin time, so the table is built in memory and written at
    :meth:`close` (temp file + ``os.replace``: a reader never sees half a table). Nothing is
    written if the process dies before ``close``; use the JSONL sink for live logging.
    Each selection spans ``low_freq_hz``..``high_freq_hz`` (default 0 to 11025 Hz, the
    Nyquist band of 22.05 kHz audio).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        low_freq_hz: float = 0.0,
        high_freq_hz: float = 11025.0,
    ) -> None:
        if not 0.0 <= low_freq_hz < high_freq_hz:
            raise ValueError(
                f"need 0 <= low_freq_hz < high_freq_hz, got {low_freq_hz}, {high_freq_hz}"
            )
        self.path = Path(path)
        self.low_freq_hz = low_freq_hz
        self.high_freq_hz = high_freq_hz
        self._detections: list[Detection] = []
        self._closed = False

    def emit(self, detection: Detection) -> None:
        """Keep the detection for the table written at close()."""
        if self._closed:
            raise ValueError(f"RavenSink({self.path}) is closed")
        self._detections.append(detection)

    def rows(self) -> list[list[str]]:
        """The table's data rows, sorted by begin time (then end time, then arrival)."""
        ordered = sorted(self._detections, key=lambda d: (d.start_s, d.end_s))
        return [
            [
                str(i),
                "Spectrogram 1",
                "1",
                f"{d.start_s:.6f}",
                f"{d.end_s:.6f}",
                f"{self.low_freq_hz:.1f}",
                f"{self.high_freq_hz:.1f}",
                _raven_text(d.species_code),
                _raven_text(d.common_name),
                _raven_text(d.scientific_name),
                f"{d.confidence:.6f}",
                _raven_text(d.channel),
                _raven_text(d.id),
            ]
            for i, d in enumerate(ordered, start=1)
        ]

    def close(self) -> None:
        """Write the sorted table atomically. Safe to call more than once (writes once)."""
        if self._closed:
            return
        self._closed = True
        self.path.parent.mkdir(parents=True, exist_ok=True)
        lines = ["\t".join(RAVEN_COLUMNS)] + ["\t".join(r) for r in self.rows()]
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", dir=self.path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8", newline="") as fh:
                fh.write("\n".join(lines) + "\n")
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        log.info("wrote %d selections to %s", len(self._detections), self.path)


def open_file_sinks(outputs: OutputsConfig) -> list[Sink]:
    """The file sinks the ``outputs`` config section asks for (JSONL and/or CSV)."""
    sinks: list[Sink] = []
    try:
        if outputs.jsonl:
            sinks.append(JsonlSink(outputs.jsonl))
        if outputs.csv:
            sinks.append(CsvSink(outputs.csv))
    except BaseException:
        for sink in sinks:
            sink.close()
        raise
    return sinks
