"""Separate + classify evaluation: the paper's Table 2 (and, given the runs, Tables 1 and 3).

Every labelled 5-s segment goes through the *agent's own inference code*: the bundle's TFLite
separator (``Separator.separate``, with its per-window gain) once, the bundle's classifier
ensemble (``Classifier.classify``) once on the stacked ``[mix, sources]``, and
:func:`agent.detection.combine.combine_channels` for each of the three variants of Table 2:

* ``mix_only``: the logits of the unseparated mix;
* ``separated_only``: per class, the max over the separated channels;
* ``mix_and_separated``: per class, the max over the mix and the separated channels.

That is what ``agent.pipeline.Inference.run`` does for one mode; running the models once and
combining three ways gives the same logits as three agents with the three modes. The Keras
runs the bundle came from (optional) go through the same combination, so the report shows what
conversion cost. Scores are compared with the labels over the species both the model and the
data know (matched by species code or scientific name); the ``unknown`` class is never scored.

Metrics (:mod:`modeltools.evaluation.metrics`): CMAP over species with >= 5 positives, lwlrap,
d′ of the class-mean ROC-AUC and top-1 precision over labelled segments -- the definitions of
``modeltools.classifier.evaluate.species_metrics``, which the mix-only numbers reproduce.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from agent.audio.resample import resample
from agent.detection.combine import Mode, combine_channels
from agent.errors import ChorusError
from agent.models.manifest import MIX_ONLY_CODES, Label
from agent.models.stages import Classifier, LoadedModels
from modeltools.evaluation.metrics import cmap, dprime_summary, lwlrap, top1_precision

log = logging.getLogger(__name__)

MIN_POSITIVES = 5
VARIANTS: tuple[Mode, ...] = ("mix_only", "separated_only", "mix_and_separated")
VARIANT_TITLES: dict[str, str] = {
    "mix_only": "mix only",
    "separated_only": "separation only",
    "mix_and_separated": "mix + separation",
}
BUNDLE_SOURCE = "TFLite bundle"
KERAS_SOURCE = "Keras"
SET_RATE_HZ = 22050  # every EvalSet holds 5-s segments at this rate (the corpus rate)
SEGMENT_SAMPLES = 5 * SET_RATE_HZ


class EvaluationError(ChorusError):
    """The evaluation cannot run as asked (no shared species, bad runs...); exit status 2."""

    exit_code = 2


@dataclass(frozen=True)
class ClassRef:
    """One species of a label universe: matched to model labels by code or scientific name."""

    code: str
    scientific_name: str = ""
    common_name: str = ""


@dataclass
class EvalSet:
    """Labelled 5-s segments at 22.05 kHz; the audio is loaded on first use (real sets are only
    decoded when the bundle can score one of their species)."""

    name: str
    classes: tuple[ClassRef, ...]
    labels: np.ndarray  # (N, S) bool, one column per class
    segment_names: tuple[str, ...]
    loader: Callable[[], np.ndarray]
    label_kind: str = "strong"  # "strong" (annotations) or "weak" (pseudo-labels)
    label_source: str = ""
    notes: tuple[str, ...] = ()
    _audio: np.ndarray | None = field(default=None, repr=False)

    def audio(self) -> np.ndarray:
        """(N, 110250) float32 segments (cached)."""
        if self._audio is None:
            self._audio = np.asarray(self.loader(), dtype=np.float32)
        return self._audio


@dataclass
class ChannelLogits:
    """Per-channel logits of one model source on one set: (N, K, C); channel 0 is the mix."""

    source: str
    model: str
    classes: tuple[ClassRef, ...]
    mix_only_indices: tuple[int, ...]
    logits: np.ndarray

    @property
    def variants(self) -> tuple[Mode, ...]:
        return VARIANTS if self.logits.shape[1] > 1 else VARIANTS[:1]


def corpus_sets(
    data: Sequence[str | Path], split: str = "test", limit: int | None = None
) -> list[EvalSet]:
    """One set per corpus folder: its labelled ``split`` segments (``segment_set``), species
    columns in taxonomy order without ``unknown``."""
    from modeltools.classifier.evaluate import segment_set
    from modeltools.data.dataset import read_dataset

    out = []
    for folder in data:
        ds = read_dataset(folder)
        audio, labels = segment_set([ds], split, limit)
        codes = ds.taxonomy.label_spaces["species"].classes[1:]
        classes = tuple(
            ClassRef(c, ds.taxonomy[c].scientific_name, ds.taxonomy[c].common_name) for c in codes
        )
        names = _segment_names(ds, split, limit, len(audio))
        out.append(
            EvalSet(
                name=f"{ds.name} ({split})",
                classes=classes,
                labels=np.asarray(labels)[:, 1:] > 0.5,
                segment_names=names,
                loader=_constant(audio),
                label_source=f"{Path(folder).name}: annotated soundscape segments",
            )
        )
    return out


def _constant(audio: np.ndarray) -> Callable[[], np.ndarray]:
    return lambda: audio


def _segment_names(ds: Any, split: str, limit: int | None, n: int) -> tuple[str, ...]:
    """``recording @ start`` of each segment, selected as ``segment_set`` selects them."""
    recs = ds.by_id()
    items = [
        s
        for s in ds.segments
        if (r := recs.get(s.recording_id)) is not None and r.split == split and not s.unknown_labels
    ]
    if limit is not None and limit < len(items):
        idx = np.linspace(0, len(items) - 1, limit).round().astype(int)
        items = [items[i] for i in idx]
    if len(items) != n:  # pragma: no cover - segment_set changed its selection
        return tuple(f"segment {k}" for k in range(n))
    return tuple(f"{s.recording_id} @ {s.start_s:.1f} s" for s in items)


def match_classes(model: Sequence[ClassRef], data: Sequence[ClassRef]) -> list[tuple[int, int]]:
    """``(model column, data column)`` of every species both know, in model order.

    A model class matches a data class with the same code or, failing that, the same
    (case-insensitive) scientific name. Mix-only classes (``unknown``) never match.
    """
    by_code = {c.code: j for j, c in enumerate(data)}
    by_sci = {c.scientific_name.lower(): j for j, c in enumerate(data) if c.scientific_name}
    pairs, used = [], set()
    for i, c in enumerate(model):
        if c.code in MIX_ONLY_CODES:
            continue
        j = by_code.get(c.code)
        if j is None and c.scientific_name:
            j = by_sci.get(c.scientific_name.lower())
        if j is not None and j not in used:
            pairs.append((i, j))
            used.add(j)
    return pairs


def label_refs(labels: Sequence[Label]) -> tuple[ClassRef, ...]:
    return tuple(ClassRef(lab.species_code, lab.scientific_name, lab.common_name) for lab in labels)


def fit_window(audio: np.ndarray, sample_rate_hz: int, window_samples: int) -> np.ndarray:
    """Segments at 22.05 kHz -> the model's rate and window (resampled, zero-padded/cropped)."""
    if sample_rate_hz == SET_RATE_HZ and audio.shape[1] == window_samples:
        return audio
    out = np.zeros((audio.shape[0], window_samples), np.float32)
    for k, x in enumerate(audio):
        y = resample(x, SET_RATE_HZ, sample_rate_hz)[:window_samples]
        out[k, : len(y)] = y
    return out


