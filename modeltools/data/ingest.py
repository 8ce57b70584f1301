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

Files with none of these are ingested as ``unlabelled`` (usable for separator training);
``--layout unlabelled`` ingests every file so, sidecars or not. With ``--taxonomy`` every label
must map to it (by code or scientific name); without, a taxonomy is derived from the labels
(genus from the scientific name; family/order unknown). Several source folders make one
dataset whose recording ids start with each folder's name.

The real audio of ``../shared/data`` obeys its split (:mod:`modeltools.data.real_split`,
shared/docs/REAL-AUDIO.md), recognised by location or by sha256 against its MANIFEST.csv: an
evaluation-only file is refused (one error, nothing written) unless it goes to the ``test``
split; a noise-folder file is cut to its first half (its second half in the ``test`` split).
``meta`` records ``shared`` (the file's path in the shared data) and ``span_s`` (the part kept).

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
from collections.abc import Sequence
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
from modeltools.data.noise import default_shared_data_dir
from modeltools.data.real_split import SharedFile, evaluation_span, identify
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


def _split_part(samples: Any, shared: SharedFile | None, split: str) -> tuple[Any, dict[str, Any]]:
    """The part of a shared file the split allows in ``split`` (all of any other file), and
    the meta keys saying which part it is."""
    if shared is None:
        return samples, {}
    duration_s = samples.shape[0] / SAMPLE_RATE_HZ
    if shared.role == "noise":
        span = evaluation_span(shared.rel, duration_s) if split == "test" else (0.0, duration_s / 2)
        samples = samples[round(span[0] * SAMPLE_RATE_HZ) : round(span[1] * SAMPLE_RATE_HZ)]
    else:
        span = (0.0, duration_s)
    return samples, {
        "shared": shared.rel,
        "shared_role": shared.role,
        "span_s": [round(span[0], 3), round(span[1], 3)],
        "source_duration_s": round(duration_s, 3),
    }


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
    d["real_split"] = "1"  # noise-folder files cut to a half (entries before kept them whole)
    return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


def _files(sources: list[Path], out: Path) -> dict[str, tuple[Path, Path]]:
    """{recording id: (source folder, file)}; ids are relative paths, prefixed by the folder's
    name when there are several folders."""
    found: dict[str, tuple[Path, Path]] = {}
    for src in sources:
        if not src.is_dir():
            raise IngestError(f"{src}: not a folder")
        for f in sorted(src.rglob("*")):
            if is_audio_file(f) and out.resolve() not in f.resolve().parents:
                rel = f.relative_to(src).as_posix()
                found[f"{src.name}/{rel}" if len(sources) > 1 else rel] = (src, f)
    return found


def _split_of(rel: str, opts: IngestOptions) -> str:
    if opts.split != "hash":
        return opts.split
    return hash_split(rel, opts.val_fraction, opts.test_fraction)


def _check_split(
    files: dict[str, tuple[Path, Path]], opts: IngestOptions, skips: SkipLog
) -> dict[str, tuple[str, SharedFile | None]]:
    """{id: (source sha256, shared file or None)}; refuses evaluation-only real audio bound for
    a training split before anything is written."""
    roots = [r for r in (default_shared_data_dir(),) if r is not None]
    out: dict[str, tuple[str, SharedFile | None]] = {}
    for rel, (_, path) in files.items():
        try:
            sha = sha256_file(path)
        except OSError as exc:
            skips.skip("unreadable audio", f"{path}: {exc.strerror or exc}")
            continue
        f = identify(path, roots, sha)
        split = _split_of(rel, opts)
        if f is not None and f.role == "evaluation" and split != "test":
            raise IngestError(
                f"{path}: {f.rel} is evaluation-only real audio ({f.folder}/ is held out for the "
                f"real-audio benchmark, shared/docs/REAL-AUDIO.md); refusing to ingest it into "
                f"the {split} split (an evaluation dataset takes --split test)"
            )
        out[rel] = (sha, f)
    return out


def ingest(
    src: str | Path | Sequence[str | Path], out: str | Path, opts: IngestOptions | None = None
) -> IngestResult:
    """Ingest every audio file under ``src`` (one folder, or several) into the dataset ``out``."""
    opts = opts or IngestOptions()
    sources = [Path(src)] if isinstance(src, (str, Path)) else [Path(s) for s in src]
    out = Path(out)
    if not sources:
        raise IngestError("no source folder given")
    if opts.layout not in LAYOUTS:
        raise IngestError(f"layout must be one of {LAYOUTS}, got {opts.layout!r}")
    if opts.split != "hash" and opts.split not in SPLITS:
        raise IngestError(f"split must be one of {SPLITS} or 'hash', got {opts.split!r}")
    if len(sources) > 1 and (opts.metadata or opts.layout in ("metadata", "species-folders")):
        raise IngestError("several source folders take --layout auto or unlabelled only")
    skips = SkipLog(log)
    tax = read_taxonomy(opts.taxonomy) if opts.taxonomy else None
    mapper = _Mapper(tax)
    files = _files(sources, out)
    names = ", ".join(str(s) for s in sources)
    if not files:
        raise IngestError(f"{names}: no audio files (.wav .flac .mp3 .ogg)")
    checked = _check_split(files, opts, skips)

    metadata: dict[str, _Labels] = {}
    meta_path = opts.metadata or (sources[0] / "metadata.csv")
    layout = opts.layout
    if layout in ("auto", "metadata") and meta_path.is_file() and len(sources) == 1:
        metadata = read_metadata(meta_path, skips)
        layout = "metadata"
    elif layout == "metadata":
        raise IngestError(f"{meta_path}: metadata CSV not found")
    for lab in metadata.values():
        mapper.learn(lab)
    by_name: dict[str, list[str]] = {}
    for rel in files:
        by_name.setdefault(Path(rel).name, []).append(rel)
    file_labels: dict[str, _Labels] = {}
    for fname, lab in metadata.items():
        rel = fname if fname in files else None
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
    for rel, (src_dir, path) in progress(files.items(), "ingest", total=len(files)):
        if rel not in checked:
            continue
        res = _ingest_one(
            _Source(src_dir, rel, path, *checked[rel]),
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
        raise IngestError(f"{names}: nothing ingested ({skips.summary(0, 'recordings')})")
    name = opts.name or "+".join(s.name for s in sources)
    source_info: str | list[str] = [str(s.resolve()) for s in sources]
    write_dataset(
        out,
        name,
        mapper.taxonomy(name),
        recordings,
        segments,
        info={
            "source": source_info[0] if len(sources) == 1 else source_info,
            "layout": layout,
            "skipped": dict(skips.counts),
        },
    )
    log.info("ingest: %s", skips.summary(len(recordings), "recordings"))
    return IngestResult(out, len(recordings), skips, recordings)


@dataclass(frozen=True)
class _Source:
    """One input file: its folder, recording id, path, sha256 and place in the shared data."""

    folder: Path
    rel: str
    path: Path
    sha256: str
    shared: SharedFile | None


def _ingest_one(
    source: _Source,
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
    src, rel, path = source.folder, source.rel, source.path
    kind, primary, background = opts.unlabelled_kind, (), ()
    meta: dict[str, Any] = {
        "source": path.relative_to(src).as_posix(),
        "source_dir": str(src.resolve()),
    }
    annotations = None
    sidecar = None if layout == "unlabelled" else _find_sidecar(path)
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
    split = _split_of(rel, opts)
    src_sha = source.sha256
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
        samples, shared = _split_part(audio.samples, source.shared, split)
        sha = write_wav(out / out_rel, samples, SAMPLE_RATE_HZ)
        num_samples = int(samples.shape[0])
        info = {
            "source_sha256": src_sha,
            "source_rate_hz": audio.source_rate_hz,
            "source_channels": audio.source_channels,
            "source_format": audio.source_format,
            **shared,
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
