"""Training examples as pure functions of (seed, index) -- the numpy side of the pipelines.

:class:`ClassifierExamples` turns activity windows of labelled recordings into augmented 5-s
classifier examples with species/genus/family/order multi-hot labels and loss masks;
:class:`SeparatorExamples` turns unlabelled windows into MixIT mixtures of mixtures. Example
``i`` of epoch ``e`` is built from ``SeedSequence([seed, split, stream, i])`` and the epoch's
window permutation, so results do not depend on threads, workers or the order of requests.
:mod:`modeltools.data.pipeline` wraps these in tf.data; nothing here imports TensorFlow.

Labels of a window come from its recording: ``primary`` positive at every head (an out-of-set
species carries only its genus/family/order; with ``mark_unknown`` it also sets the species
head's ``unknown`` class); listed
``background`` species are *masked* (mask 0: maybe audible in this window, maybe not) unless
positive anyway; a head whose name is unknown for the primary (empty family, say) is masked
entirely. Noise-only examples clear every label and count every class.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from modeltools.augment.waveform import (
    AugmentConfig,
    Example,
    augment_classifier_example,
    make_mom,
    peak_normalize,
    random_crop,
)
from modeltools.data.activity import PAPER_INTERVAL_S
from modeltools.data.audio_io import read_segment
from modeltools.data.dataset import BIRDS_STEM, Dataset, DatasetError
from modeltools.data.noise import synthetic_noise
from modeltools.data.splits import noise_pool, seed_words
from modeltools.data.taxonomy import HEADS, Taxonomy
from modeltools.data.windows import WINDOWS_NAME, read_windows_csv
from modeltools.separation.presets import MOM_LEVELS, WINDOW_KINDS

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class WindowRef:
    """A window of a recording file with the recording's weak labels."""

    path: Path
    start: int
    end: int
    primary: tuple[str, ...] = ()
    background: tuple[str, ...] = ()
    stem: Path | None = None  # the recording's bird stem (BIRDS_STEM), same samples as path


def _check_taxonomies(datasets: Sequence[Dataset]) -> Taxonomy:
    if not datasets:
        raise DatasetError("no datasets given")
    versions = {d.taxonomy.version for d in datasets}
    if len(versions) > 1:
        raise DatasetError(f"datasets use different taxonomies ({sorted(versions)}); merge them")
    return datasets[0].taxonomy


def labelled_windows(
    datasets: Sequence[Dataset], split: str, include_other: bool = True
) -> list[WindowRef]:
    """Activity windows (``windows.csv``) of focal recordings of ``split`` with a primary."""
    out = []
    for ds in datasets:
        path = ds.root / WINDOWS_NAME
        if not path.is_file():
            raise DatasetError(f"{ds.root}: no {WINDOWS_NAME}; run `chorus-models activity` first")
        recs = ds.by_id()
        for w in read_windows_csv(path):
            rec = recs.get(w.recording_id)
            if rec is None or rec.split != split or not rec.primary:
                continue
            if not include_other and ds.taxonomy[rec.primary[0]].role != "target":
                continue
            out.append(
                WindowRef(ds.path(rec), w.start_sample, w.end_sample, rec.primary, rec.background)
            )
    return out


def unlabelled_windows(
    datasets: Sequence[Dataset],
    split: str,
    window_s: float = PAPER_INTERVAL_S,
    kinds: Sequence[str] = WINDOW_KINDS,
) -> list[WindowRef]:
    """Separator windows of the recordings of ``kinds``: their activity windows (windows.csv;
    focal recordings in a synthetic corpus) plus soundscape/unlabelled recordings tiled."""
    bad = sorted(set(kinds) - set(WINDOW_KINDS))
    if bad or not kinds:
        raise DatasetError(
            f"window kinds must be among {WINDOW_KINDS}, got {', '.join(bad) or '(none)'}"
        )
    out = []
    for ds in datasets:
        recs = ds.by_id()
        path = ds.root / WINDOWS_NAME
        if path.is_file():
            for w in read_windows_csv(path):
                rec = recs.get(w.recording_id)
                if rec is not None and rec.split == split and rec.kind in kinds:
                    out.append(WindowRef(ds.path(rec), w.start_sample, w.end_sample))
        n = int(window_s * ds.sample_rate_hz)
        tiled = tuple(k for k in ("soundscape", "unlabelled") if k in kinds)
        for rec in ds.select(split=split, kinds=tiled) if tiled else ():
            starts = list(range(0, max(rec.num_samples - n, 0) + 1, n))
            if rec.num_samples - (starts[-1] + n) >= ds.sample_rate_hz:  # >= 1 s left over
                starts.append(rec.num_samples - n)  # one more window, flush with the end
            stem = rec.annotations.get(BIRDS_STEM)
            out += [
                WindowRef(
                    ds.path(rec),
                    s,
                    min(s + n, rec.num_samples),
                    stem=ds.root / stem if stem else None,
                )
                for s in starts
            ]
    return out