# ---------------------------------------------------------------------------------------------
# Model sources


def bundle_logits(
    models: LoadedModels, audio: np.ndarray, progress: bool = False, desc: str = ""
) -> list[ChannelLogits]:
    """Per-channel ensemble logits of every bundle classifier, through the agent's stages."""
    x = fit_window(audio, models.sample_rate_hz, models.window_samples)
    sep = models.separator
    k = 1 + (sep.num_sources if sep is not None else 0)
    clfs = [c for c in models.classifiers if isinstance(c, Classifier)]
    out = [np.empty((len(x), k, len(c.labels)), np.float32) for c in clfs]
    for n, mix in enumerate(tqdm(x, desc=desc or BUNDLE_SOURCE, disable=not progress)):
        channels = mix[np.newaxis]
        if sep is not None:
            channels = np.concatenate([channels, sep.separate(mix)], axis=0)
        for c, clf in enumerate(clfs):
            out[c][n] = clf.classify(channels)
    m = models.bundle.manifest
    multi = len(clfs) > 1
    return [
        ChannelLogits(
            source=f"{BUNDLE_SOURCE}: {clf.name}" if multi else BUNDLE_SOURCE,
            model=f"{m.name} {m.version} ({clf.name}, {len(clf.members)} member(s))",
            classes=label_refs(clf.labels),
            mix_only_indices=clf.mix_only_indices,
            logits=logits,
        )
        for clf, logits in zip(clfs, out, strict=True)
    ]


