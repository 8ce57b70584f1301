"""The dataset manifest: what the separator and classifier training issues consume.

A dataset is a folder::

    manifest.json       format "chorus-dataset" 1: sample rate, taxonomy file + version, every
                        recording (path, split, kind, labels, sha256, ...) and every segment
    manifest.csv        the recordings as a flat table (one row each, lists joined by ';')
    segments.csv        5-s strongly labelled segments of annotated soundscapes
    taxonomy.csv        the label table (see modeltools.data.taxonomy), label_spaces.json
    windows.csv         training windows from activity detection (written by ``activity``)
    <audio files>       mono 16-bit WAV at 22050 Hz, paths relative to the folder

Recording kinds: ``focal`` (weak labels: ``primary`` + maybe-incomplete ``background``),
``soundscape`` (strong labels via annotation files and segments), ``noise`` (no birds of the
label space; for noise augmentation) and ``unlabelled`` (for separator training only).
An empty ``background`` list means "not given", never "none present".
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from agent.errors import ChorusError
from modeltools.data.taxonomy import Taxonomy, atomic_write_text, read_taxonomy

FORMAT = "chorus-dataset"
FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
KINDS = ("focal", "soundscape", "noise", "unlabelled")
SPLITS = ("train", "val", "test")
SEGMENT_S = 5.0


# Recording.annotations key of a soundscape's bird stem (the vocalisations alone at the
# recording's gain; the recording minus it is the noise bed), written by `synth --stems`.
BIRDS_STEM = "birds_stem"


class DatasetError(ChorusError):
    """A dataset folder or manifest is missing or invalid."""

    exit_code = 2


@dataclass(frozen=True)
class Recording:
    """One audio file of a dataset."""

    id: str
    path: str  # relative to the dataset root, POSIX separators
    split: str
    kind: str
    num_samples: int
    sha256: str
    sample_rate_hz: int = 22050
    primary: tuple[str, ...] = ()
    background: tuple[str, ...] = ()
    annotations: dict[str, str] = field(default_factory=dict)  # format -> relative path
    meta: dict[str, Any] = field(default_factory=dict)  # source, rating, licence, truth ...

    @property
    def duration_s(self) -> float:
        return self.num_samples / self.sample_rate_hz

    @property
    def labels(self) -> tuple[str, ...]:
        return self.primary + self.background

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["primary"], d["background"] = list(self.primary), list(self.background)
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Recording:
        return cls(
            id=str(d["id"]),
            path=str(d["path"]),
            split=str(d["split"]),
            kind=str(d["kind"]),
            num_samples=int(d["num_samples"]),
            sha256=str(d["sha256"]),
            sample_rate_hz=int(d.get("sample_rate_hz", 22050)),
            primary=tuple(d.get("primary", ())),
            background=tuple(d.get("background", ())),
            annotations=dict(d.get("annotations", {})),
            meta=dict(d.get("meta", {})),
        )


@dataclass(frozen=True)
class Segment:
    """A strongly labelled stretch (5 s by default) of a recording."""

    recording_id: str
    start_s: float
    end_s: float
    labels: tuple[str, ...]
    # Annotated labels that could not be mapped to the taxonomy: the segment's label set is
    # incomplete for them, so evaluation should ignore the segment or those classes.
    unknown_labels: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            "recording_id": self.recording_id,
            "start_s": round(self.start_s, 6),
            "end_s": round(self.end_s, 6),
            "labels": list(self.labels),
            "unknown_labels": list(self.unknown_labels),
        }


@dataclass
class Dataset:
    """A loaded dataset manifest."""

    root: Path
    name: str
    sample_rate_hz: int
    taxonomy: Taxonomy
    recordings: list[Recording]
    segments: list[Segment]
    info: dict[str, Any] = field(default_factory=dict)

    def path(self, rec: Recording) -> Path:
        return self.root / rec.path

    def select(
        self, split: str | None = None, kinds: Iterable[str] | None = None
    ) -> list[Recording]:
        """Recordings of ``split`` (any if None) whose kind is in ``kinds`` (any if None)."""
        ks = set(kinds) if kinds is not None else None
        return [
            r
            for r in self.recordings
            if (split is None or r.split == split) and (ks is None or r.kind in ks)
        ]

    def by_id(self) -> dict[str, Recording]:
        return {r.id: r for r in self.recordings}


def _join(values: Iterable[str]) -> str:
    return ";".join(values)


def write_dataset(
    root: str | Path,
    name: str,
    taxonomy: Taxonomy,
    recordings: Sequence[Recording],
    segments: Sequence[Segment] = (),
    info: dict[str, Any] | None = None,
    sample_rate_hz: int = 22050,
) -> Path:
    """Write manifest.json/.csv, segments.csv, taxonomy.csv and label_spaces.json."""
    root = Path(root)
    ids = [r.id for r in recordings]
    if len(set(ids)) != len(ids):
        raise DatasetError(f"{root}: duplicate recording ids in the manifest")
    for r in recordings:
        if r.kind not in KINDS:
            raise DatasetError(f"{root}: recording {r.id}: kind {r.kind!r} not in {KINDS}")
    tax_csv, _ = taxonomy.write(root)
    data = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "name": name,
        "created_utc": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "sample_rate_hz": sample_rate_hz,
        "taxonomy": {"file": tax_csv.name, "version": taxonomy.version},
        "label_spaces": "label_spaces.json",
        "segment_s": SEGMENT_S,
        "info": info or {},
        "recordings": [r.to_json() for r in recordings],
        "segments": [s.to_json() for s in segments],
    }
    atomic_write_text(root / MANIFEST_NAME, json.dumps(data, indent=1) + "\n")
    atomic_write_text(root / "manifest.csv", recordings_csv(recordings))
    atomic_write_text(root / "segments.csv", segments_csv(segments, {r.id: r for r in recordings}))
    return root / MANIFEST_NAME


def recordings_csv(recordings: Sequence[Recording]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(
        [
            "id",
            "path",
            "split",
            "kind",
            "duration_s",
            "sample_rate_hz",
            "primary",
            "background",
            "sha256",
        ]
    )
    for r in recordings:
        w.writerow(
            [
                r.id,
                r.path,
                r.split,
                r.kind,
                f"{r.duration_s:.3f}",
                r.sample_rate_hz,
                _join(r.primary),
                _join(r.background),
                r.sha256,
            ]
        )
    return buf.getvalue()


def segments_csv(segments: Sequence[Segment], recs: dict[str, Recording]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["recording_id", "path", "split", "start_s", "end_s", "labels", "unknown_labels"])
    for s in segments:
        r = recs.get(s.recording_id)
        w.writerow(
            [
                s.recording_id,
                r.path if r else "",
                r.split if r else "",
                f"{s.start_s:.3f}",
                f"{s.end_s:.3f}",
                _join(s.labels),
                _join(s.unknown_labels),
            ]
        )
    return buf.getvalue()


def read_dataset(root: str | Path) -> Dataset:
    """Load and check a dataset folder (manifest, taxonomy version, label codes)."""
    root = Path(root)
    mpath = root / MANIFEST_NAME
    try:
        data = json.loads(mpath.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DatasetError(f"{root}: no {MANIFEST_NAME} (not a chorus dataset)") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DatasetError(f"{mpath}: not valid JSON: {exc}") from exc
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise DatasetError(f"{mpath}: not a {FORMAT} manifest")
    if data.get("format_version") != FORMAT_VERSION:
        raise DatasetError(f"{mpath}: format_version {data.get('format_version')} unsupported")
    try:
        tax_info = data["taxonomy"]
        taxonomy = read_taxonomy(root / tax_info["file"], allow_empty=True)
        recordings = [Recording.from_json(r) for r in data["recordings"]]
        segments = [
            Segment(
                str(s["recording_id"]),
                float(s["start_s"]),
                float(s["end_s"]),
                tuple(s["labels"]),
                tuple(s.get("unknown_labels", ())),
            )
            for s in data.get("segments", [])
        ]
        sample_rate_hz = int(data["sample_rate_hz"])
    except (KeyError, TypeError, ValueError) as exc:
        raise DatasetError(f"{mpath}: malformed manifest ({exc!r})") from exc
    if taxonomy.version != tax_info.get("version"):
        raise DatasetError(
            f"{mpath}: taxonomy.csv has version {taxonomy.version}, the manifest was written "
            f"with {tax_info.get('version')} (edited after the fact?)"
        )
    for r in recordings:
        bad = [c for c in r.labels if c not in taxonomy]
        if bad:
            raise DatasetError(f"{mpath}: recording {r.id}: codes not in taxonomy: {bad}")
    ids = {r.id for r in recordings}
    for seg in segments:
        bad = [c for c in seg.labels if c not in taxonomy]
        if bad or seg.recording_id not in ids:
            raise DatasetError(
                f"{mpath}: segment {seg.recording_id}@{seg.start_s}: unknown recording or "
                f"codes not in taxonomy: {bad}"
            )
    return Dataset(
        root=root,
        name=str(data.get("name", root.name)),
        sample_rate_hz=sample_rate_hz,
        taxonomy=taxonomy,
        recordings=recordings,
        segments=segments,
        info=dict(data.get("info", {})),
    )
