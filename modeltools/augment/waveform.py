"""Waveform-domain augmentations of the paper (ALGORITHMS.md §2.4), as small numpy ops.

Paper-only augmentations (not in the released code; values from the project brief): random
5-s crop of each 6-s example, peak normalisation to a random level in U(0.05, 0.75), mixing
two training examples with p = 0.5 (labels unioned), noise added to 75 % of examples at an SNR
of U(0, 40) dB, and 10 % noise-only examples whose labels are cleared. Plus the MixIT
mixture-of-mixtures. Every op takes an explicit ``numpy.random.Generator``, so a pipeline that
seeds one generator per example is deterministic regardless of threading.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from modeltools.augment.spectral import MEL_CHANNELS, random_lowpass_envelope

Labels = dict[str, np.ndarray]


@dataclass(frozen=True)
class Example:
    """An audio example with multi-hot labels and loss masks per head (1 = counts)."""

    audio: np.ndarray
    labels: Labels = field(default_factory=dict)
    masks: Labels = field(default_factory=dict)


def random_crop(x: np.ndarray, length: int, rng: np.random.Generator) -> tuple[np.ndarray, int]:
    """A uniformly placed ``length``-sample crop; shorter inputs are zero-padded at a random
    offset. Returns (crop, start) with start < 0 meaning "padded by -start at the front"."""
    n = x.shape[0]
    if n >= length:
        start = int(rng.integers(0, n - length + 1))
        return x[start : start + length], start
    offset = int(rng.integers(0, length - n + 1))
    out = np.zeros(length, dtype=x.dtype)
    out[offset : offset + n] = x
    return out, -offset


def scale_to_peak(x: np.ndarray, peak: float) -> np.ndarray:
    """``x`` scaled so that max |x| == ``peak`` (silence stays silence)."""
    m = float(np.max(np.abs(x))) if x.size else 0.0
    if m <= 0.0:
        return x.astype(np.float32, copy=True)
    return (x * (peak / m)).astype(np.float32)


def peak_normalize(
    x: np.ndarray, rng: np.random.Generator, low: float = 0.05, high: float = 0.75
) -> tuple[np.ndarray, float]:
    """Scale to a random peak level drawn from U(low, high); returns (audio, level)."""
    level = float(rng.uniform(low, high))
    return scale_to_peak(x, level), level


def union_labels(a: Example, b: Example) -> tuple[Labels, Labels]:
    """Labels: elementwise max. Masks: a class masked (unknown) in either stays masked, but
    a class that is positive in the union always counts."""
    labels, masks = {}, {}
    for head in a.labels:
        labels[head] = np.maximum(a.labels[head], b.labels[head])
        m = np.minimum(a.masks[head], b.masks[head])
        masks[head] = np.where(labels[head] > 0, 1.0, m).astype(np.float32)
    return labels, masks


def mix(a: Example, b: Example) -> Example:
    """Sum of the two waveforms with the union of their labels."""
    labels, masks = union_labels(a, b)
    return Example((a.audio + b.audio).astype(np.float32), labels, masks)


def power(x: np.ndarray) -> float:
    return float(np.mean(np.square(x, dtype=np.float64))) if x.size else 0.0


def add_noise(signal: np.ndarray, noise: np.ndarray, snr_db: float) -> np.ndarray:
    """``signal`` plus ``noise`` scaled to ``snr_db`` = 10 log10(P_signal / P_noise).

    With a silent signal or silent noise the signal is returned unchanged (no level to set the
    noise against, or nothing to add).
    """
    ps, pn = power(signal), power(noise)
    if ps <= 0.0 or pn <= 0.0:
        return signal.astype(np.float32, copy=True)
    gain = np.sqrt(ps / (pn * 10.0 ** (snr_db / 10.0)))
    return (signal + gain * noise).astype(np.float32)


def noise_only(noise: np.ndarray, heads: Mapping[str, int]) -> Example:
    """A noise example: all labels cleared (0), every class counting in the loss (mask 1).

    ``heads`` maps each head name to its number of classes.
    """
    return Example(
        noise.astype(np.float32),
        {h: np.zeros(n, dtype=np.float32) for h, n in heads.items()},
        {h: np.ones(n, dtype=np.float32) for h, n in heads.items()},
    )


def make_mom(m1: np.ndarray, m2: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """MixIT input: (mixture of mixtures m1 + m2, the stacked references (2, n))."""
    if m1.shape != m2.shape:
        raise ValueError(f"mixtures must have the same shape, got {m1.shape} and {m2.shape}")
    return (m1 + m2).astype(np.float32), np.stack([m1, m2]).astype(np.float32)


@dataclass(frozen=True)
class AugmentConfig:
    """The classifier's augmentation policy (paper values by default)."""

    sample_rate_hz: int = 22050
    example_s: float = 5.0
    peak: tuple[float, float] = (0.05, 0.75)
    mix_p: float = 0.5
    noise_p: float = 0.75
    snr_db: tuple[float, float] = (0.0, 40.0)
    noise_only_p: float = 0.1
    # [not in code]: the paper's filter probability is unknown; half the examples is our choice.
    lowpass_p: float = 0.5
    mel_channels: int = MEL_CHANNELS

    @property
    def example_samples(self) -> int:
        return round(self.example_s * self.sample_rate_hz)

    def without_augmentation(self) -> AugmentConfig:
        """Crop and fixed-level normalisation only (for validation data)."""
        return replace(self, mix_p=0.0, noise_p=0.0, noise_only_p=0.0, lowpass_p=0.0)