@dataclass
class KerasModels:
    """The Keras runs: a classifier ensemble and optionally the separator."""

    members: list[Any]
    classes: tuple[ClassRef, ...]
    runs: list[Path]
    separator: Any | None = None
    separator_rate_hz: int = SET_RATE_HZ
    separator_sources: int = 0
    separator_run: Path | None = None
    input_peak: float | None = None

    @property
    def description(self) -> str:
        sep = f" + separator {self.separator_run.name}" if self.separator_run else ""
        return f"{len(self.runs)} member(s) {', '.join(r.name for r in self.runs)}{sep}"


def load_keras(
    classifier_runs: Sequence[str | Path],
    separator_run: str | Path | None = None,
    weights: str = "best",
    input_peak: float | None = None,
    known: Sequence[ClassRef] = (),
) -> KerasModels:
    """Load the Keras ensemble (and separator). ``known`` supplies names for the run's codes."""
    from modeltools.classifier.ensemble import load_member, member_dirs

    runs = member_dirs(classifier_runs)
    members, codes = [], None
    for run in runs:
        meta = json.loads((run / "run.json").read_text())
        these = tuple(meta.get("labels", {}).get("species", ()))
        if not these:
            raise EvaluationError(f"{run}: run.json has no species label list")
        if codes is not None and these != codes:
            raise EvaluationError(f"{run}: species labels differ from the other members'")
        codes = these
        members.append(load_member(run, weights)[0])
    names = {c.code: c for c in known}
    classes = tuple(names.get(c, ClassRef(c)) for c in codes or ())
    km = KerasModels(members, classes, runs, input_peak=input_peak)
    if separator_run is not None:
        from modeltools.separation.train import load_run

        km.separator, cfg, _ = load_run(separator_run)
        km.separator_rate_hz = cfg.sample_rate_hz
        km.separator_sources = cfg.num_sources
        km.separator_run = Path(separator_run)
    return km


def keras_channels(km: KerasModels, mix: np.ndarray) -> np.ndarray:
    """(B, N) segments -> (B, K, N) ``[mix, sources]``: the Keras separator with the bundle's
    per-window gain (as ``Separator.separate`` applies it), at its own rate."""
    from agent.models.stages import peak_scaled

    channels = mix[:, np.newaxis]
    model = km.separator
    if model is None:
        return channels

    def separate(x: np.ndarray) -> np.ndarray:
        return np.asarray(model(x, training=False))

    x = fit_window(mix, km.separator_rate_hz, _n_at(km.separator_rate_hz))
    est = peak_scaled(separate, x, km.input_peak)
    if km.separator_rate_hz != SET_RATE_HZ:
        est = np.stack([_to_set_rate(e, km.separator_rate_hz) for e in est])
    return np.concatenate([channels, est.astype(np.float32)], axis=1)


