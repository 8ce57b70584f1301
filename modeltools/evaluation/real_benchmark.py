"""The real-audio separate + classify benchmark (shared/docs/REAL-AUDIO.md, binding).

The question: *on real recordings, does running the classifier on the mix and on the separated
channels find more birds than the mix alone, without inventing birds?*

1. **Clips** (:func:`select_clips`): from the evaluation-only folders, every 3-s chunk of
   ``birdnet-v2.4_detections.csv`` with confidence >= 0.8, at most 4 per file (distinct species
   first, then the most confident); each clip is the 5 s starting 1 s before the chunk, clamped
   to the file; its label is the chunk's most confident species.
2. **Conditions** (:func:`build_examples`), 5 s at 48 kHz, peak-normalised: the clip plus real
   noise (the evaluation half of a noise file, RMS-based SNR +10, 0, -5, -10 dB); two clips of
   different species, the second 6 dB below the first; noise alone.
3. **Truth** (:func:`reference_truth`): the species BirdNET V2.4 gives >= 0.3 on the clean
   clip(s), plus the labelled species. Anything else detected is a false positive.
4. **Through the product** (:mod:`modeltools.evaluation.real_run`): the agent's own config,
   bundle loading, stages and channel combination.
5. **Scores** (:func:`score_mode`): recall of the labelled species, false positives per example
   and precision per condition and overall, at the default threshold and at *matched false
   alarms* (the lowest threshold whose false positives per example are <= mix-only's at the
   default threshold).

Everything here is numpy; the classifier runs are in :mod:`modeltools.evaluation.real_run`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from agent.detection.combine import rms
from modeltools.data.audio_io import decode_audio
from modeltools.data.real_split import (
    EVALUATION_FOLDERS,
    TRAINING_FOLDERS,
    evaluation_span,
    manifest_duration_s,
    training_span,
)
from modeltools.evaluation.real import BIRDNET_CSV, read_birdnet
from modeltools.evaluation.separate_classify import EvaluationError

BENCH_RATE_HZ = 48000
EXAMPLE_S = 5.0
EXAMPLE_SAMPLES = int(EXAMPLE_S * BENCH_RATE_HZ)
CLIP_MIN_CONFIDENCE = 0.8
CLIPS_PER_FILE = 4
CLIP_LEAD_S = 1.0  # a clip starts 1 s before its 3-s chunk
TRUTH_MIN_CONFIDENCE = 0.3
SNRS_DB = (10.0, 0.0, -5.0, -10.0)
PAIR_GAP_DB = 6.0
NOISE_ALONE_PER_FILE = 2
PEAK = 0.9
# The noise of the protocol (rain, wind, city, crickets, waves, thunder, rain with voices);
# only the second half of each file is used here (the first half may train).
NOISE_FILES = (
    ("rain", "freesound-cc0-ambience/rain.mp3"),
    ("wind", "freesound-cc0-ambience/wind.mp3"),
    ("city", "freesound-cc0-ambience/city.mp3"),
    ("crickets", "opengameart-cc0-ambience/crickets_jaggedstone.mp3"),
    ("waves", "freesound-cc0-ambience/waves.mp3"),
    ("thunder", "freesound-cc0-ambience/thunder.mp3"),
    ("rain+voices", "freesound-pd-rain-and-librivox/LluviasDeMayo.flac"),
)


@dataclass(frozen=True)
class Clip:
    rel: str  # path relative to the shared-data root
    chunk_start_s: float
    start_s: float  # the 5-s clip's start in the recording
    scientific_name: str
    common_name: str
    confidence: float


@dataclass
class Example:
    """One benchmark example: 5 s at 48 kHz and the true components it is the sum of."""

    id: str
    condition: str  # "snr+10", "snr+0", "snr-5", "snr-10", "pair", "noise"
    audio: np.ndarray  # (EXAMPLE_SAMPLES,) float32, peak-normalised
    components: list[np.ndarray]  # each (EXAMPLE_SAMPLES,), scaled like audio; sum == audio
    clean: list[np.ndarray]  # the clean clip(s) for the reference truth (unscaled)
    labelled: tuple[str, ...]  # scientific names the example is built to contain
    sources: tuple[str, ...]  # what went in (for the report)
    truth: set[str] = field(default_factory=set)  # lower-case scientific names


def condition_name(snr_db: float) -> str:
    return f"snr{snr_db:+.0f}"


CONDITIONS = (*(condition_name(s) for s in SNRS_DB), "pair", "noise")


SPLITS = ("evaluation", "calibration")


def _folders(split: str) -> tuple[str, ...]:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    return EVALUATION_FOLDERS if split == "evaluation" else TRAINING_FOLDERS


def select_clips(shared: str | Path, split: str = "evaluation") -> list[Clip]:
    """The protocol's clips, in a fixed order (folder, file, time).

    ``split="evaluation"``: the benchmark (evaluation-only folders). ``"calibration"``: the
    same recipe on the training-allowed folders, for choosing a combination policy without
    ever looking at the benchmark. Non-bird classes (BirdNET names them with identical
    scientific and common names: "Dog", "Engine") make no clip.
    """
    shared = Path(shared)
    clips: list[Clip] = []
    for folder in _folders(split):
        best: dict[tuple[str, float], tuple[str, str, float]] = {}
        csv_path = shared / folder / BIRDNET_CSV
        rows = read_birdnet(csv_path) if csv_path.is_file() else []
        for d in rows:
            file, start, sci, common, conf = (
                d.file,
                d.start_s,
                d.scientific_name,
                d.common_name,
                d.confidence,
            )
            if conf < CLIP_MIN_CONFIDENCE or not sci or sci == common:
                continue
            key = (file, start)
            if key not in best or conf > best[key][2]:
                best[key] = (sci, common, conf)
        by_file: dict[str, list[tuple[float, str, str, float]]] = {}
        for (file, start), (sci, common, conf) in best.items():
            by_file.setdefault(file, []).append((start, sci, common, conf))
        for file in sorted(by_file):
            rel = f"{folder}/{file}"
            duration_s = manifest_duration_s(rel, [shared])
            if duration_s is None:
                raise EvaluationError(
                    f"{shared}/{rel}: listed in {BIRDNET_CSV} but not in MANIFEST"
                )
            # Distinct species first (most confident chunk of each), then the most confident.
            ranked = sorted(by_file[file], key=lambda c: (-c[3], c[0]))
            picked: list[tuple[float, str, str, float]] = []
            for c in ranked:
                if c[1] not in {p[1] for p in picked}:
                    picked.append(c)
            picked += [c for c in ranked if c not in picked]
            for start, sci, common, conf in sorted(picked[:CLIPS_PER_FILE]):
                clip_start = min(max(start - CLIP_LEAD_S, 0.0), max(duration_s - EXAMPLE_S, 0.0))
                clips.append(Clip(rel, start, clip_start, sci, common, conf))
    if not clips:
        raise EvaluationError(
            f"{shared}: no BirdNET chunk >= {CLIP_MIN_CONFIDENCE} in {_folders(split)}"
        )
    return clips


def _fit(x: np.ndarray, n: int) -> np.ndarray:
    """Exactly ``n`` samples: cut, or loop a short piece end to end."""
    if x.shape[0] >= n:
        return x[:n]
    reps = int(np.ceil(n / max(x.shape[0], 1)))
    return np.tile(x, reps)[:n]


class _Audio:
    """Decoded shared files at the benchmark rate, decoded once each."""

    def __init__(self, shared: Path) -> None:
        self.shared = shared
        self._cache: dict[str, np.ndarray] = {}

    def get(self, rel: str) -> np.ndarray:
        if rel not in self._cache:
            self._cache[rel] = decode_audio(self.shared / rel, BENCH_RATE_HZ).samples.astype(
                np.float32
            )
        return self._cache[rel]

    def clip(self, c: Clip) -> np.ndarray:
        x = self.get(c.rel)
        start = round(c.start_s * BENCH_RATE_HZ)
        out = np.zeros(EXAMPLE_SAMPLES, np.float32)
        piece = x[start : start + EXAMPLE_SAMPLES]
        out[: piece.shape[0]] = piece
        return out

    def noise_half(self, rel: str, split: str = "evaluation") -> np.ndarray:
        """The half of a noise file the split may use: the second for evaluation, the first
        (the training span) for calibration."""
        x = self.get(rel)
        duration = x.shape[0] / BENCH_RATE_HZ
        if split == "evaluation":
            a, b = evaluation_span(rel, duration)
        else:
            a, b = training_span(self.shared / rel, duration, [self.shared], what="calibration")
        return x[round(a * BENCH_RATE_HZ) : round(b * BENCH_RATE_HZ)]


def _noise_segment(half: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    if half.shape[0] <= EXAMPLE_SAMPLES:
        return _fit(half, EXAMPLE_SAMPLES).astype(np.float32)
    start = int(rng.integers(0, half.shape[0] - EXAMPLE_SAMPLES + 1))
    return half[start : start + EXAMPLE_SAMPLES].astype(np.float32)


def _normalised(
    ex_id: str,
    condition: str,
    parts: list[np.ndarray],
    clean: list[np.ndarray],
    labelled: tuple[str, ...],
    sources: tuple[str, ...],
) -> Example:
    mix = np.sum(parts, axis=0)
    peak = float(np.max(np.abs(mix)))
    gain = PEAK / peak if peak > 0 else 1.0
    return Example(
        ex_id,
        condition,
        (mix * gain).astype(np.float32),
        [(p * gain).astype(np.float32) for p in parts],
        clean,
        labelled,
        sources,
    )


def build_examples(
    shared: str | Path, seed: int = 0, split: str = "evaluation"
) -> tuple[list[Clip], list[Example]]:
    """The protocol's examples (deterministic for a seed): clip + noise at each SNR, pairs of
    clips of different species, noise alone."""
    shared = Path(shared)
    clips = select_clips(shared, split)
    audio = _Audio(shared)
    rng = np.random.default_rng(seed)
    halves = {name: audio.noise_half(rel, split) for name, rel in NOISE_FILES}
    half = "2nd half" if split == "evaluation" else "1st half"
    names = [name for name, _ in NOISE_FILES]
    examples: list[Example] = []
    clean = [audio.clip(c) for c in clips]
    for i, (c, x) in enumerate(zip(clips, clean, strict=True)):
        for k, snr in enumerate(SNRS_DB):
            kind = names[(i + k) % len(names)]
            noise = _noise_segment(halves[kind], rng)
            rn = float(rms(noise))
            noise = noise * (float(rms(x)) / rn / 10 ** (snr / 20)) if rn > 0 else noise
            cond = condition_name(snr)
            examples.append(
                _normalised(
                    f"{i:02d}-{cond}",
                    cond,
                    [x, noise.astype(np.float32)],
                    [x],
                    (c.scientific_name,),
                    (f"{c.rel}@{c.start_s:.1f}s", f"{kind} ({half})"),
                )
            )
    for i, c in enumerate(clips):
        # the next clip (cyclically) of another species, 6 dB below
        others = [
            j
            for j in range(1, len(clips))
            if clips[(i + j) % len(clips)].scientific_name != c.scientific_name
        ]
        if not others:
            continue
        j = (i + others[0]) % len(clips)
        a, b = clean[i], clean[j]
        rb = float(rms(b))
        b2 = b * (float(rms(a)) / rb / 10 ** (PAIR_GAP_DB / 20)) if rb > 0 else b
        examples.append(
            _normalised(
                f"{i:02d}-pair",
                "pair",
                [a, b2.astype(np.float32)],
                [a, b],
                (c.scientific_name, clips[j].scientific_name),
                (f"{c.rel}@{c.start_s:.1f}s", f"{clips[j].rel}@{clips[j].start_s:.1f}s -6 dB"),
            )
        )
    for name in names:
        for k in range(NOISE_ALONE_PER_FILE):
            noise = _noise_segment(halves[name], rng)
            examples.append(
                _normalised(f"{name}-{k}-noise", "noise", [noise], [], (), (f"{name} ({half})",))
            )
    return clips, examples


# ---------------------------------------------------------------------------------------------
# Scoring


@dataclass(frozen=True)
class ScoreTable:
    """One mode's confidences: ``scores[e, c]`` for example ``e`` and species column ``c``."""

    mode: str
    scores: np.ndarray  # (E, C) float32 confidences (sigmoid of the combined logits)
    winners: np.ndarray  # (E, C) int: the channel that won (0 = mix)


