"""``chorus-models synth``: write a complete synthetic corpus (a dataset folder).

Layout (see docs/data.md)::

    corpus.json                    generator settings (a re-run with other settings refuses)
    manifest.json / .csv           the dataset manifest (modeltools.data.dataset)
    segments.csv                   5-s strong labels of every soundscape
    taxonomy.csv, label_spaces.json
    windows.csv                    activity-detection windows of the focal recordings
    focal/<split>/<code>/<id>.wav  focal recordings (+ <id>.events.csv: the hidden truth)
    soundscapes/<split>/<id>.wav   annotated soundscapes (+ .selections.txt Raven, + .csv)
    noise/<pool>/<id>.wav          noise beds for augmentation (real ones resampled)
    README.md

Every item is generated from its own seed (modeltools.data.splits), written atomically and
journalled, so an interrupted run resumes and a finished one re-runs in seconds. Items are
built in worker processes; the result does not depend on the number of workers.
"""

from __future__ import annotations

import json
import logging
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from agent.errors import ChorusError
from modeltools.data.annotations import (
    Annotation,
    segment_labels,
    write_csv_annotations,
    write_raven,
)
from modeltools.data.audio_io import SAMPLE_RATE_HZ, write_wav
from modeltools.data.dataset import BIRDS_STEM, Recording, Segment, read_dataset, write_dataset
from modeltools.data.jobs import Journal, progress
from modeltools.data.noise import REAL_NOISE, NoiseBank, default_shared_data_dir
from modeltools.data.real_split import SPAN_MARKER
from modeltools.data.recordings import (
    FocalConfig,
    SoundscapeConfig,
    SynthRecording,
    make_focal,
    make_soundscape,
)
from modeltools.data.scene import Event
from modeltools.data.species import SyntheticWorld, make_world
from modeltools.data.splits import item_rng, noise_pool
from modeltools.data.taxonomy import atomic_write_text
from modeltools.data.windows import windows_for_dataset

log = logging.getLogger(__name__)
CORPUS_VERSION = 1
EVENT_COLUMNS = ("code", "kind", "role", "distance_m", "snr_db")


class CorpusError(ChorusError):
    exit_code = 2


@dataclass(frozen=True)
class CorpusConfig:
    seed: int = 0
    n_species: int = 24
    n_other: int = 6
    focal_per_species: dict[str, int] = field(default_factory=lambda: {"train": 12, "val": 3})
    focal_per_other: dict[str, int] = field(default_factory=lambda: {"train": 4, "val": 1})
    soundscapes: dict[str, int] = field(
        default_factory=lambda: {"train": 24, "val": 12, "test": 24}
    )
    noise_clips: dict[str, int] = field(default_factory=lambda: {"train": 12, "test": 6})
    noise_clip_s: float = 30.0
    focal: FocalConfig = field(default_factory=FocalConfig)
    soundscape: SoundscapeConfig = field(default_factory=SoundscapeConfig)
    sample_rate_hz: int = SAMPLE_RATE_HZ
    # Also write each soundscape's bird stem (<id>.birds.wav; the noise bed is the recording
    # minus it) for semi-supervised separator training. Off: corpora read as before.
    stems: bool = False

    def to_json(self) -> dict[str, Any]:
        out = {"corpus_version": CORPUS_VERSION, **asdict(self)}
        if not self.stems:  # corpora written before the option keep their settings file
            del out["stems"]
        return out


@dataclass(frozen=True)
class _Item:
    key: str  # also the recording id
    kind: str  # focal / soundscape / noise / real-noise
    split: str
    index: int
    code: str = ""
    source: str = ""  # real noise: path relative to shared/data


# Per-process state for workers (built once per process by _init_worker).
_STATE: dict[str, Any] = {}


def _init_worker(cfg: CorpusConfig, root: str, shared: str | None) -> None:
    _STATE.clear()
    _STATE.update(cfg=cfg, root=Path(root), shared=Path(shared) if shared else None, banks={})
    _STATE["world"] = make_world(cfg.n_species, cfg.n_other, cfg.seed)


def _bank(pool: str) -> NoiseBank:
    banks = _STATE["banks"]
    if pool not in banks:
        banks[pool] = NoiseBank(pool, _STATE["shared"], _STATE["cfg"].sample_rate_hz)
    return banks[pool]


def _annotations(events: list[Event]) -> list[Annotation]:
    return [
        Annotation(
            e.start_s,
            e.end_s,
            e.code,
            e.low_hz,
            e.high_hz,
            extra={
                "code": e.code,
                "kind": e.kind,
                "role": e.role,
                "distance_m": f"{e.distance_m:.1f}",
                "snr_db": f"{e.snr_db:.1f}",
            },
        )
        for e in events
    ]


