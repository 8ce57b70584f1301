"""``chorus-models ingest``: real recordings -> a dataset folder (modeltools.data.dataset).

Labels come from one of:

* a **metadata CSV** (Xeno-Canto style; ``--metadata``, or ``metadata.csv`` in the folder):
  ``file`` plus ``species_code`` and/or ``scientific_name`` (or XC's ``gen``+``sp``), optional
  ``common_name``, ``background`` (``;``-separated codes or scientific names; XC's ``also``),
  ``rating`` (XC ``q``), ``licence`` (XC ``lic``) and anything else (kept in ``meta``);
* a **folder-per-species** layout (``--layout species-folders``): ``<code or name>/<file>``;
* **annotation sidecars** next to an audio file (``x.wav`` + ``x.txt`` / ``x.csv`` /
  ``x.selections.txt``; Raven, CSV or Audacity label track): the file becomes an annotated
  soundscape with 5-s strongly labelled segments.

Files with none of these are ingested as ``unlabelled`` (usable for separator training). With
``--taxonomy`` every label must map to it (by code or scientific name); without, a taxonomy is
derived from the labels (genus from the scientific name; family/order unknown).

Bad input -- unreadable, truncated or empty audio, unusable sample rates, unknown species,
broken annotation files, metadata rows without a file -- is skipped with one warning line each
and counted in the closing summary; it never stops the run and never yields a label that the
input did not give.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from agent.errors import ChorusError
from modeltools.data.annotations import (
    UNLABELLED,
    AnnotationError,
    segment_labels,
    sniff_annotations,
    write_csv_annotations,
)
from modeltools.data.audio_io import (
    SAMPLE_RATE_HZ,
    AudioDecodeError,
    decode_audio,
    is_audio_file,
    sha256_file,
    write_wav,
)
from modeltools.data.dataset import SPLITS, Recording, Segment, write_dataset
from modeltools.data.jobs import Journal, SkipLog, progress
from modeltools.data.splits import hash_split
from modeltools.data.taxonomy import Species, Taxonomy, genus_of, read_taxonomy

log = logging.getLogger(__name__)
LAYOUTS = ("auto", "metadata", "species-folders", "unlabelled")
SIDECAR_SUFFIXES = (".selections.txt", ".Table.1.selections.txt", ".txt", ".csv")
_ALIASES = {
    "file": ("file", "filename", "file-name", "file_name", "path"),
    "species_code": ("species_code", "code", "ebird_code", "primary_label"),
    "scientific_name": ("scientific_name", "sci_name", "species"),
    "common_name": ("common_name", "en", "english_name"),
    "background": ("background", "also", "secondary_labels", "background_species"),
    "rating": ("rating", "q", "quality"),
    "licence": ("licence", "license", "lic"),
}


class IngestError(ChorusError):
    exit_code = 2


@dataclass
class IngestOptions:
    layout: str = "auto"
    metadata: Path | None = None
    taxonomy: Path | None = None
    split: str = "train"  # a split name, or "hash" (by file path, with val/test fractions)
    val_fraction: float = 0.1
    test_fraction: float = 0.0
    unlabelled_kind: str = "unlabelled"  # or "noise"
    name: str = ""


@dataclass
class _Labels:
    """What the input says about one file (raw names, not yet mapped)."""

    primary: str = ""
    background: list[str] = field(default_factory=list)
    meta: dict[str, str] = field(default_factory=dict)
    common_name: str = ""
    code_given: bool = False


@dataclass
class IngestResult:
    root: Path
    written: int
    skips: SkipLog
    recordings: list[Recording]


def _norm(name: str) -> str:
    return name.strip().lower().replace(" ", "_")


def _slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", name.strip().lower()).strip("_")


def _split_names(value: str) -> list[str]:
    return [v.strip() for v in re.split(r"[;|]", value or "") if v.strip()]


def read_metadata(path: Path, skips: SkipLog) -> dict[str, _Labels]:
    """Metadata CSV -> {file (as written): labels}. Missing key columns raise IngestError."""
    try:
        with path.open(newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            header = {_norm(h): h for h in (reader.fieldnames or []) if h}
            rows = list(reader)
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise IngestError(f"{path}: cannot read metadata CSV: {exc}") from exc

    def col(key: str) -> str | None:
        return next((header[a] for a in _ALIASES[key] if a in header), None)

    file_col = col("file")
    code_col, sci_col = col("species_code"), col("scientific_name")
    gen_col, sp_col = header.get("gen"), header.get("sp")
    missing = []
    if file_col is None:
        missing.append("file")
    if code_col is None and sci_col is None and not (gen_col and sp_col):
        missing.append("species_code or scientific_name (or gen + sp)")
    if missing:
        raise IngestError(f"{path}: metadata CSV is missing column(s): {'; '.join(missing)}")
    used = {c for c in (file_col, code_col, sci_col, gen_col, sp_col) if c}
    out: dict[str, _Labels] = {}
    for line, row in enumerate(rows, start=2):
        fname = (row.get(file_col or "") or "").strip()
        if not fname:
            skips.skip("metadata row without file", f"{path}:{line}: empty file column")
            continue
        code = (row.get(code_col or "") or "").strip() if code_col else ""
        sci = (row.get(sci_col or "") or "").strip() if sci_col else ""
        if not sci and gen_col and sp_col:
            sci = f"{(row.get(gen_col) or '').strip()} {(row.get(sp_col) or '').strip()}".strip()
        lab = _Labels(primary=code or sci, code_given=bool(code))
        if code and sci:
            lab.meta["scientific_name"] = sci
        for key in ("common_name", "background", "rating", "licence"):
            c = col(key)
            if c:
                used.add(c)
                value = (row.get(c) or "").strip()
                if key == "background":
                    # XC's "also" may come as a JSON-ish list or comma-joined names.
                    value = value.strip("[]").replace("'", "").replace('"', "")
                    sep = ";" if ";" in value or "|" in value else ","
                    lab.background = [v.strip() for v in value.split(sep) if v.strip()]
                elif key == "common_name":
                    lab.common_name = value
                elif value:
                    lab.meta[key] = value
        lab.meta.update({k: (v or "").strip() for k, v in row.items() if k and k not in used})
        out[fname] = lab
    return out


def _find_sidecar(audio: Path) -> Path | None:
    stem = audio.with_suffix("")
    for suf in SIDECAR_SUFFIXES:
        cand = Path(str(stem) + suf)
        if cand.is_file() and cand != audio:
            return cand
    return None


class _Mapper:
    """Maps raw label strings to species codes (via a taxonomy, or building one)."""

    def __init__(self, taxonomy: Taxonomy | None) -> None:
        self.fixed = taxonomy
        self.built: dict[str, Species] = {}
        self.sci_to_code: dict[str, str] = {}

    def learn(self, lab: _Labels) -> None:
        """Remember code <-> scientific name pairs given by the metadata."""
        sci = lab.meta.get("scientific_name", "")
        if lab.code_given and sci:
            self.sci_to_code[sci.lower()] = lab.primary

    def map(self, raw: str, role: str, common: str = "", sci_hint: str = "") -> str | None:
        if self.fixed is not None:
            sp = self.fixed.lookup(raw)
            return sp.code if sp else None
        code = self.sci_to_code.get(raw.lower()) or (raw if " " not in raw else _slug(raw))
        sci = sci_hint or (raw if " " in raw else "")
        old = self.built.get(code)
        if (
            old is None
            or (role == "target" and old.role != "target")
            or (sci and not old.scientific_name)
        ):
            self.built[code] = Species(
                code=code,
                scientific_name=sci or (old.scientific_name if old else ""),
                common_name=common or (old.common_name if old else ""),
                genus=genus_of(sci) if sci else (old.genus if old else ""),
                role="target" if role == "target" or (old and old.role == "target") else "other",
            )
        return code

    def taxonomy(self, name: str) -> Taxonomy:
        if self.fixed is not None:
            return self.fixed
        # No labels at all (unlabelled or noise recordings only): an empty label table.
        built = sorted(self.built.values(), key=lambda s: s.code)
        return Taxonomy(built, name=name, allow_empty=True)


def _settings_key(opts: IngestOptions, tax: Taxonomy | None) -> str:
    d = {k: str(v) for k, v in opts.__dict__.items()}
    d["taxonomy_version"] = tax.version if tax else ""
    return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


def ingest(src: str | Path, out: str | Path, opts: IngestOptions | None = None) -> IngestResult:
    """Ingest every audio file under ``src`` into the dataset folder ``out``."""
    opts = opts or IngestOptions()
    src, out = Path(src), Path(out)
    if not src.is_dir():
        raise IngestError(f"{src}: not a folder")
    if opts.layout not in LAYOUTS:
        raise IngestError(f"layout must be one of {LAYOUTS}, got {opts.layout!r}")
    if opts.split != "hash" and opts.split not in SPLITS:
        raise IngestError(f"split must be one of {SPLITS} or 'hash', got {opts.split!r}")
    skips = SkipLog(log)
    tax = read_taxonomy(opts.taxonomy) if opts.taxonomy else None
    mapper = _Mapper(tax)
    files = sorted(
        f for f in src.rglob("*") if is_audio_file(f) and out.resolve() not in f.resolve().parents
    )
    if not files:
        raise IngestError(f"{src}: no audio files (.wav .flac .mp3 .ogg)")

    metadata: dict[str, _Labels] = {}
    meta_path = opts.metadata or (src / "metadata.csv")
    layout = opts.layout
    if layout in ("auto", "metadata") and meta_path.is_file():
        metadata = read_metadata(meta_path, skips)
        layout = "metadata"
    elif layout == "metadata":
        raise IngestError(f"{meta_path}: metadata CSV not found")
    for lab in metadata.values():
        mapper.learn(lab)
    by_rel = {f.relative_to(src).as_posix(): f for f in files}
    by_name: dict[str, list[str]] = {}
    for rel in by_rel:
        by_name.setdefault(Path(rel).name, []).append(rel)
    file_labels: dict[str, _Labels] = {}
    for fname, lab in metadata.items():
        rel = fname if fname in by_rel else None
        if rel is None and len(by_name.get(Path(fname).name, [])) == 1:
            rel = by_name[Path(fname).name][0]
        if rel is None:
            skips.skip("missing audio", f"{meta_path}: {fname}: listed but no such audio file")
            continue
        file_labels[rel] = lab

    journal = Journal(out / ".ingest.journal.jsonl")
    key_base = _settings_key(opts, tax)
    recordings: list[Recording] = []
    segments: list[Segment] = []
    for rel, path in progress(by_rel.items(), "ingest", total=len(by_rel)):
        res = _ingest_one(
            src,
            rel,
            path,
            out,
            opts,
            layout,
            file_labels.get(rel),
            mapper,
            skips,
            journal,
            key_base,
        )
        if res is not None:
            recordings.append(res[0])
            segments += res[1]
    if not recordings:
        raise IngestError(f"{src}: nothing ingested ({skips.summary(0, 'recordings')})")
    taxonomy = mapper.taxonomy(opts.name or src.name)
    write_dataset(
        out,
        opts.name or src.name,
        taxonomy,
        recordings,
        segments,
        info={"source": str(src.resolve()), "layout": layout, "skipped": dict(skips.counts)},
    )
    log.info("ingest: %s", skips.summary(len(recordings), "recordings"))
    return IngestResult(out, len(recordings), skips, recordings)


def _ingest_one(
    src: Path,
    rel: str,
    path: Path,
    out: Path,
    opts: IngestOptions,
    layout: str,
    lab: _Labels | None,
    mapper: _Mapper,
    skips: SkipLog,
    journal: Journal,
    key_base: str,
) -> tuple[Recording, list[Segment]] | None:
    """Labels, decode, write and describe one file; None if skipped."""
    kind, primary, background = opts.unlabelled_kind, (), ()
    meta: dict[str, Any] = {"source": rel}
    annotations = None
    sidecar = _find_sidecar(path)
    if layout == "species-folders" and "/" in rel:
        lab = _Labels(primary=rel.split("/")[0])
    if sidecar is not None and (lab is None or not lab.primary):
        try:
            annotations = sniff_annotations(sidecar)
        except AnnotationError as exc:
            skips.skip("bad annotation file", str(exc))
            return None
        kind = "soundscape"
        meta["annotation_file"] = sidecar.relative_to(src).as_posix()
    elif lab is not None:
        if lab.primary:
            code = mapper.map(
                lab.primary, "target", lab.common_name, lab.meta.get("scientific_name", "")
            )
            if code is None:
                skips.skip(
                    "unknown species", f"{rel}: species {lab.primary!r} is not in the taxonomy"
                )
                return None
            primary, kind = (code,), "focal"
        bg, unmapped = [], []
        for name in lab.background:
            code = mapper.map(name, "other")
            if code is None:
                unmapped.append(name)
                log.warning("%s: background species %r is not in the taxonomy (dropped)", rel, name)
            elif code not in primary and code not in bg:
                bg.append(code)
        background = tuple(bg)
        if unmapped:
            meta["unmapped_background"] = unmapped
        meta.update(lab.meta)
        if not primary and background:
            kind = "unlabelled"  # e.g. an XC "soundscape": weak presence info only
    split = (
        opts.split
        if opts.split != "hash"
        else hash_split(rel, opts.val_fraction, opts.test_fraction)
    )
    try:
        src_sha = sha256_file(path)
    except OSError as exc:
        skips.skip("unreadable audio", f"{path}: {exc.strerror or exc}")
        return None
    out_rel = "audio/" + str(Path(rel).with_suffix(".wav").as_posix())
    key = f"{rel}|{src_sha}|{key_base}"
    done = journal.get(key)
    if done is not None and (out / out_rel).is_file():
        num_samples, sha, info = done["num_samples"], done["sha256"], done["info"]
    else:
        try:
            audio = decode_audio(path, SAMPLE_RATE_HZ)
        except AudioDecodeError as exc:
            skips.skip("unreadable audio", str(exc))
            return None
        sha = write_wav(out / out_rel, audio.samples, SAMPLE_RATE_HZ)
        num_samples = int(audio.samples.shape[0])
        info = {
            "source_sha256": src_sha,
            "source_rate_hz": audio.source_rate_hz,
            "source_channels": audio.source_channels,
            "source_format": audio.source_format,
        }
        journal.add(key, {"num_samples": num_samples, "sha256": sha, "info": info})
    meta.update(info)
    segs: list[Segment] = []
    annotations_out: dict[str, str] = {}
    if annotations is not None:
        mapped, unknown = [], set()
        for a in annotations:
            code = None if a.label == UNLABELLED else mapper.map(a.label, "target")
            if code is None:
                unknown.add(a.label)
            mapped.append((a, code))
        for name in sorted(unknown):
            log.warning(
                "%s: annotation label %r is %s (segments marked)",
                rel,
                name,
                "empty" if name == UNLABELLED else "not in the taxonomy",
            )
        dur = num_samples / SAMPLE_RATE_HZ
        known = [replace(a, label=c) for a, c in mapped if c is not None]
        ann_rel = "annotations/" + Path(rel).with_suffix(".csv").as_posix()
        write_csv_annotations(out / ann_rel, known)
        annotations_out = {"csv": ann_rel}
        unk = [a for a, c in mapped if c is None]
        unk_segs = {(s, e): labels for s, e, labels in segment_labels(unk, dur)}
        for s, e, labels in segment_labels(known, dur):
            segs.append(Segment(f"{rel}", s, e, labels, unk_segs.get((s, e), ())))
    rec = Recording(
        id=rel,
        path=out_rel,
        split=split,
        kind=kind,
        num_samples=num_samples,
        sha256=sha,
        sample_rate_hz=SAMPLE_RATE_HZ,
        primary=primary,
        background=background,
        annotations=annotations_out,
        meta=meta,
    )
    return rec, segs