def augment_classifier_example(
    rng: np.random.Generator,
    draw: Callable[[np.random.Generator], Example],
    draw_noise: Callable[[np.random.Generator, int], np.ndarray],
    heads: Mapping[str, int],
    cfg: AugmentConfig = AugmentConfig(),
) -> tuple[Example, np.ndarray, dict[str, Any]]:
    """One training example under the full policy.

    ``draw(rng)`` returns a labelled window (e.g. 6 s); ``draw_noise(rng, n)`` returns ``n``
    samples of noise; ``heads`` maps head names to class counts (for noise-only labels).

    Order: noise-only (p ``noise_only_p``) or [crop -> peak-normalise -> mix with a second
    cropped, normalised window (p ``mix_p``) -> add noise at U(snr_db) (p ``noise_p``)] ->
    peak-normalise to U(peak); then a mel low-pass envelope (applied with p ``lowpass_p``,
    all ones otherwise). Returns (example, envelope, info).
    """
    n = cfg.example_samples
    info: dict[str, Any] = {
        "noise_only": False,
        "mixed": False,
        "noisy": False,
        "snr_db": float("nan"),
        "crop_start": 0,
    }
    if rng.random() < cfg.noise_only_p:
        ex = noise_only(draw_noise(rng, n), heads)
        info["noise_only"] = True
    else:
        first = draw(rng)
        audio, info["crop_start"] = random_crop(first.audio, n, rng)
        audio, _ = peak_normalize(audio, rng, *cfg.peak)
        ex = replace(first, audio=audio)
        if rng.random() < cfg.mix_p:
            second = draw(rng)
            audio2, _ = random_crop(second.audio, n, rng)
            audio2, _ = peak_normalize(audio2, rng, *cfg.peak)
            ex = mix(ex, replace(second, audio=audio2))
            info["mixed"] = True
        if rng.random() < cfg.noise_p:
            snr = float(rng.uniform(*cfg.snr_db))
            ex = replace(ex, audio=add_noise(ex.audio, draw_noise(rng, n), snr))
            info["noisy"], info["snr_db"] = True, snr
    audio, info["peak"] = peak_normalize(ex.audio, rng, *cfg.peak)
    ex = replace(ex, audio=audio)
    envelope, info["lowpass"] = random_lowpass_envelope(rng, cfg.mel_channels, cfg.lowpass_p)
    return ex, envelope, info


def stack_labels(ex: Example, heads: Mapping[str, int] | None = None) -> dict[str, np.ndarray]:
    """Flatten an example's labels and masks into ``{head: ..., head_mask: ...}``."""
    out = {}
    for h in heads or ex.labels:
        out[h] = ex.labels[h].astype(np.float32)
        out[f"{h}_mask"] = ex.masks[h].astype(np.float32)
    return out
