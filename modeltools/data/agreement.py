"""Check activity windows against pseudo-labels (BirdNET detections CSV).

BirdNET's output (``file,start_s,end_s,scientific_name,common_name,confidence``; 3-s chunks)
is not ground truth, but it says where a species was confidently heard. A window *agrees*
when its peak lies in a chunk where the species was detected at ``min_confidence`` or more;
``covered`` counts the detected chunks that some window of the same file overlaps.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from modeltools.data.windows import TrainingWindow


@dataclass
class Agreement:
    windows: int = 0
    agreeing: int = 0
    chunks: int = 0
    covered: int = 0
    per_file: dict[str, tuple[int, int]] = field(default_factory=dict)  # name -> (agree, total)

    @property
    def precision(self) -> float:
        return self.agreeing / self.windows if self.windows else float("nan")

    @property
    def coverage(self) -> float:
        return self.covered / self.chunks if self.chunks else float("nan")

    def summary(self) -> str:
        return (
            f"{self.agreeing}/{self.windows} windows peak inside a BirdNET detection "
            f"({100 * self.precision:.0f} %); {self.covered}/{self.chunks} detected chunks "
            f"overlap a window ({100 * self.coverage:.0f} %)"
        )


def read_detections(
    path: str | Path, species: str, min_confidence: float = 0.5
) -> dict[str, list[tuple[float, float]]]:
    """{file stem: [(start_s, end_s)]} of confident detections of ``species``."""
    out: dict[str, list[tuple[float, float]]] = {}
    key = species.strip().lower()
    with Path(path).open(newline="", encoding="utf-8") as f:
        for r in csv.DictReader(f):
            names = {r.get("scientific_name", "").lower(), r.get("common_name", "").lower()}
            if key in names and float(r["confidence"]) >= min_confidence:
                out.setdefault(Path(r["file"]).stem, []).append(
                    (float(r["start_s"]), float(r["end_s"]))
                )
    return out


def compare(
    windows: Sequence[TrainingWindow],
    detections: dict[str, list[tuple[float, float]]],
    sample_rate_hz: int = 22050,
) -> Agreement:
    """Agreement of ``windows`` (matched to detections by file stem) with ``detections``."""
    res = Agreement()
    by_file: dict[str, list[TrainingWindow]] = {}
    for w in windows:
        by_file.setdefault(Path(w.recording_id).stem, []).append(w)
    for name in sorted(by_file):
        ws = by_file[name]
        chunks = detections.get(name, [])
        agree = sum(any(a <= w.peak_sample / sample_rate_hz < b for a, b in chunks) for w in ws)
        res.windows += len(ws)
        res.agreeing += agree
        res.per_file[name] = (agree, len(ws))
        res.chunks += len(chunks)
        res.covered += sum(
            any(
                w.start_sample / sample_rate_hz < b and w.end_sample / sample_rate_hz > a
                for w in ws
            )
            for a, b in chunks
        )
    return res
