"""Time(-frequency) annotations: Raven selection tables, a simple CSV, Audacity label tracks.

Readers return :class:`Annotation` boxes; :func:`segment_labels` turns them into the 5-s
strongly labelled segments that the paper evaluates on (ALGORITHMS.md: evaluation sets are 5-s
segments). The simple CSV has the columns ``start_s,end_s,label,low_freq_hz,high_freq_hz``
(extra columns are kept in ``Annotation.extra``). Raven tables are tab-separated with
``Begin Time (s)``/``End Time (s)`` and a label column (``Species Code``, ``Species``,
``Annotation``, ``Label``, ``Class``...); the duplicate "Waveform" view rows Raven writes are
dropped. Audacity label tracks are ``start<TAB>end<TAB>label`` lines, optionally each followed
by a ``\\<TAB>low<TAB>high`` frequency line.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from agent.errors import ChorusError
from agent.sinks.files import RAVEN_STANDARD_COLUMNS

RAVEN_LABEL_COLUMNS = (
    "species code",
    "species",
    "annotation",
    "label",
    "class",
    "code",
    "common name",
)
CSV_COLUMNS = ("start_s", "end_s", "label", "low_freq_hz", "high_freq_hz")
RAVEN_COLUMNS = (*RAVEN_STANDARD_COLUMNS, "Species Code")
UNLABELLED = "?"  # label of an annotation box whose label cell is empty
# A segment is labelled with a species when an event overlaps it by at least this long, or
# by at least half the event (short calls cut by a segment edge still count where most of
# the call is).
MIN_OVERLAP_S = 0.25
MIN_OVERLAP_FRACTION = 0.5
# A trailing partial segment is kept when at least this long (shorter ones are dropped).
MIN_LAST_SEGMENT_S = 2.5


class AnnotationError(ChorusError):
    """An annotation file cannot be parsed."""

    exit_code = 2


@dataclass(frozen=True)
class Annotation:
    start_s: float
    end_s: float
    label: str
    low_freq_hz: float | None = None
    high_freq_hz: float | None = None
    extra: dict[str, str] = field(default_factory=dict, compare=False)


def _float(value: str, what: str, where: str) -> float:
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise AnnotationError(f"{where}: {what} {value!r} is not a number") from None
    if not math.isfinite(x):
        raise AnnotationError(f"{where}: {what} {value!r} is not finite")
    return x


def _opt_float(value: str | None, what: str, where: str) -> float | None:
    return None if value is None or value.strip() == "" else _float(value, what, where)


def _check(a: Annotation, where: str) -> Annotation:
    if a.end_s <= a.start_s or a.start_s < 0:
        raise AnnotationError(f"{where}: bad time span {a.start_s}..{a.end_s}")
    if not a.label:
        # Real tables have boxes nobody labelled: keep them as "some sound, species unknown"
        # so the segments they touch are flagged instead of silently called empty.
        return Annotation(a.start_s, a.end_s, UNLABELLED, a.low_freq_hz, a.high_freq_hz, a.extra)
    return a


def read_raven(path: str | Path) -> list[Annotation]:
    """Read a Raven Pro selection table (tab-separated)."""
    path = Path(path)
    text = _read_text(path)
    rows = list(csv.reader(io.StringIO(text), delimiter="\t"))
    if not rows:
        raise AnnotationError(f"{path}: empty selection table")
    header = [h.strip() for h in rows[0]]
    lower = [h.lower() for h in header]
    needed = ("begin time (s)", "end time (s)")
    missing = [n for n in needed if n not in lower]
    label_col = next((lower.index(c) for c in RAVEN_LABEL_COLUMNS if c in lower), None)
    if missing or label_col is None:
        what = [*missing, *([] if label_col is not None else ["a species/label column"])]
        raise AnnotationError(f"{path}: not a Raven selection table (missing {', '.join(what)})")
    col = {name: lower.index(name) for name in lower}
    out: list[Annotation] = []
    for line, row in enumerate(rows[1:], start=2):
        if not any(cell.strip() for cell in row):
            continue
        row = row + [""] * (len(header) - len(row))
        view = row[col["view"]].strip().lower() if "view" in col else ""
        if view.startswith("waveform"):
            continue  # Raven writes each selection once per view; keep the spectrogram row
        where = f"{path}:{line}"
        out.append(
            _check(
                Annotation(
                    start_s=_float(row[col["begin time (s)"]], "Begin Time", where),
                    end_s=_float(row[col["end time (s)"]], "End Time", where),
                    label=row[label_col].strip(),
                    low_freq_hz=_opt_float(row[col["low freq (hz)"]], "Low Freq", where)
                    if "low freq (hz)" in col
                    else None,
                    high_freq_hz=_opt_float(row[col["high freq (hz)"]], "High Freq", where)
                    if "high freq (hz)" in col
                    else None,
                ),
                where,
            )
        )
    return out


def read_csv_annotations(path: str | Path) -> list[Annotation]:
    """Read the simple CSV form (``start_s,end_s,label[,low_freq_hz,high_freq_hz,...]``)."""
    path = Path(path)
    reader = csv.DictReader(io.StringIO(_read_text(path)))
    header = [h.strip() for h in (reader.fieldnames or [])]
    label_key = next((k for k in ("label", "species_code", "species") if k in header), None)
    missing = [c for c in ("start_s", "end_s") if c not in header]
    if missing or label_key is None:
        what = [*missing, *([] if label_key else ["label"])]
        raise AnnotationError(f"{path}: annotation CSV is missing column(s) {', '.join(what)}")
    out = []
    for line, row in enumerate(reader, start=2):
        row = {(k or "").strip(): (v or "").strip() for k, v in row.items() if k}
        where = f"{path}:{line}"
        known = {"start_s", "end_s", label_key, "low_freq_hz", "high_freq_hz"}
        out.append(
            _check(
                Annotation(
                    start_s=_float(row["start_s"], "start_s", where),
                    end_s=_float(row["end_s"], "end_s", where),
                    label=row[label_key],
                    low_freq_hz=_opt_float(row.get("low_freq_hz"), "low_freq_hz", where),
                    high_freq_hz=_opt_float(row.get("high_freq_hz"), "high_freq_hz", where),
                    extra={k: v for k, v in row.items() if k not in known},
                ),
                where,
            )
        )
    return out


def read_audacity(path: str | Path) -> list[Annotation]:
    """Read an Audacity label track (optionally with ``\\`` frequency lines)."""
    path = Path(path)
    out: list[Annotation] = []
    for line, raw in enumerate(_read_text(path).splitlines(), start=1):
        if not raw.strip():
            continue
        parts = raw.split("\t")
        where = f"{path}:{line}"
        if parts[0].strip() == "\\":
            if not out or len(parts) < 3:
                raise AnnotationError(f"{where}: frequency line without a label line")
            prev = out[-1]
            out[-1] = Annotation(
                prev.start_s,
                prev.end_s,
                prev.label,
                _float(parts[1], "low frequency", where),
                _float(parts[2], "high frequency", where),
            )
            continue
        if len(parts) < 3:
            raise AnnotationError(f"{where}: expected start<TAB>end<TAB>label")
        out.append(
            _check(
                Annotation(
                    _float(parts[0], "start", where),
                    _float(parts[1], "end", where),
                    parts[2].strip(),
                ),
                where,
            )
        )
    return out


def sniff_annotations(path: str | Path) -> list[Annotation]:
    """Read ``path`` as whichever of the three formats it is (Raven, CSV, Audacity)."""
    path = Path(path)
    text = _read_text(path)
    first = text.splitlines()[0] if text.strip() else ""
    low = first.lower()
    if "begin time (s)" in low:
        return read_raven(path)
    if "start_s" in low and "," in first:
        return read_csv_annotations(path)
    if first.count("\t") >= 2:
        return read_audacity(path)
    raise AnnotationError(f"{path}: not a Raven table, annotation CSV or Audacity label track")


def write_raven(path: str | Path, annotations: Sequence[Annotation]) -> None:
    """Write a Raven selection table (one Spectrogram row per annotation, sorted by time)."""
    lines = ["\t".join(RAVEN_COLUMNS)]
    for i, a in enumerate(sorted(annotations, key=lambda a: (a.start_s, a.end_s)), start=1):
        lines.append(
            "\t".join(
                [
                    str(i),
                    "Spectrogram 1",
                    "1",
                    f"{a.start_s:.4f}",
                    f"{a.end_s:.4f}",
                    f"{a.low_freq_hz or 0.0:.1f}",
                    f"{a.high_freq_hz or 0.0:.1f}",
                    a.label,
                ]
            )
        )
    _write(Path(path), "\n".join(lines) + "\n")


def write_csv_annotations(
    path: str | Path, annotations: Sequence[Annotation], extra_columns: Sequence[str] = ()
) -> None:
    """Write the simple CSV form (plus ``extra_columns`` taken from ``Annotation.extra``)."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow([*CSV_COLUMNS, *extra_columns])
    for a in sorted(annotations, key=lambda a: (a.start_s, a.end_s)):
        w.writerow(
            [
                f"{a.start_s:.4f}",
                f"{a.end_s:.4f}",
                a.label,
                "" if a.low_freq_hz is None else f"{a.low_freq_hz:.1f}",
                "" if a.high_freq_hz is None else f"{a.high_freq_hz:.1f}",
                *(a.extra.get(c, "") for c in extra_columns),
            ]
        )
    _write(Path(path), buf.getvalue())


