"""Real-audio evaluation sets from ``../shared/data`` (see its README.md).

* **spinetail** (``scikit-maad/spinetail.wav`` + ``spinetail.txt``): the only human,
  time-stamped bird annotation available. An Audacity label track with time + frequency boxes:
  ``CRER`` = Red-faced Spinetail (*Cranioleuca erythrops*, 4 songs) and ``SP`` (14 short calls;
  the code is not explained upstream, so ``SP`` names no species and cannot be scored).
* **BirdNET pseudo-labels** (``*/birdnet-v2.4_detections.csv``): BirdNET v2.4's detections on
  every recording of the folder, 3-s chunks. They are *model output, not ground truth*; the
  set is marked ``weak`` and the report says so.

Both are cut into the corpus's 5-s segments (a trailing part of >= 2.5 s is kept, zero-padded)
and labelled with the rule of :mod:`modeltools.data.annotations`: an event labels a segment it
overlaps by >= 0.25 s or by half its length. Labels are computed from the annotation files and
the audio headers only; the audio is decoded (to 22.05 kHz mono) when the set is scored.
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf

from modeltools.data.annotations import Annotation, read_audacity, segment_labels
from modeltools.data.audio_io import AUDIO_EXTENSIONS, decode_audio
from modeltools.evaluation.separate_classify import (
    SEGMENT_SAMPLES,
    SET_RATE_HZ,
    ClassRef,
    EvalSet,
    EvaluationError,
)

log = logging.getLogger(__name__)

SEGMENT_S = 5.0
SPINETAIL_SPECIES = {"CRER": ClassRef("CRER", "Cranioleuca erythrops", "Red-faced Spinetail")}
SPINETAIL_UNSCORABLE = {"SP": "short calls labelled 'SP' (the code is not explained upstream)"}
BIRDNET_CSV = "birdnet-v2.4_detections.csv"
DEFAULT_MIN_CONFIDENCE = 0.5


@dataclass(frozen=True)
class Detection:
    """One row of a BirdNET detections CSV."""

    file: str  # relative to the folder of the CSV
    start_s: float
    end_s: float
    scientific_name: str
    common_name: str
    confidence: float


def read_birdnet(path: str | Path) -> list[Detection]:
    """``file,start_s,end_s,scientific_name,common_name,confidence`` rows of a BirdNET CSV."""
    path = Path(path)
    out = []
    with path.open(newline="", encoding="utf-8") as f:
        for line, row in enumerate(csv.DictReader(f), start=2):
            try:
                out.append(
                    Detection(
                        row["file"],
                        float(row["start_s"]),
                        float(row["end_s"]),
                        row["scientific_name"].strip(),
                        row["common_name"].strip(),
                        float(row["confidence"]),
                    )
                )
            except (KeyError, TypeError, ValueError) as exc:
                raise EvaluationError(
                    f"{path}:{line}: not a BirdNET detection row ({exc})"
                ) from None
    return out


def _segments(
    path: Path, annotations: Sequence[Annotation]
) -> list[tuple[float, float, tuple[str, ...]]]:
    return segment_labels(annotations, sf.info(str(path)).duration, SEGMENT_S)


def _loader(items: list[tuple[Path, float]]) -> np.ndarray:
    """Decode each file once and cut its segments (22.05 kHz, zero-padded to 5 s)."""
    out = np.zeros((len(items), SEGMENT_SAMPLES), np.float32)
    cache: dict[Path, np.ndarray] = {}
    for k, (path, start_s) in enumerate(items):
        if path not in cache:
            cache.clear()  # items are grouped by file: keep one decoded file at a time
            cache[path] = decode_audio(path, SET_RATE_HZ).samples
        x = cache[path][round(start_s * SET_RATE_HZ) :][:SEGMENT_SAMPLES]
        out[k, : len(x)] = x
    return out


def _take(rows: list[Any], limit: int | None) -> list[Any]:
    """An evenly spaced subset of ``limit`` rows (deterministic; all if None)."""
    if limit is None or limit >= len(rows):
        return rows
    idx = np.linspace(0, len(rows) - 1, limit).round().astype(int)
    return [rows[i] for i in idx]


def spinetail_set(shared: str | Path, limit: int | None = None) -> EvalSet:
    """The annotated spinetail clip as 5-s segments; only ``CRER`` is a species."""
    root = Path(shared) / "scikit-maad"
    wav, txt = root / "spinetail.wav", root / "spinetail.txt"
    if not (wav.is_file() and txt.is_file()):
        raise EvaluationError(f"{root}: spinetail.wav / spinetail.txt not found")
    anns = read_audacity(txt)
    segs = _take(_segments(wav, anns), limit)
    codes = list(SPINETAIL_SPECIES)
    labels = np.array([[c in lab for c in codes] for _, _, lab in segs], dtype=bool)
    counts = {code: sum(a.label == code for a in anns) for code in SPINETAIL_UNSCORABLE}
    notes = [
        f"{n} {SPINETAIL_UNSCORABLE[c]}: they name no species and are not scored"
        for c, n in counts.items()
        if n
    ]
    items = [(wav, s) for s, _, _ in segs]
    return EvalSet(
        name="spinetail (scikit-maad)",
        classes=tuple(SPINETAIL_SPECIES.values()),
        labels=labels,
        segment_names=tuple(f"spinetail.wav @ {s:.1f} s" for s, _, _ in segs),
        loader=lambda: _loader(items),
        label_kind="strong",
        label_source="human annotation (Audacity label track with time + frequency boxes)",
        notes=tuple(notes),
    )


def _audio_files(folder: Path) -> list[Path]:
    return sorted(
        p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in AUDIO_EXTENSIONS
    )


def birdnet_set(
    shared: str | Path, min_confidence: float = DEFAULT_MIN_CONFIDENCE, limit: int | None = None
) -> EvalSet | None:
    """Every recording of every folder with a BirdNET CSV, labelled by the detections at
    ``>= min_confidence`` (weak labels); None if there is no such folder."""
    shared = Path(shared)
    folders = sorted(p.parent for p in shared.glob(f"*/{BIRDNET_CSV}"))
    if not folders:
        return None
    names: dict[str, str] = {}
    rows: list[tuple[Path, float, tuple[str, ...]]] = []
    for folder in folders:
        by_file: dict[str, list[Annotation]] = {}
        for d in read_birdnet(folder / BIRDNET_CSV):
            if d.confidence >= min_confidence and d.scientific_name:
                names.setdefault(d.scientific_name, d.common_name)
                by_file.setdefault(d.file, []).append(
                    Annotation(d.start_s, d.end_s, d.scientific_name)
                )
        for path in _audio_files(folder):
            rel = path.relative_to(folder).as_posix()
            try:
                segs = _segments(path, by_file.get(rel, []))
            except (RuntimeError, sf.LibsndfileError) as exc:  # unreadable header: skip it
                log.warning("%s: skipped (%s)", path, exc)
                continue
            rows += [(path, s, lab) for s, _, lab in segs]
    rows = _take(rows, limit)
    classes = tuple(ClassRef(sci, sci, common) for sci, common in sorted(names.items()))
    col = {c.code: j for j, c in enumerate(classes)}
    labels = np.zeros((len(rows), len(classes)), dtype=bool)
    for k, (_, _, lab) in enumerate(rows):
        labels[k, [col[s] for s in lab]] = True
    items = [(p, s) for p, s, _ in rows]
    return EvalSet(
        name="BirdNET pseudo-labels (shared data)",
        classes=classes,
        labels=labels,
        segment_names=tuple(f"{p.relative_to(shared).as_posix()} @ {s:.1f} s" for p, s in items),
        loader=lambda: _loader(items),
        label_kind="weak",
        label_source=(
            f"BirdNET v2.4 pseudo-labels: its detections with confidence >= {min_confidence:g} "
            f"(3-s chunks) on {len({p for p, _ in items})} recordings of {len(folders)} folders; "
            "model output, not ground truth"
        ),
    )


def real_sets(
    shared: str | Path,
    min_confidence: float = DEFAULT_MIN_CONFIDENCE,
    limit: int | None = None,
) -> list[EvalSet]:
    """The real sets present under ``shared`` (spinetail first, then BirdNET)."""
    shared = Path(shared)
    if not shared.is_dir():
        raise EvaluationError(f"{shared}: no such folder (the shared real data)")
    out: list[EvalSet] = []
    if (shared / "scikit-maad" / "spinetail.txt").is_file():
        out.append(spinetail_set(shared, limit))
    bn = birdnet_set(shared, min_confidence, limit)
    if bn is not None:
        out.append(bn)
    if not out:
        log.warning("%s: no spinetail annotation and no BirdNET detections found", shared)
    return out
