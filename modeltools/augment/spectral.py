"""Random low-pass filter in mel space (P-paper ``LowpassFiltersBatch``; ALGORITHMS.md §2.4).

envelope_c = 1 - 0.5 * (tanh(a * (u_c - 0.5) - b) + 1), u_c = linspace(0, 1, channels),
a ~ U(2, 8), b ~ U(0, 5) per example. The classifier frontend multiplies the PCEN mel frames
by it *after PCEN and before whitening* (P-paper ``FilterAugmentMelspec``), for a random
subset of examples. The waveform pipeline therefore only draws the envelope (all ones when
not applied) and hands it to the model with the example.
"""

from __future__ import annotations

import numpy as np

MEL_CHANNELS = 160
SLOPE_RANGE = (2.0, 8.0)
OFFSET_RANGE = (0.0, 5.0)


def lowpass_envelope(slope: float, offset: float, channels: int = MEL_CHANNELS) -> np.ndarray:
    """The envelope for one (a, b) pair: float32 (channels,), decreasing from ~1 towards 0."""
    u = np.linspace(0.0, 1.0, channels)
    return (1.0 - 0.5 * (np.tanh(slope * (u - 0.5) - offset) + 1.0)).astype(np.float32)


def random_lowpass_envelope(
    rng: np.random.Generator, channels: int = MEL_CHANNELS, probability: float = 1.0
) -> tuple[np.ndarray, bool]:
    """(envelope, applied): a random envelope with ``probability``, else all ones.

    The slope and offset are drawn in either case so the random stream does not depend on
    the coin flip's outcome.
    """
    slope = float(rng.uniform(*SLOPE_RANGE))
    offset = float(rng.uniform(*OFFSET_RANGE))
    applied = bool(rng.random() < probability)
    if not applied:
        return np.ones(channels, dtype=np.float32), False
    return lowpass_envelope(slope, offset, channels), True


def apply_mel_lowpass(mel: np.ndarray, envelope: np.ndarray) -> np.ndarray:
    """Multiply ``(..., frames, channels)`` mel frames by a ``(..., channels)`` envelope."""
    env = np.asarray(envelope, dtype=np.float32)
    return np.asarray(mel, dtype=np.float32) * env[..., None, :]