class _NoiseSource:
    """Random noise segments from the dataset's noise recordings (synthetic pink if none)."""

    def __init__(self, datasets: Sequence[Dataset], split: str) -> None:
        pool = noise_pool(split)
        self.files = [
            (ds.path(r), r.num_samples)
            for ds in datasets
            for r in ds.recordings
            if r.kind == "noise" and r.split == pool
        ]
        if not self.files:
            log.warning("no noise recordings for split %s: using synthetic pink noise", split)

    def __call__(self, rng: np.random.Generator, n: int) -> np.ndarray:
        if not self.files:
            return synthetic_noise("pink", n, rng).astype(np.float32)
        path, length = self.files[int(rng.integers(len(self.files)))]
        if length >= n:
            start = int(rng.integers(0, length - n + 1))
            return read_segment(path, start, start + n)
        return np.resize(read_segment(path, 0, length), n)  # loop a short file


class _EpochOrder:
    """Per-epoch permutations of ``n`` items, cached (thread-safe)."""

    def __init__(self, n: int, words: tuple[int, ...]) -> None:
        self.n, self.words = n, words
        self._cache: dict[int, np.ndarray] = {}
        self._lock = threading.Lock()

    def item(self, index: int) -> int:
        epoch, pos = divmod(int(index), self.n)
        with self._lock:
            perm = self._cache.get(epoch)
            if perm is None:
                rng = np.random.default_rng(np.random.SeedSequence([*self.words, epoch]))
                perm = rng.permutation(self.n)
                if len(self._cache) > 4:
                    self._cache.clear()
                self._cache[epoch] = perm
        return int(perm[pos])


class ClassifierExamples:
    """Augmented, labelled 5-s classifier examples from labelled activity windows."""

    def __init__(
        self,
        datasets: Sequence[Dataset],
        split: str = "train",
        cfg: AugmentConfig | None = None,
        seed: int = 0,
        include_other: bool = True,
        mark_unknown: bool = False,
        windows: Sequence[WindowRef] | None = None,
    ) -> None:
        self.taxonomy = _check_taxonomies(datasets)
        self.cfg = cfg or AugmentConfig()
        self.split, self.seed, self.mark_unknown = split, seed, mark_unknown
        self.windows = (
            list(windows)
            if windows is not None
            else labelled_windows(datasets, split, include_other)
        )
        if not self.windows:
            raise DatasetError(f"no labelled windows for split {split!r}")
        self.heads = {h: len(self.taxonomy.label_spaces[h]) for h in HEADS}
        self.noise = _NoiseSource(datasets, split)
        self._order = _EpochOrder(len(self.windows), seed_words(seed, split, "augment", 0))

    def __len__(self) -> int:
        return len(self.windows)

    def keys(self) -> list[str]:
        return ["audio", "lowpass", *HEADS, *(f"{h}_mask" for h in HEADS), "noise_only"]

    def shapes(self) -> dict[str, tuple[int, ...]]:
        return {
            "audio": (self.cfg.example_samples,),
            "lowpass": (self.cfg.mel_channels,),
            **{h: (n,) for h, n in self.heads.items()},
            **{f"{h}_mask": (n,) for h, n in self.heads.items()},
            "noise_only": (),
        }

    def labels(self, primary: Sequence[str], background: Sequence[str]) -> tuple[dict, dict]:
        """(labels, masks) per head for a recording's weak labels (see module doc)."""
        tax = self.taxonomy
        labels = tax.encode(primary, self.mark_unknown)
        masks = {h: np.ones(n, dtype=np.float32) for h, n in self.heads.items()}
        for code in background:
            if code not in tax:
                continue
            bg = tax.encode([code], self.mark_unknown)
            for h in HEADS:
                masks[h][(bg[h] > 0) & (labels[h] == 0)] = 0.0
        for code in primary:
            for h, known in tax.known_heads(code).items():
                if not known:
                    masks[h][:] = 0.0
        return labels, masks

    def _draw(self, ref: WindowRef) -> Example:
        audio = read_segment(ref.path, ref.start, ref.end)
        labels, masks = self.labels(ref.primary, ref.background)
        return Example(audio, labels, masks)

    def example(self, index: int) -> dict[str, np.ndarray]:
        """Example ``index`` (epoch ``index // len(self)``) as a dict of float32 arrays."""
        rng = np.random.default_rng(
            np.random.SeedSequence(seed_words(self.seed, self.split, "augment", int(index) + 1))
        )
        first = self.windows[self._order.item(index)]
        calls = [0]

        def draw(r: np.random.Generator) -> Example:
            # The first window is the epoch's; a mixing partner is drawn at random.
            ref = first if calls[0] == 0 else self.windows[int(r.integers(len(self.windows)))]
            calls[0] += 1
            return self._draw(ref)

        ex, env, info = augment_classifier_example(rng, draw, self.noise, self.heads, self.cfg)
        out = {"audio": ex.audio, "lowpass": env}
        for h in HEADS:
            out[h] = ex.labels[h]
            out[f"{h}_mask"] = ex.masks[h]
        out["noise_only"] = np.float32(info["noise_only"])
        return out

    def example_list(self, index: int) -> list[np.ndarray]:
        ex = self.example(index)
        return [np.asarray(ex[k], dtype=np.float32) for k in self.keys()]


