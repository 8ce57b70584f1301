"""Training windows: activity detection over a dataset (or loose files) -> ``windows.csv``.

Each row is one window ``[start_sample, end_sample)`` of a recording at the dataset rate,
found by :func:`modeltools.data.activity.detect_windows` (the paper's 6-s, up-to-5 windows).
Results are journalled per recording (keyed by its sha256 and the settings), so a re-run only
processes new or changed recordings and rewrites the same CSV.
"""

from __future__ import annotations

import csv
import io
import logging
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from modeltools.data.activity import MAX_INTERVALS, PAPER_INTERVAL_S, detect_windows
from modeltools.data.audio_io import AudioDecodeError, decode_audio, is_audio_file, sha256_file
from modeltools.data.dataset import Dataset, DatasetError
from modeltools.data.jobs import Journal, SkipLog, progress
from modeltools.data.taxonomy import atomic_write_text

log = logging.getLogger(__name__)

WINDOWS_NAME = "windows.csv"
COLUMNS = (
    "recording_id",
    "path",
    "split",
    "window",
    "start_sample",
    "end_sample",
    "peak_sample",
    "energy",
)


@dataclass(frozen=True)
class TrainingWindow:
    recording_id: str
    path: str
    split: str
    window: int  # rank by peak energy (0 = loudest)
    start_sample: int
    end_sample: int
    peak_sample: float
    energy: float


def write_windows_csv(path: str | Path, windows: Sequence[TrainingWindow]) -> None:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(COLUMNS)
    for x in windows:
        w.writerow(
            [
                x.recording_id,
                x.path,
                x.split,
                x.window,
                x.start_sample,
                x.end_sample,
                f"{x.peak_sample:.1f}",
                "" if math.isnan(x.energy) else f"{x.energy:.4f}",
            ]
        )
    atomic_write_text(Path(path), buf.getvalue())


def read_windows_csv(path: str | Path) -> list[TrainingWindow]:
    path = Path(path)
    try:
        with path.open(newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
        return [
            TrainingWindow(
                r["recording_id"],
                r["path"],
                r["split"],
                int(r["window"]),
                int(r["start_sample"]),
                int(r["end_sample"]),
                float(r["peak_sample"]),
                float(r["energy"]) if r["energy"] else math.nan,
            )
            for r in rows
        ]
    except (OSError, KeyError, ValueError) as exc:
        raise DatasetError(f"{path}: not a windows.csv ({exc!r})") from exc


def _detect(
    audio_path: Path, sample_rate_hz: int, interval_s: float, max_windows: int
) -> list[dict[str, float]]:
    audio = decode_audio(audio_path, sample_rate_hz).samples
    return [
        {"start": w.start, "end": w.end, "peak": w.peak_sample, "energy": w.energy}
        for w in detect_windows(audio, sample_rate_hz, interval_s, max_windows)
    ]


def windows_for_dataset(
    ds: Dataset,
    kinds: Iterable[str] = ("focal",),
    interval_s: float = PAPER_INTERVAL_S,
    max_windows: int = MAX_INTERVALS,
    out: Path | None = None,
) -> tuple[list[TrainingWindow], SkipLog]:
    """Detect windows in every recording of ``kinds``; write ``out`` (default windows.csv)."""
    out = out or ds.root / WINDOWS_NAME
    journal = Journal(out.parent / f".{out.stem}.journal.jsonl")
    skips = SkipLog(log)
    recs = ds.select(kinds=kinds)
    windows: list[TrainingWindow] = []
    for rec in progress(recs, "activity", total=len(recs)):
        key = f"{rec.id}|{rec.sha256}|{interval_s}|{max_windows}|{ds.sample_rate_hz}"
        found = journal.get(key)
        if found is None:
            try:
                found = {
                    "windows": _detect(ds.path(rec), ds.sample_rate_hz, interval_s, max_windows)
                }
            except (AudioDecodeError, OSError) as exc:
                skips.skip("unreadable audio", str(exc))
                continue
            journal.add(key, found)
        for i, w in enumerate(found["windows"]):
            windows.append(
                TrainingWindow(
                    rec.id,
                    rec.path,
                    rec.split,
                    i,
                    int(w["start"]),
                    int(w["end"]),
                    float(w["peak"]),
                    float(w["energy"]),
                )
            )
    write_windows_csv(out, windows)
    return windows, skips


def windows_for_files(
    paths: Iterable[Path],
    out: Path,
    sample_rate_hz: int = 22050,
    interval_s: float = PAPER_INTERVAL_S,
    max_windows: int = MAX_INTERVALS,
) -> tuple[list[TrainingWindow], SkipLog]:
    """Detect windows in loose audio files/folders (samples at ``sample_rate_hz``)."""
    files: list[Path] = []
    for p in paths:
        p = Path(p)
        if p.is_dir():
            files += sorted(f for f in p.rglob("*") if is_audio_file(f))
        elif p.exists():
            files.append(p)
        else:
            raise DatasetError(f"{p}: no such file or folder")
    journal = Journal(out.parent / f".{out.stem}.journal.jsonl")
    skips = SkipLog(log)
    windows: list[TrainingWindow] = []
    for f in progress(files, "activity", total=len(files)):
        try:
            key = f"{f.resolve()}|{sha256_file(f)}|{interval_s}|{max_windows}|{sample_rate_hz}"
            found = journal.get(key)
            if found is None:
                found = {"windows": _detect(f, sample_rate_hz, interval_s, max_windows)}
                journal.add(key, found)
        except (AudioDecodeError, OSError) as exc:
            skips.skip("unreadable audio", str(exc))
            continue
        for i, w in enumerate(found["windows"]):
            windows.append(
                TrainingWindow(
                    f.name,
                    str(f),
                    "",
                    i,
                    int(w["start"]),
                    int(w["end"]),
                    float(w["peak"]),
                    float(w["energy"]),
                )
            )
    write_windows_csv(out, windows)
    return windows, skips