def truth_matrix(
    examples: Sequence[Example], species: Sequence[str]
) -> tuple[np.ndarray, np.ndarray]:
    """``(truth, labelled)`` boolean (E, C) over lower-case scientific names ``species``."""
    col = {s: j for j, s in enumerate(species)}
    truth = np.zeros((len(examples), len(species)), bool)
    labelled = np.zeros_like(truth)
    for e, ex in enumerate(examples):
        for s in ex.truth:
            if s in col:
                truth[e, col[s]] = True
        for s in ex.labelled:
            if s.lower() in col:
                labelled[e, col[s.lower()]] = True
    return truth | labelled, labelled


@dataclass(frozen=True)
class Operating:
    threshold: float
    recall: float
    fp_per_example: float
    precision: float | None
    detections: int


def operating_point(
    scores: np.ndarray, truth: np.ndarray, labelled: np.ndarray, threshold: float
) -> Operating:
    det = scores >= threshold
    tp = int(np.sum(det & truth))
    fp = int(np.sum(det & ~truth))
    n_lab = int(labelled.sum())
    return Operating(
        float(threshold),
        float(np.sum(det & labelled) / n_lab) if n_lab else float("nan"),
        fp / scores.shape[0] if scores.shape[0] else float("nan"),
        tp / (tp + fp) if tp + fp else None,
        tp + fp,
    )