def segment_bounds(
    duration_s: float, segment_s: float = 5.0, min_last_s: float = MIN_LAST_SEGMENT_S
) -> list[tuple[float, float]]:
    """Consecutive ``segment_s`` segments; a trailing partial one only if >= ``min_last_s``."""
    bounds = []
    start = 0.0
    while start + segment_s <= duration_s + 1e-9:
        bounds.append((start, start + segment_s))
        start += segment_s
    if duration_s - start >= min_last_s:
        bounds.append((start, duration_s))
    return bounds


def overlaps_enough(a: Annotation, start_s: float, end_s: float) -> bool:
    """Whether ``a`` counts as present in ``[start_s, end_s)`` (see MIN_OVERLAP_*)."""
    overlap = min(a.end_s, end_s) - max(a.start_s, start_s)
    if overlap <= 0:
        return False
    return overlap >= MIN_OVERLAP_S or overlap >= MIN_OVERLAP_FRACTION * (a.end_s - a.start_s)


def segment_labels(
    annotations: Iterable[Annotation],
    duration_s: float,
    segment_s: float = 5.0,
) -> list[tuple[float, float, tuple[str, ...]]]:
    """``(start_s, end_s, sorted labels)`` for each segment of a recording."""
    anns = list(annotations)
    return [
        (s, e, tuple(sorted({a.label for a in anns if overlaps_enough(a, s, e)})))
        for s, e in segment_bounds(duration_s, segment_s)
    ]


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        return path.read_text(encoding="latin-1")
    except OSError as exc:
        raise AnnotationError(f"{path}: cannot read ({exc.strerror or exc})") from None


def _write(path: Path, text: str) -> None:
    from modeltools.data.taxonomy import atomic_write_text

    atomic_write_text(path, text)
