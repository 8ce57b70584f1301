"""Evaluation: MoMi (re-exported from :mod:`metrics`) of a trained run on held-out MoMs,
optionally at 16 kHz (the paper's Table 1 rate), plus example WAVs and spectrogram PNGs of a
mixture and its separated channels (the paper's Figure 1 style)."""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from modeltools.separation.metrics import (
    LEVEL_GAP_BINS_DB,
    momi,
    momi_breakdown,
    momi_per_example,
    si_snri,
)

__all__ = [
    "bird_breakdown",
    "evaluate_birds",
    "evaluate_checkpoints",
    "evaluate_oracle",
    "evaluate_run",
    "momi",
    "momi_per_example",
    "oracle_estimates",
    "si_snri",
    "summarize",
    "write_examples",
]

log = logging.getLogger(__name__)


def _resample(x: np.ndarray, from_hz: int, to_hz: int) -> np.ndarray:
    from math import gcd

    from scipy.signal import resample_poly

    g = gcd(from_hz, to_hz)
    return resample_poly(x, to_hz // g, from_hz // g, axis=-1).astype(np.float32)


def write_examples(
    out_dir: str | Path, mom: np.ndarray, est: np.ndarray, sample_rate_hz: int, tag: str
) -> list[Path]:
    """``<tag>_mix.wav``, ``<tag>_ch<j>.wav`` and ``<tag>.png`` (mixture + channel spectrograms)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from modeltools.data.audio_io import write_wav
    from modeltools.data.plots import spectrogram_db

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / f"{tag}_mix.wav"]
    write_wav(paths[0], mom, sample_rate_hz)
    for j, ch in enumerate(est):
        paths.append(out / f"{tag}_ch{j}.wav")
        write_wav(paths[-1], ch, sample_rate_hz)
    rows = [("mixture", mom)] + [(f"channel {j}", ch) for j, ch in enumerate(est)]
    fig, axes = plt.subplots(len(rows), 1, figsize=(8, 1.6 * len(rows)), sharex=True)
    for ax, (title, x) in zip(axes, rows, strict=True):
        f, t, db = spectrogram_db(x, sample_rate_hz)
        ax.pcolormesh(t, f / 1000, db, vmin=db.max() - 80, vmax=db.max(), shading="auto")
        ax.set_ylabel("kHz")
        ax.set_title(title, fontsize=8, loc="left")
    axes[-1].set_xlabel("s")
    fig.tight_layout()
    paths.append(out / f"{tag}.png")
    fig.savefig(paths[-1], dpi=80)
    plt.close(fig)
    return paths


def summarize(per: dict[str, np.ndarray]) -> dict[str, Any]:
    """Mean/median MoMi, the collapsed MoMs and MoMi per level-gap range of a breakdown
    (:func:`~modeltools.separation.metrics.momi_breakdown`, concatenated over batches)."""
    m, col, gap = per["momi_db"], per["collapsed"], per["level_gap_db"]
    edges = [0.0, *LEVEL_GAP_BINS_DB, np.inf]
    ranges = []
    for lo, hi in itertools.pairwise(edges):
        sel = (gap >= lo) & (gap < hi)
        label = f"{lo:g}-{hi:g} dB" if np.isfinite(hi) else f">= {lo:g} dB"
        ranges.append(
            {
                "level_gap": label,
                "examples": int(sel.sum()),
                "momi_db": float(np.mean(m[sel])) if sel.any() else None,
                "collapsed": int(col[sel].sum()),
            }
        )
    return {
        "examples": int(m.size),
        "momi_db": float(np.mean(m)),
        "momi_median_db": float(np.median(m)),
        "collapsed": int(col.sum()),
        "momi_not_collapsed_db": float(np.mean(m[~col])) if (~col).any() else None,
        "by_level_gap": ranges,
    }


def oracle_estimates(mom: np.ndarray, references: np.ndarray, window: int) -> np.ndarray:
    """Ideal ratio-mask estimates ``(B, 2, T)`` of the two mixtures of each MoM: an upper
    bound for mask-based separation at that time-frequency resolution, not a model.

    STFT (Hann, ``window`` samples, 50 % overlap) of the MoM ``(B, T)`` and of its mixtures
    ``(B, 2, T)``; mask_i = |X_i| / (|X_1| + |X_2|) applied to the MoM's STFT (its phase), then
    the inverse STFT. The masks sum to one, so the estimates sum to the MoM up to rounding.
    """
    from scipy.signal import istft, stft

    if window < 4 or window % 2:
        raise ValueError(f"oracle STFT window must be an even number of samples >= 4, got {window}")
    hop = window // 2
    _, _, spec = stft(mom, nperseg=window, noverlap=hop)
    _, _, ref_spec = stft(references, nperseg=window, noverlap=hop)
    mag = np.abs(ref_spec)
    masks = mag / np.maximum(mag.sum(axis=1, keepdims=True), 1e-12)
    _, est = istft(masks * spec[:, None], nperseg=window, noverlap=hop)
    n = mom.shape[-1]
    est = est[..., :n]
    if est.shape[-1] < n:
        est = np.pad(est, [(0, 0), (0, 0), (0, n - est.shape[-1])])
    return est.astype(np.float32)


def _batch_starts(num_examples: int, batch_size: int, desc: str, progress: bool) -> Any:
    """First example index of every batch, behind a progress bar when ``progress``."""
    starts: Any = range(0, num_examples, batch_size)
    if progress:
        from tqdm import tqdm

        starts = tqdm(starts, unit="batch", desc=desc, leave=False)
    return starts


def _score(
    source: Any,
    estimate: Callable[[np.ndarray, np.ndarray], np.ndarray],
    sample_rate_hz: int,
    num_examples: int,
    batch_size: int,
    resample_hz: int | None,
    examples_dir: str | Path | None,
    num_written: int,
    desc: str,
    progress: bool,
) -> dict[str, Any]:
    """Score ``estimate(mom, references) -> (B, M, T)`` on the first ``num_examples`` MoMs."""
    parts: list[dict[str, np.ndarray]] = []
    written = 0
    for start in _batch_starts(num_examples, batch_size, desc, progress):
        exs = [source.example(i) for i in range(start, min(start + batch_size, num_examples))]
        mom = np.stack([e["mom"] for e in exs])
        refs = np.stack([e["mixtures"] for e in exs])
        est = estimate(mom, refs)
        if examples_dir is not None:
            for b in range(len(exs)):
                if written < num_written:
                    write_examples(examples_dir, mom[b], est[b], sample_rate_hz, f"mom{written}")
                    written += 1
        if resample_hz and resample_hz != sample_rate_hz:
            mom, refs, est = (_resample(a, sample_rate_hz, resample_hz) for a in (mom, refs, est))
        parts.append(momi_breakdown(refs, est, mom))
    per = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    return summarize(per)


def _mom_source(
    data: list[str | Path], split: str, seed: int, mom_levels: str, windows: Sequence[str] | None
) -> tuple[Any, tuple[str, ...]]:
    from modeltools.data.dataset import read_dataset
    from modeltools.data.examples import SeparatorConfig as DataConfig
    from modeltools.data.examples import SeparatorExamples
    from modeltools.separation.presets import WINDOW_KINDS

    datasets = [read_dataset(d) for d in data]
    kinds = tuple(windows) if windows else WINDOW_KINDS
    source = SeparatorExamples(
        datasets, split, cfg=DataConfig(levels=mom_levels), seed=seed, kinds=kinds
    )
    return source, kinds


def _protocol(
    split: str, seed: int, mom_levels: str, kinds: Sequence[str], rate: int
) -> dict[str, Any]:
    """The fields of a result that say which MoMs were scored, and at what rate."""
    return {
        "split": split,
        "seed": seed,
        "mom_levels": mom_levels,
        "windows": list(kinds),
        "sample_rate_hz": int(rate),
    }


def evaluate_run(
    run_dir: str | Path,
    data: list[str | Path],
    split: str = "test",
    num_examples: int = 64,
    batch_size: int = 4,
    seed: int = 1234,
    resample_hz: int | None = None,
    examples_dir: str | Path | None = None,
    num_written: int = 4,
    checkpoint: str | Path | None = None,
    progress: bool = False,
    mom_levels: str = "natural",
    windows: Sequence[str] | None = None,
) -> dict[str, Any]:
    """MoMi of the latest checkpoint in ``run_dir`` (or of the ``checkpoint`` prefix) on
    ``num_examples`` MoMs of ``split``, with the collapsed MoMs and MoMi per level gap.

    The model always runs at its own rate; ``resample_hz`` (e.g. 16000) resamples the MoM,
    references and estimates before scoring. ``examples_dir`` receives WAVs + PNGs of the
    first ``num_written`` MoMs. ``mom_levels``: ``"natural"`` (x1 + x2 as recorded, the
    SS-mixit MoM) or ``"random-peak"`` (each mixture at a random peak level; the protocol of
    the evaluations before 2026-12-04). ``windows``: recording kinds to draw the mixtures from
    (e.g. ``["soundscape"]``; default all of ``modeltools.separation.presets.WINDOW_KINDS``).
    """
    from modeltools.separation.train import load_run

    model, cfg, step = load_run(run_dir, checkpoint)
    source, kinds = _mom_source(data, split, seed, mom_levels, windows)
    summary = _score(
        source,
        lambda mom, _refs: np.asarray(model(mom, training=False)),
        cfg.sample_rate_hz,
        num_examples,
        batch_size,
        resample_hz,
        examples_dir,
        num_written,
        f"MoMi step {step}",
        progress,
    )
    head = {"run_dir": str(run_dir), "preset": cfg.name, "step": step}
    return {
        **head,
        **_protocol(split, seed, mom_levels, kinds, resample_hz or cfg.sample_rate_hz),
        **summary,
    }


def evaluate_oracle(
    data: list[str | Path],
    window: int,
    split: str = "test",
    num_examples: int = 64,
    batch_size: int = 4,
    seed: int = 1234,
    resample_hz: int | None = None,
    examples_dir: str | Path | None = None,
    num_written: int = 4,
    progress: bool = False,
    mom_levels: str = "natural",
    windows: Sequence[str] | None = None,
) -> dict[str, Any]:
    """MoMi of :func:`oracle_estimates` (ideal ratio masks, STFT of ``window`` samples) on the
    same MoMs :func:`evaluate_run` scores with the same arguments: how much of the gap between
    a model and perfect separation the mixtures themselves leave (overlapping noise beds,
    a quiet mixture under a loud one). Keys as :func:`evaluate_run`, with ``preset`` set to
    ``"oracle-irm"``, ``step`` to None and ``oracle_window`` added."""
    source, kinds = _mom_source(data, split, seed, mom_levels, windows)
    rate = int(source.cfg.sample_rate_hz)
    summary = _score(
        source,
        lambda mom, refs: oracle_estimates(mom, refs, window),
        rate,
        num_examples,
        batch_size,
        resample_hz,
        examples_dir,
        num_written,
        f"oracle MoMi, window {window}",
        progress,
    )
    head = {"run_dir": None, "preset": "oracle-irm", "oracle_window": int(window), "step": None}
    return {**head, **_protocol(split, seed, mom_levels, kinds, resample_hz or rate), **summary}


# A window's bird stem quieter than this, relative to its mixture, counts as "no birds": its
# SI-SNR is undefined (or meaningless), so it is left out of the bird score.
BIRDS_MIN_POWER_DB = -40.0


def bird_breakdown(
    mixture: np.ndarray, birds: np.ndarray, noise: np.ndarray, estimates: np.ndarray
) -> dict[str, np.ndarray]:
    """Per window: how well the estimates ``(B, M, T)`` of ``mixture`` ``(B, T)`` pull its
    birds ``(B, T)`` out of its noise bed ``(B, T)`` (``mixture = birds + noise``).

    The estimates are grouped into a birds part and a noise part by
    :func:`~modeltools.separation.losses.source_mixit` against the two stems (the same
    reference-chosen grouping MoMi uses for the two mixtures). Keys: ``bird_sisnri_db``
    (SI-SNR(bird part, birds) - SI-SNR(mixture, birds)), ``noise_sisnri_db`` (the same for the
    noise bed), ``input_bird_snr_db`` (SI-SNR(mixture, birds)), ``birds_lost`` (the bird part
    is silence: no estimate, or only silent ones, went to the birds) and ``has_birds`` (stem above
    :data:`BIRDS_MIN_POWER_DB` of the mixture)."""
    from modeltools.separation.losses import source_mixit

    refs = np.stack([birds, noise], axis=1)
    _, mats = source_mixit(refs, estimates)
    mats = mats.numpy()  # (B, 2, M)
    parts = np.einsum("bkm,bmt->bkt", mats, estimates)
    power = np.sum(birds.astype(np.float64) ** 2, -1)
    mix_power = np.sum(mixture.astype(np.float64) ** 2, -1)
    return {
        "bird_sisnri_db": si_snri(parts[:, 0], birds, mixture),
        "noise_sisnri_db": si_snri(parts[:, 1], noise, mixture),
        "input_bird_snr_db": np.asarray(_si_snr(mixture, birds)),
        "birds_lost": np.sum(parts[:, 0].astype(np.float64) ** 2, -1) <= 1e-10 * mix_power,
        "has_birds": 10 * np.log10(power / np.maximum(mix_power, 1e-20) + 1e-20)
        > BIRDS_MIN_POWER_DB,
    }


def _si_snr(estimate: np.ndarray, target: np.ndarray) -> np.ndarray:
    from modeltools.separation.losses import si_snr

    return si_snr(estimate, target).numpy()


def evaluate_birds(
    run_dir: str | Path,
    data: list[str | Path],
    split: str = "test",
    num_examples: int = 256,
    batch_size: int = 4,
    seed: int = 1234,
    checkpoint: str | Path | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Bird-vs-noise separation of single soundscape windows (no MoM): the job the agent gives
    the separator. Needs a corpus written with ``synth --stems``; ``num_examples`` 5-s
    windows of ``split`` (the first mixture of the MoM stream :func:`evaluate_run` draws with
    ``windows=["soundscape"]``), scored by :func:`bird_breakdown`. Windows without birds are
    counted and left out of the means."""
    from modeltools.data.dataset import read_dataset
    from modeltools.data.examples import SeparatorConfig as DataConfig
    from modeltools.data.examples import SeparatorExamples
    from modeltools.separation.train import load_run

    model, cfg, step = load_run(run_dir, checkpoint)
    datasets = [read_dataset(d) for d in data]
    source = SeparatorExamples(
        datasets, split, cfg=DataConfig(), seed=seed, kinds=("soundscape",), stems=True
    )
    parts = []
    for i in _batch_starts(num_examples, batch_size, f"bird SI-SNRi step {step}", progress):
        exs = [source.example(j) for j in range(i, min(i + batch_size, num_examples))]
        mixture = np.stack([e["mixtures"][0] for e in exs])
        birds = np.stack([e["sources"][0] for e in exs])
        noise = np.stack([e["sources"][1] for e in exs])
        est = np.asarray(model(mixture, training=False))
        parts.append(bird_breakdown(mixture, birds, noise, est))
    per = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    sel = per["has_birds"]
    bird, lost = per["bird_sisnri_db"][sel], per["birds_lost"][sel]

    def mean(x: np.ndarray) -> float | None:
        return float(np.mean(x)) if x.size else None

    return {
        "run_dir": str(run_dir),
        "preset": cfg.name,
        "step": step,
        "split": split,
        "seed": seed,
        "windows": ["soundscape"],
        "sample_rate_hz": int(cfg.sample_rate_hz),
        "examples": int(sel.size),
        "without_birds": int((~sel).sum()),
        "bird_sisnri_db": mean(bird),
        "bird_sisnri_median_db": float(np.median(bird)) if bird.size else None,
        "birds_lost": int(lost.sum()),
        "bird_sisnri_not_lost_db": mean(bird[~lost]),
        "noise_sisnri_db": mean(per["noise_sisnri_db"][sel]),
        "input_bird_snr_median_db": (
            float(np.median(per["input_bird_snr_db"][sel])) if sel.any() else None
        ),
    }


def evaluate_checkpoints(
    run_dir: str | Path, data: list[str | Path], progress: bool = False, **kwargs: Any
) -> list[dict[str, Any]]:
    """:func:`evaluate_run` on every checkpoint the run kept (oldest first): model selection
    on a validation split (``split="val"``) before one test evaluation of the chosen step."""
    from modeltools.separation.presets import SeparatorConfigError
    from modeltools.separation.train import CKPT_DIR, kept_checkpoints

    paths = kept_checkpoints(run_dir)
    if not paths:
        raise SeparatorConfigError(f"{run_dir}: no checkpoints in {CKPT_DIR}/")
    out = []
    for path in paths:
        res = evaluate_run(run_dir, data, checkpoint=path, progress=progress, **kwargs)
        log.info(
            "step %d: MoMi %.2f dB, %d collapsed", res["step"], res["momi_db"], res["collapsed"]
        )
        out.append(res)
    return out