def _build(item: _Item) -> dict[str, Any]:
    """Generate and write one item; return its manifest record (JSON-able)."""
    cfg: CorpusConfig = _STATE["cfg"]
    world: SyntheticWorld = _STATE["world"]
    root: Path = _STATE["root"]
    sr = cfg.sample_rate_hz
    meta: dict[str, Any] = {"generator": "modeltools.data.corpus", "seed": cfg.seed}
    annotations: dict[str, str] = {}
    primary: tuple[str, ...] = ()
    background: tuple[str, ...] = ()
    segments: list[dict[str, Any]] = []
    if item.kind == "real-noise":
        bank = _bank(noise_pool(item.split))
        src = next(r for r in bank.real if r.name == item.source)
        rel = f"noise/{item.split}/{item.key}.wav"
        audio = src.samples * 0.1  # unit RMS -> -20 dBFS RMS
        meta.update(source=item.source, pool=item.split, span_s=list(src.span_s))
        kind = "noise"
    elif item.kind == "noise":
        rng = item_rng(cfg.seed, item.split, "noise", item.index)
        n = int(cfg.noise_clip_s * sr)
        bed, names = NoiseBank(noise_pool(item.split), None, sr).bed(n, rng)  # synthetic only
        audio = bed * 0.1
        rel = f"noise/{item.split}/{item.key}.wav"
        meta.update(source="synthetic", layers=names, pool=item.split)
        kind = "noise"
    else:
        bank = _bank(noise_pool(item.split))
        if item.kind == "focal":
            rng = item_rng(cfg.seed, item.split, "focal", item.index)
            rec: SynthRecording = make_focal(world, item.code, rng, bank, cfg.focal, sr)
            rel = f"focal/{item.split}/{item.code}/{item.key}.wav"
            primary, background = rec.primary, rec.background
            annotations["events_csv"] = rel[:-4] + ".events.csv"
            write_csv_annotations(
                root / annotations["events_csv"], _annotations(rec.events), EVENT_COLUMNS
            )
            meta["truth"] = {
                "background_present": list(rec.background_present),
                "events": len(rec.events),
            }
        else:
            rng = item_rng(cfg.seed, item.split, "soundscape", item.index)
            rec = make_soundscape(world, rng, bank, cfg.soundscape, sr)
            rel = f"soundscapes/{item.split}/{item.key}.wav"
            anns = _annotations(rec.events)
            annotations["raven"] = rel[:-4] + ".selections.txt"
            annotations["csv"] = rel[:-4] + ".csv"
            write_raven(root / annotations["raven"], anns)
            write_csv_annotations(root / annotations["csv"], anns, EVENT_COLUMNS)
            if cfg.stems and rec.birds is not None:
                annotations[BIRDS_STEM] = rel[:-4] + ".birds.wav"
                write_wav(root / annotations[BIRDS_STEM], rec.birds, sr)
            dur = rec.audio.shape[0] / sr
            segments = [
                {"start_s": s, "end_s": e, "labels": list(labels)}
                for s, e, labels in segment_labels(anns, dur)
            ]
            meta["species_present"] = list(rec.species_present)
        audio = rec.audio
        meta.update(noise=rec.noise, noise_dbfs=round(rec.noise_dbfs, 2))
        kind = item.kind
    sha = write_wav(root / rel, audio, sr)
    return {
        "recording": Recording(
            id=item.key,
            path=rel,
            split=item.split,
            kind=kind,
            num_samples=int(audio.shape[0]),
            sha256=sha,
            sample_rate_hz=sr,
            primary=primary,
            background=background,
            annotations=annotations,
            meta=meta,
        ).to_json(),
        "segments": segments,
    }


def _plan(cfg: CorpusConfig, world: SyntheticWorld, shared: Path | None) -> list[_Item]:
    items: list[_Item] = []
    for split in ("train", "val", "test"):
        index = 0
        for sp in world.taxonomy.species:
            per = cfg.focal_per_species if sp.role == "target" else cfg.focal_per_other
            for k in range(per.get(split, 0)):
                items.append(
                    _Item(f"focal-{split}-{sp.code}-{k:03d}", "focal", split, index, sp.code)
                )
                index += 1
        for k in range(cfg.soundscapes.get(split, 0)):
            items.append(_Item(f"soundscape-{split}-{k:03d}", "soundscape", split, k))
    for pool in ("train", "test"):
        for k in range(cfg.noise_clips.get(pool, 0)):
            items.append(_Item(f"noise-{pool}-synthetic-{k:03d}", "noise", pool, k))
        if shared is not None:
            for rel, p in REAL_NOISE:
                if p == pool and (shared / rel).is_file():
                    stem = Path(rel).stem.replace("_", "-")
                    items.append(
                        _Item(f"noise-{pool}-real-{stem}", "real-noise", pool, 0, source=rel)
                    )
    return items


