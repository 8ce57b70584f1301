"""Evaluation: MoMi (re-exported from :mod:`metrics`) of a trained run on held-out MoMs,
optionally at 16 kHz (the paper's Table 1 rate), plus example WAVs and spectrogram PNGs of a
mixture and its separated channels (the paper's Figure 1 style)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from modeltools.separation.metrics import momi, momi_per_example, si_snri

__all__ = ["evaluate_run", "momi", "momi_per_example", "si_snri", "write_examples"]

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
) -> dict[str, Any]:
    """MoMi of the latest checkpoint in ``run_dir`` on ``num_examples`` MoMs of ``split``.

    The model always runs at its own rate; ``resample_hz`` (e.g. 16000) resamples the MoM,
    references and estimates before scoring. ``examples_dir`` receives WAVs + PNGs of the
    first ``num_written`` MoMs.
    """
    from modeltools.data.dataset import read_dataset
    from modeltools.data.examples import SeparatorExamples
    from modeltools.separation.train import load_run

    model, cfg, step = load_run(run_dir)
    datasets = [read_dataset(d) for d in data]
    source = SeparatorExamples(datasets, split, seed=seed)
    scores, written = [], 0
    for start in range(0, num_examples, batch_size):
        exs = [source.example(i) for i in range(start, min(start + batch_size, num_examples))]
        mom = np.stack([e["mom"] for e in exs])
        refs = np.stack([e["mixtures"] for e in exs])
        est = np.asarray(model(mom, training=False))
        if examples_dir is not None:
            for b in range(len(exs)):
                if written < num_written:
                    write_examples(
                        examples_dir, mom[b], est[b], cfg.sample_rate_hz, f"mom{written}"
                    )
                    written += 1
        if resample_hz and resample_hz != cfg.sample_rate_hz:
            mom, refs, est = (
                _resample(a, cfg.sample_rate_hz, resample_hz) for a in (mom, refs, est)
            )
        scores.append(momi_per_example(refs, est, mom))
    per = np.concatenate(scores)
    return {
        "run_dir": str(run_dir),
        "preset": cfg.name,
        "step": step,
        "split": split,
        "examples": int(per.size),
        "sample_rate_hz": int(resample_hz or cfg.sample_rate_hz),
        "momi_db": float(np.mean(per)),
        "momi_median_db": float(np.median(per)),
    }