def keras_logits(
    km: KerasModels, audio: np.ndarray, batch: int = 4, progress: bool = False
) -> ChannelLogits:
    """Per-channel ensemble-mean logits of the Keras runs on :func:`keras_channels`."""
    from modeltools.classifier.ensemble import ensemble_logits
    from modeltools.classifier.evaluate import predict_logits

    k = 1 + (km.separator_sources if km.separator is not None else 0)
    out = np.empty((len(audio), k, len(km.classes)), np.float32)
    bar = tqdm(total=len(audio), desc=KERAS_SOURCE, disable=not progress)
    for start in range(0, len(audio), batch):
        channels = keras_channels(km, audio[start : start + batch])
        flat = channels.reshape(-1, channels.shape[-1])
        member = [predict_logits(m, flat)["species"] for m in km.members]
        out[start : start + len(channels)] = ensemble_logits(member).reshape(len(channels), k, -1)
        bar.update(len(channels))
    bar.close()
    mix_only = tuple(i for i, c in enumerate(km.classes) if c.code in MIX_ONLY_CODES)
    return ChannelLogits(KERAS_SOURCE, km.description, km.classes, mix_only, out)


def _n_at(rate_hz: int) -> int:
    return round(SEGMENT_SAMPLES * rate_hz / SET_RATE_HZ)


def _to_set_rate(channels: np.ndarray, rate_hz: int) -> np.ndarray:
    out = np.zeros((channels.shape[0], SEGMENT_SAMPLES), np.float32)
    for j, ch in enumerate(channels):
        y = resample(ch, rate_hz, SET_RATE_HZ)[:SEGMENT_SAMPLES]
        out[j, : len(y)] = y
    return out


# ---------------------------------------------------------------------------------------------
# Scoring


def combined_scores(ch: ChannelLogits, variant: Mode) -> np.ndarray:
    """(N, C) logits of one Table-2 variant: ``combine_channels`` on every segment."""
    return np.stack(
        [combine_channels(seg, variant, ch.mix_only_indices).logits for seg in ch.logits]
    )


def score(scores: np.ndarray, labels: np.ndarray, codes: Sequence[str]) -> dict[str, Any]:
    """The headline metrics and the per-species values of one (N, S) score matrix.

    lwlrap and top-1 rank the scored species against each other, so with a single scored
    species they would be 1 by construction: they are NaN (n/a) then.
    """
    ap_macro, ap = cmap(scores, labels, min_positives=MIN_POSITIVES)
    d = dprime_summary(scores, labels)
    positives = labels.sum(axis=0)
    ranked = labels.shape[1] >= 2
    return {
        "cmap": ap_macro,
        "cmap_classes": int(np.sum(~np.isnan(ap))),
        "lwlrap": lwlrap(scores, labels) if ranked else math.nan,
        "dprime": d["dprime_of_mean_auc"],
        "mean_auc": d["mean_auc"],
        "mean_dprime": d["mean_dprime"],
        "auc_classes": d["n_classes_scored"],
        "top1": top1_precision(scores, labels, labeled_only=True) if ranked else math.nan,
        "per_class": [
            {
                "code": code,
                "positives": int(positives[j]),
                "ap": float(ap[j]),
                "auc": float(d["auc_per_class"][j]),
                "dprime": float(d["dprime_per_class"][j]),
            }
            for j, code in enumerate(codes)
        ],
    }


def evaluate_set(
    es: EvalSet, sources: Sequence[ChannelLogits], model_classes: Sequence[ClassRef]
) -> dict[str, Any]:
    """The report entry of one set: what is scored, and each source x variant's metrics.

    ``model_classes`` decides which species are scored (the bundle's label table); a source
    that lacks one of them is scored on the species it has.
    """
    pairs = match_classes(model_classes, es.classes)
    scored = [es.classes[j] for _, j in pairs]
    matched = {j for _, j in pairs}
    entry: dict[str, Any] = {
        "name": es.name,
        "labels": es.label_kind,
        "label_source": es.label_source,
        "notes": list(es.notes),
        "segments": len(es.segment_names),
        "labelled_segments": int(es.labels.any(axis=1).sum()),
        "species": [c.code for c in es.classes],
        "scored_species": [c.code for c in scored],
        "unscored_species": [c.code for j, c in enumerate(es.classes) if j not in matched],
        "positives": {c.code: int(es.labels[:, j].sum()) for j, c in enumerate(es.classes)},
        "results": [],
    }
    if not pairs:
        entry["status"] = "not_scored"
        entry["message"] = no_overlap_message(model_classes, es)
        return entry
    entry["status"] = "scored"
    for ch in sources:
        cols = match_classes(ch.classes, scored)
        if not cols:
            continue
        model_idx = [i for i, _ in cols]
        y = es.labels[:, [pairs[j][1] for _, j in cols]]
        codes = [scored[j].code for _, j in cols]
        for variant in ch.variants:
            s = combined_scores(ch, variant)[:, model_idx]
            entry["results"].append(
                {
                    "source": ch.source,
                    "model": ch.model,
                    "variant": variant,
                    "variant_title": VARIANT_TITLES[variant],
                    **score(s, y, codes),
                }
            )
    return entry


