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
    starts: Any = range(0, num_examples, batch_size)
    if progress:
        from tqdm import tqdm

        starts = tqdm(starts, unit="batch", desc=desc, leave=False)
    for start in starts:
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