def write_corpus(
    out: str | Path,
    cfg: CorpusConfig = CorpusConfig(),
    shared_data_dir: Path | str | None = "auto",
    workers: int | None = None,
    activity: bool = True,
    overwrite: bool = False,
) -> Path:
    """Generate (or finish, or verify) the corpus in ``out``; return the folder."""
    root = Path(out)
    root.mkdir(parents=True, exist_ok=True)
    shared = default_shared_data_dir() if shared_data_dir == "auto" else shared_data_dir
    shared = Path(shared) if shared else None
    if shared is None and shared_data_dir == "auto":
        log.warning("no shared/data folder found: noise beds will be synthetic only")
    settings: dict[str, Any] = {**cfg.to_json(), "real_noise": shared is not None}
    if shared is not None:  # real noise beds cut to their training span (real_split)
        settings["real_noise_span"] = SPAN_MARKER
    cfg_path = root / "corpus.json"
    journal = Journal(root / ".synth.journal.jsonl")
    if cfg_path.exists():
        old = json.loads(cfg_path.read_text(encoding="utf-8"))
        if old != json.loads(json.dumps(settings)):
            if not overwrite:
                raise CorpusError(
                    f"{root} holds a corpus made with other settings; use another --out or "
                    "--overwrite"
                )
            journal.discard()
    elif journal.records:
        journal.discard()
    atomic_write_text(cfg_path, json.dumps(settings, indent=1) + "\n")

    world = make_world(cfg.n_species, cfg.n_other, cfg.seed)
    items = _plan(cfg, world, shared)
    todo = [it for it in items if not _done(journal, it, root)]
    log.info("synth: %d items, %d to generate", len(items), len(todo))
    workers = max(1, min(workers or os.cpu_count() or 1, len(todo) or 1))
    init_args = (cfg, str(root), str(shared) if shared else None)
    if workers == 1 or len(todo) <= 1:
        _init_worker(*init_args)
        results = ((it, _build(it)) for it in todo)
        for it, res in progress(results, "synth", total=len(todo)):
            journal.add(it.key, res)
    else:
        with ProcessPoolExecutor(workers, initializer=_init_worker, initargs=init_args) as ex:
            for it, res in progress(
                zip(todo, ex.map(_build, todo, chunksize=2), strict=True), "synth", len(todo)
            ):
                journal.add(it.key, res)

    recordings, segments = [], []
    for it in items:
        res = journal.get(it.key)
        if res is None:  # cannot happen: every planned item was generated above
            raise CorpusError(f"{root}: {it.key} was not generated")
        rec = Recording.from_json(res["recording"])
        recordings.append(rec)
        segments += [
            Segment(rec.id, s["start_s"], s["end_s"], tuple(s["labels"])) for s in res["segments"]
        ]
    write_dataset(
        root,
        f"synthetic-{cfg.seed}",
        world.taxonomy,
        recordings,
        segments,
        info={"generator": settings},
        sample_rate_hz=cfg.sample_rate_hz,
    )
    _write_readme(root, recordings, world)
    if activity:
        windows_for_dataset(read_dataset(root), kinds=("focal",))
    return root


def _done(journal: Journal, item: _Item, root: Path) -> bool:
    res = journal.get(item.key)
    if res is None:
        return False
    rec = res["recording"]
    files = [rec["path"], *rec.get("annotations", {}).values()]
    return all((root / f).is_file() for f in files)


def _write_readme(root: Path, recordings: list[Recording], world: SyntheticWorld) -> None:
    lines = [
        f"# Synthetic Chorus corpus (seed {world.seed})",
        "",
        "Generated by `chorus-models synth`; every species is invented (see taxonomy.csv).",
        "Format: docs/data.md in the Chorus repository. Audio: mono 16-bit WAV, 22050 Hz.",
        "",
        "| split | kind | files | hours |",
        "|---|---|---|---|",
    ]
    groups: dict[tuple[str, str], list[Recording]] = {}
    for r in recordings:
        groups.setdefault((r.split, r.kind), []).append(r)
    for (split, kind), recs in sorted(groups.items()):
        hours = sum(r.duration_s for r in recs) / 3600
        lines.append(f"| {split} | {kind} | {len(recs)} | {hours:.2f} |")
    atomic_write_text(root / "README.md", "\n".join(lines) + "\n")