def no_overlap_message(model_classes: Sequence[ClassRef], es: EvalSet) -> str:
    species = [c for c in model_classes if c.code not in MIX_ONLY_CODES]
    return (
        f"none of the bundle's {len(species)} species ({_few(c.code for c in species)}) occurs "
        f"in the labels of {es.name} ({len(es.classes)} species: "
        f"{_few(c.scientific_name or c.code for c in es.classes)}); nothing can be scored"
    )


def _few(names: Any, n: int = 6) -> str:
    items = list(names)
    return ", ".join(items[:n]) + (f", … ({len(items) - n} more)" if len(items) > n else "")


def check_overlap(model_classes: Sequence[ClassRef], es: EvalSet) -> None:
    """Refuse a corpus that shares no species with the bundle (one clear error line)."""
    if not match_classes(model_classes, es.classes):
        raise EvaluationError(no_overlap_message(model_classes, es))


# ---------------------------------------------------------------------------------------------
# Tables 1 and 3 (optional)


def separator_variants(
    runs: Sequence[str | Path], data: Sequence[str | Path], split: str, moms: int
) -> list[dict[str, Any]]:
    """Table 1: MoMi of each separator run at its own rate and at 16 kHz, with its setup."""
    from modeltools.separation.evaluate import evaluate_run
    from modeltools.separation.train import load_config

    rows = []
    for run in runs:
        cfg = load_config(Path(run))
        own = evaluate_run(run, list(data), split=split, num_examples=moms)
        at16 = (
            own
            if cfg.sample_rate_hz == 16000
            else evaluate_run(run, list(data), split=split, num_examples=moms, resample_hz=16000)
        )
        rows.append(
            {
                "run": str(run),
                "preset": cfg.name,
                "step": own["step"],
                "sample_rate_hz": cfg.sample_rate_hz,
                "basis_window_ms": 1000 * cfg.window / cfg.sample_rate_hz,
                "basis_hop_ms": 1000 * cfg.hop / cfg.sample_rate_hz,
                "num_sources": cfg.num_sources,
                "example_s": cfg.example_s,
                "moms": own["examples"],
                "momi_db": own["momi_db"],
                "momi_median_db": own["momi_median_db"],
                "momi_16k_db": at16["momi_db"],
            }
        )
    return rows


def classifier_ablations(
    runs: Sequence[str | Path],
    sets: Sequence[EvalSet],
    weights: str = "best",
    progress: bool = False,
) -> list[dict[str, Any]]:
    """Table 3: mix-only metrics of each classifier run (or member folder = one ensemble)."""
    from modeltools.classifier.presets import config_from_dict

    rows = []
    for run in runs:
        km = load_keras([run], weights=weights)
        cfg = config_from_dict(json.loads((km.runs[0] / "run.json").read_text())["config"])
        for es in sets:
            ch = keras_logits(km, es.audio(), progress=progress)
            entry = evaluate_set(es, [ch], km.classes)
            res = entry["results"][0] if entry["results"] else {}
            rows.append(
                {
                    "run": str(run),
                    "dataset": es.name,
                    "preset": cfg.name,
                    "members": len(km.runs),
                    "taxonomy_weight": cfg.taxonomy_weight,
                    "lowpass": cfg.lowpass,
                    "channel_norm": cfg.channel_norm,
                    **{k: res.get(k, math.nan) for k in ("cmap", "lwlrap", "dprime", "top1")},
                }
            )
    return rows


