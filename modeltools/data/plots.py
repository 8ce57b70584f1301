"""Spectrogram pictures of the synthetic species (for the docs and a quick look at a corpus).

matplotlib is imported only inside :func:`plot_species` (it is in the ``train`` extra), with the
non-interactive Agg backend, so this module is cheap to import.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from scipy import signal

from modeltools.data.species import SAMPLE_RATE_HZ, SyntheticWorld

log = logging.getLogger(__name__)


def spectrogram_db(
    x: np.ndarray, sample_rate_hz: int = SAMPLE_RATE_HZ, nfft: int = 512
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(freqs_hz, times_s, power_db) with a 512-point Hann STFT, 75 % overlap."""
    f, t, s = signal.spectrogram(
        x, sample_rate_hz, window="hann", nperseg=nfft, noverlap=3 * nfft // 4, mode="psd"
    )
    return f, t, 10.0 * np.log10(s + 1e-12)


def species_example(world: SyntheticWorld, code: str, seed: int = 0) -> np.ndarray:
    """Two songs and a call of ``code``, clean, with short pauses (what the PNG shows)."""
    rng = np.random.default_rng([seed, sum(code.encode())])
    gap = np.zeros(int(0.4 * SAMPLE_RATE_HZ))
    parts = [gap, world.song(code, rng), gap, world.song(code, rng), gap, world.call(code, rng)]
    return 0.5 * np.concatenate([*parts, gap])


def plot_species(world: SyntheticWorld, out_dir: str | Path, seed: int = 0) -> list[Path]:
    """Write ``<code>.png`` (600x250 px) for every species of ``world``; return the paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for sp in world.taxonomy.species:
        x = species_example(world, sp.code, seed)
        f, t, db = spectrogram_db(x)
        fig, ax = plt.subplots(figsize=(6.0, 2.5), dpi=100)
        vmax = float(db.max())
        db = np.maximum(db, vmax - 60)  # a clean floor: flat colour compresses well
        ax.pcolormesh(t, f / 1000.0, db, shading="auto", cmap="magma", vmin=vmax - 60, vmax=vmax)
        role = "" if sp.role == "target" else ", out-of-set"
        ax.set_title(
            f"{sp.code}: {sp.common_name.replace(' (synthetic)', '')} — "
            f"{sp.scientific_name} ({sp.family}, {sp.order}{role})",
            fontsize=8,
        )
        ax.set_xlabel("time (s)", fontsize=7)
        ax.set_ylabel("kHz", fontsize=7)
        ax.set_ylim(0, 11.025)
        ax.tick_params(labelsize=6)
        fig.tight_layout(pad=0.3)
        path = out / f"{sp.code}.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        paths.append(path)
    log.info("wrote %d species spectrograms to %s", len(paths), out)
    return paths