@dataclass(frozen=True)
class SeparatorConfig:
    sample_rate_hz: int = 22050
    example_s: float = 5.0
    levels: str = "natural"
    peak: tuple[float, float] = (0.05, 0.75)

    def __post_init__(self) -> None:
        if self.levels not in MOM_LEVELS:
            raise DatasetError(f"MoM levels must be one of {MOM_LEVELS}, got {self.levels!r}")

    @property
    def example_samples(self) -> int:
        return round(self.example_s * self.sample_rate_hz)


def _crop_at(x: np.ndarray, start: int, length: int) -> np.ndarray:
    """The crop :func:`random_crop` returned with ``start``, applied to another signal."""
    if start >= 0:
        return x[start : start + length]
    out = np.zeros(length, dtype=x.dtype)
    out[-start : -start + x.shape[0]] = x
    return out


def is_synthetic(ds: Dataset) -> bool:
    """Whether ``ds`` is a synthetic corpus (``chorus-models synth``) rather than recordings."""
    return isinstance(ds.info.get("generator"), dict)


class SeparatorExamples:
    """MixIT training examples: two random crops of unlabelled windows and their sum (the MoM),
    at their recorded levels or each at a random peak level (``cfg.levels``).

    Separators need no labels, so the datasets' taxonomies need not agree: an unlabelled real
    dataset (``ingest --layout unlabelled``) mixes with a synthetic corpus. ``real_fraction``
    F weights the two: a MoM's two mixtures both come from real (non-synthetic) datasets with
    probability F, else both from the synthetic corpora; each window is then drawn at random
    within its side (None: one pool of all windows in epoch order, as before).

    ``stems=True`` (semi-supervised training) also returns ``sources`` ``(4, n)``: the bird
    stem and the noise bed (recording minus stem) of each mixture, ``[birds 1, noise 1,
    birds 2, noise 2]``, cropped and scaled as the mixtures, so they sum to the MoM. Every
    window then needs a stem (soundscapes of a corpus written with ``synth --stems``). The
    random draws are the same either way: a run with stems sees the same MoMs as one without.
    """

    def __init__(
        self,
        datasets: Sequence[Dataset],
        split: str = "train",
        cfg: SeparatorConfig | None = None,
        seed: int = 0,
        windows: Sequence[WindowRef] | None = None,
        kinds: Sequence[str] = WINDOW_KINDS,
        stems: bool = False,
        real_fraction: float | None = None,
    ) -> None:
        self.cfg = cfg or SeparatorConfig()
        self.split, self.seed, self.stems = split, seed, stems
        self.windows = (
            list(windows)
            if windows is not None
            else unlabelled_windows(datasets, split, kinds=kinds)
        )
        if not self.windows:
            raise DatasetError(f"no windows of {', '.join(kinds)} for split {split!r}")
        self.real_fraction = real_fraction
        self.sides: tuple[list[WindowRef], list[WindowRef]] = ([], [])  # (synthetic, real)
        if real_fraction is not None:
            self.sides = self._sides(datasets, split, kinds, real_fraction)
        if stems:
            missing = sorted({str(w.path) for w in self.windows if w.stem is None})
            if missing:
                raise DatasetError(
                    f"{len(missing)} {split} recordings have no bird stem (first: "
                    f"{missing[0]}); supervised separator training needs soundscape windows "
                    "only (--windows soundscape) of a corpus written with `synth --stems`"
                )
        self._order = _EpochOrder(len(self.windows), seed_words(seed, split, "separator", 0))

    @staticmethod
    def _sides(
        datasets: Sequence[Dataset], split: str, kinds: Sequence[str], fraction: float
    ) -> tuple[list[WindowRef], list[WindowRef]]:
        if not 0.0 <= fraction <= 1.0:
            raise DatasetError(f"real fraction must be in [0, 1], got {fraction}")
        synth = [d for d in datasets if is_synthetic(d)]
        real = [d for d in datasets if not is_synthetic(d)]
        sides = (
            unlabelled_windows(synth, split, kinds=kinds) if synth else [],
            unlabelled_windows(real, split, kinds=kinds) if real else [],
        )
        for side, name, needed in ((0, "synthetic", fraction < 1), (1, "real", fraction > 0)):
            if needed and not sides[side]:
                raise DatasetError(
                    f"real fraction {fraction}: no {split} windows of {', '.join(kinds)} in "
                    f"the {name} datasets (--data)"
                )
        return sides

    def _refs(self, index: int, rng: np.random.Generator) -> list[WindowRef]:
        """The two windows of MoM ``index``."""
        if self.real_fraction is None:
            return [
                self.windows[self._order.item(index)],
                self.windows[int(rng.integers(len(self.windows)))],
            ]
        side = self.sides[1] if rng.random() < self.real_fraction else self.sides[0]
        return [side[int(rng.integers(len(side)))] for _ in range(2)]

    def __len__(self) -> int:
        return len(self.windows)

    def keys(self) -> list[str]:
        return ["mom", "mixtures", "sources"] if self.stems else ["mom", "mixtures"]

    def shapes(self) -> dict[str, tuple[int, ...]]:
        n = self.cfg.example_samples
        out = {"mom": (n,), "mixtures": (2, n)}
        return {**out, "sources": (4, n)} if self.stems else out

    def example(self, index: int) -> dict[str, np.ndarray]:
        rng = np.random.default_rng(
            np.random.SeedSequence(seed_words(self.seed, self.split, "separator", int(index) + 1))
        )
        refs = self._refs(index, rng)
        n = self.cfg.example_samples
        mixtures, sources = [], []
        for ref in refs:
            crop, start = random_crop(read_segment(ref.path, ref.start, ref.end), n, rng)
            gain = 1.0
            if self.cfg.levels == "random-peak":
                scaled, level = peak_normalize(crop, rng, *self.cfg.peak)
                peak = float(np.max(np.abs(crop))) if crop.size else 0.0
                gain = level / peak if peak > 0 else 1.0
                crop = scaled
            mixtures.append(crop.astype(np.float32, copy=False))
            if self.stems and ref.stem is not None:
                birds = _crop_at(read_segment(ref.stem, ref.start, ref.end), start, n) * gain
                sources += [birds, mixtures[-1] - birds]
        mom, stacked = make_mom(mixtures[0], mixtures[1])
        out = {"mom": mom, "mixtures": stacked}
        if self.stems:
            out["sources"] = np.stack(sources).astype(np.float32)
        return out

    def example_list(self, index: int) -> list[np.ndarray]:
        ex = self.example(index)
        return [ex[k] for k in self.keys()]