# ---------------------------------------------------------------------------------------------
# The whole evaluation


@dataclass
class Evaluation:
    """The report (JSON-ready ``result``) plus what the figures need."""

    result: dict[str, Any]
    sets: list[EvalSet]
    logits: dict[tuple[str, str], ChannelLogits]  # (set name, source) -> per-channel logits
    models: LoadedModels


def evaluate(
    bundle_dir: str | Path,
    corpus: Sequence[EvalSet],
    real: Sequence[EvalSet] = (),
    classifier_runs: Sequence[str | Path] = (),
    separator_run: str | Path | None = None,
    weights: str = "best",
    threads: int = 1,
    progress: bool = False,
) -> Evaluation:
    """Evaluate the bundle (and the Keras runs, if given) on every set, in the three variants.

    Every ``corpus`` set must share a species with the bundle (else :class:`EvaluationError`,
    before any inference); a ``real`` set that shares none is reported as not scored, and its
    audio is never decoded.
    """
    from agent.models.manifest import load_bundle
    from agent.models.stages import RuntimeOptions, load_models

    bundle = load_bundle(bundle_dir)
    m = bundle.manifest
    model_classes = _union(label_refs(c.labels) for c in m.classifiers)
    for es in corpus:
        check_overlap(model_classes, es)
    if separator_run is not None and not classifier_runs:
        raise EvaluationError("--separator (a Keras run) needs --classifier runs to score it")
    models = load_models(
        bundle, RuntimeOptions(num_threads=max(1, threads)), use_separator=m.separator is not None
    )
    keras = None
    if classifier_runs:
        peak = m.separator.input_peak if m.separator is not None else None
        keras = load_keras(classifier_runs, separator_run, weights, peak, model_classes)
    entries, logits = [], {}
    sets = [*corpus, *real]
    for es in sets:
        sources: list[ChannelLogits] = []
        if match_classes(model_classes, es.classes):
            sources = bundle_logits(models, es.audio(), progress, f"{BUNDLE_SOURCE}: {es.name}")
            if keras is not None:
                sources.append(keras_logits(keras, es.audio(), progress=progress))
        for ch in sources:
            logits[(es.name, ch.source)] = ch
        entries.append(evaluate_set(es, sources, model_classes))
        if entries[-1]["status"] == "not_scored":
            log.warning("%s: %s", es.name, entries[-1]["message"])
    result = {
        "format": "chorus-evaluation",
        "format_version": 1,
        "min_positives": MIN_POSITIVES,
        "bundle": _bundle_info(bundle),
        "keras": None
        if keras is None
        else {
            "classifier_runs": [str(r) for r in keras.runs],
            "separator_run": str(keras.separator_run) if keras.separator_run else None,
            "weights": weights,
            "input_peak": keras.input_peak,
        },
        "datasets": entries,
    }
    return Evaluation(result, list(sets), logits, models)


def _union(groups: Any) -> tuple[ClassRef, ...]:
    seen: dict[str, ClassRef] = {}
    for group in groups:
        for c in group:
            seen.setdefault(c.code, c)
    return tuple(seen.values())


def _bundle_info(bundle: Any) -> dict[str, Any]:
    m = bundle.manifest
    return {
        "path": str(bundle.path),
        "name": m.name,
        "version": m.version,
        "sample_rate_hz": m.sample_rate_hz,
        "window_samples": m.window_samples,
        "runtime": dict(m.runtime),
        "separator": None
        if m.separator is None
        else {"num_sources": m.separator.num_sources, "input_peak": m.separator.input_peak},
        "classifiers": [
            {"name": c.name, "members": len(c.members), "labels": len(c.labels)}
            for c in m.classifiers
        ],
    }