def curve(
    scores: np.ndarray, truth: np.ndarray, labelled: np.ndarray, floor: float
) -> list[Operating]:
    """Recall / false positives per example at every distinct score >= ``floor`` (descending)."""
    values = np.unique(scores[scores >= floor])[::-1]
    return [operating_point(scores, truth, labelled, float(t)) for t in values]


def matched_threshold(
    scores: np.ndarray, truth: np.ndarray, labelled: np.ndarray, fp_budget: float, floor: float
) -> Operating:
    """The lowest threshold (>= ``floor``) with false positives per example <= ``fp_budget``."""
    e = scores.shape[0]
    flat = scores[scores >= floor]
    false = scores[(scores >= floor) & ~truth]
    if flat.size == 0:
        return operating_point(scores, truth, labelled, 1.0)
    values = np.unique(flat)  # ascending
    # false positives at threshold t = count(false >= t): non-increasing in t
    fp_at = false.size - np.searchsorted(np.sort(false), values, side="left")
    ok = np.nonzero(fp_at / e <= fp_budget + 1e-12)[0]
    t = float(values[ok[0]]) if ok.size else float(np.nextafter(values[-1], np.inf))
    return operating_point(scores, truth, labelled, t)


def score_mode(
    table: ScoreTable,
    examples: Sequence[Example],
    truth: np.ndarray,
    labelled: np.ndarray,
    threshold: float,
    reference: dict[str, float] | None,
    floor: float,
) -> dict:
    """Overall and per-condition figures of one mode. ``reference`` maps "all" and each
    condition to mix-only's false positives per example at ``threshold`` (None: this is
    mix-only, its own reference)."""
    conds = np.array([ex.condition for ex in examples])
    out: dict = {"mode": table.mode, "conditions": {}}
    for name in ("all", *CONDITIONS):
        rows = np.ones(len(examples), bool) if name == "all" else conds == name
        if not rows.any():
            continue
        s, t, lab = table.scores[rows], truth[rows], labelled[rows]
        at_default = operating_point(s, t, lab, threshold)
        budget = at_default.fp_per_example if reference is None else reference[name]
        matched = matched_threshold(s, t, lab, budget, floor)
        out["conditions"][name] = {
            "examples": int(rows.sum()),
            "labelled": int(lab.sum()),
            "default": at_default.__dict__,
            "matched": {**matched.__dict__, "fp_budget": budget},
        }
    return out
