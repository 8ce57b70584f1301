"""Combine per-channel logits into one score per class (ALGORITHMS.md §2.7).

Channel 0 is always the original mix; channels 1..M are the separated sources. The ensemble
mean has already been taken per channel (``Classifier.classify``); here we take the max over
the channels the mode allows, and remember which channel won. All in the logit domain.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

Mode = Literal["mix_only", "separated_only", "mix_and_separated"]


def channel_names(num_sources: int) -> list[str]:
    """Names used in detections: "mix", then "sep0" … "sep{M-1}"."""
    return ["mix"] + [f"sep{j}" for j in range(num_sources)]


@dataclass(frozen=True)
class Combined:
    logits: np.ndarray  # (C,) combined logit per class
    winner: np.ndarray  # (C,) int index of the winning channel (0 = mix)


def combine_channels(
    logits: np.ndarray, mode: Mode, mix_only_classes: tuple[int, ...] = ()
) -> Combined:
    """(K, C) logits with row 0 = mix -> max over the allowed channels, per class.

    ``mix_only_classes`` (e.g. ``unknown``) always take the mix's logit, as the paper's code does.
    Ties go to the lowest channel index (the mix before separated channels).
    """
    if logits.ndim != 2 or logits.shape[0] < 1:
        raise ValueError(f"expected (channels, classes) logits, got shape {logits.shape}")
    num_channels = logits.shape[0]
    if mode == "mix_only":
        allowed = [0]
    elif num_channels < 2:
        raise ValueError(f"mode {mode!r} needs separated channels, got only the mix")
    elif mode == "separated_only":
        allowed = list(range(1, num_channels))
    elif mode == "mix_and_separated":
        allowed = list(range(num_channels))
    else:
        raise ValueError(f"unknown mode {mode!r}")
    sub = logits[allowed]  # (A, C)
    best = np.argmax(sub, axis=0)  # first max wins ties
    winner = np.asarray(allowed)[best]
    combined = sub[best, np.arange(logits.shape[1])]
    if mix_only_classes:
        idx = np.asarray(mix_only_classes)
        combined = combined.copy()
        combined[idx] = logits[0, idx]
        winner[idx] = 0
    return Combined(combined.astype(np.float32), winner.astype(np.int64))


def sigmoid(x: np.ndarray) -> np.ndarray:
    """Numerically stable logistic function."""
    out = np.empty_like(x, dtype=np.float64)
    pos = x >= 0
    out[pos] = 1.0 / (1.0 + np.exp(-x[pos]))
    ex = np.exp(x[~pos])
    out[~pos] = ex / (1.0 + ex)
    return out
