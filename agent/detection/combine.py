"""Combine per-channel logits into one score per class (ALGORITHMS.md §2.7).

Channel 0 is always the original mix; channels 1..M are derived from the separated sources.
The ensemble mean has already been taken per channel (``Classifier.classify``); here the
channels the mode allows vote, and we remember which channel won. All in the logit domain.

How separated channels vote is a :class:`CombinationPolicy`, carried by the bundle (chosen by
``chorus-models calibrate-combination`` on training-allowed real audio) and applied the same way
to every classifier backend. :data:`PAPER_MAX` is the paper's rule: the max over the mix and the
separator's outputs. A policy can instead

* classify *remixes*: each separated source taken out of the mix (``mix - s_j``, channel
  ``mix-sep{j}``). Mixture consistency makes these the mix minus one estimated source, so they
  keep the recording's texture the classifier knows, instead of one isolated channel with its
  artifacts;
* give the separated channels a partial say: ``max(mix, (1 - w) * mix + w * (best + offset))``
  (``w = 1``, ``offset = 0`` is the plain max), so a separated channel lifts a score the mix
  already half supports more than it invents one;
* ask for support: a separated channel only lifts a species the mix already gives some score
  (``min_mix_logit``), so it sharpens what the mix half hears instead of naming birds from
  separation artifacts alone;
* gate: a channel whose source is near-silent (RMS below ``gate_rms_ratio`` of the mix's) is not
  classified at all (it cannot hold a bird the mix lacks, and costs a classifier run).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

Mode = Literal["mix_only", "separated_only", "mix_and_separated"]
ChannelKind = Literal["sources", "remixes"]
CHANNEL_KINDS: tuple[str, ...] = ("sources", "remixes")
# Logit of a channel the gate skipped: never wins, and stays a finite number in payloads.
SKIPPED_LOGIT = -100.0


def channel_names(num_sources: int, kind: str = "sources") -> list[str]:
    """Names used in detections: "mix", then "sep0" … "sep{M-1}" (the separator's outputs) or
    "mix-sep0" … (the mix with that source taken out)."""
    prefix = "sep" if kind == "sources" else "mix-sep"
    return ["mix"] + [f"{prefix}{j}" for j in range(num_sources)]


@dataclass(frozen=True)
class CombinationPolicy:
    """How separated channels vote with the mix (module docstring)."""

    channels: str = "sources"  # "sources" | "remixes"
    weight: float = 1.0  # say of the best separated channel, (0, 1]
    offset: float = 0.0  # logit offset added to separated channels
    gate_rms_ratio: float = 0.0  # skip channels whose source RMS < this x the mix's RMS
    # A separated channel may only lift a class the mix already gives at least this logit
    # (None: any class); the mix keeps the rest.
    min_mix_logit: float | None = None
    calibration: Mapping[str, Any] = field(default_factory=dict, compare=False)  # provenance

    def __post_init__(self) -> None:
        problems = self.problems_of(
            self.channels, self.weight, self.offset, self.gate_rms_ratio, self.min_mix_logit
        )
        if problems:
            raise ValueError("; ".join(problems))

    @staticmethod
    def problems_of(
        channels: Any = "sources",
        weight: Any = 1.0,
        offset: Any = 0.0,
        gate_rms_ratio: Any = 0.0,
        min_mix_logit: Any = None,
    ) -> list[str]:
        """What is wrong with these fields (``key: what`` each; empty if nothing), so untrusted
        input (a manifest) can be checked before a policy is built from it."""
        out = []
        if channels not in CHANNEL_KINDS:
            out.append(f"channels: expected one of {', '.join(CHANNEL_KINDS)}, got {channels!r}")
        if not (isinstance(weight, int | float) and 0.0 < weight <= 1.0):
            out.append(f"weight: must be in (0, 1], got {weight!r}")
        if not (isinstance(offset, int | float) and math.isfinite(offset)):
            out.append(f"offset: must be a finite number, got {offset!r}")
        elif abs(offset) > 20:
            out.append(f"offset: must be within +-20 logits, got {offset}")
        if not (isinstance(gate_rms_ratio, int | float) and 0.0 <= gate_rms_ratio < 1.0):
            out.append(f"gate_rms_ratio: must be in [0, 1), got {gate_rms_ratio!r}")
        m = min_mix_logit
        if m is not None and not (isinstance(m, int | float) and math.isfinite(m) and abs(m) <= 20):
            out.append(f"min_mix_logit: must be null or a number within +-20 logits, got {m!r}")
        return out

    @property
    def is_paper_max(self) -> bool:
        return (
            self.channels == "sources"
            and self.weight == 1.0
            and self.offset == 0.0
            and self.min_mix_logit is None
        )

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "channels": self.channels,
            "weight": self.weight,
            "offset": self.offset,
            "gate_rms_ratio": self.gate_rms_ratio,
            "min_mix_logit": self.min_mix_logit,
        }
        if self.calibration:
            out["calibration"] = dict(self.calibration)
        return out

    def channels_of(self, mix: np.ndarray, sources: np.ndarray) -> np.ndarray:
        """(N,) mix and (M, N) sources -> the (1 + M, N) channels the classifier hears."""
        derived = sources if self.channels == "sources" else mix[np.newaxis, :] - sources
        return np.concatenate([mix[np.newaxis, :], derived], axis=0).astype(np.float32)

    def active(self, mix: np.ndarray, sources: np.ndarray) -> np.ndarray:
        """(1 + M,) bool: which channels to classify (the mix always)."""
        if self.gate_rms_ratio <= 0:
            return np.ones(1 + sources.shape[0], bool)
        return self.active_from_rms(rms(mix), rms(sources))

    def active_from_rms(self, mix_rms: float, source_rms: np.ndarray) -> np.ndarray:
        """:meth:`active` from the RMS of the mix and of each source (M,)."""
        keep = np.ones(1 + source_rms.shape[0], bool)
        if self.gate_rms_ratio > 0:
            keep[1:] = source_rms >= self.gate_rms_ratio * mix_rms
        return keep


def rms(x: np.ndarray) -> Any:
    """RMS over the last axis (float64): a float for (N,), an array for (M, N)."""
    return np.sqrt(np.mean(np.square(x, dtype=np.float64), axis=-1))


PAPER_MAX = CombinationPolicy()  # the paper's rule: max over the mix and the separated sources


@dataclass(frozen=True)
class Combined:
    logits: np.ndarray  # (C,) combined logit per class
    winner: np.ndarray  # (C,) int index of the winning channel (0 = mix)


def combine_channels(
    logits: np.ndarray,
    mode: Mode,
    mix_only_classes: tuple[int, ...] = (),
    policy: CombinationPolicy = PAPER_MAX,
) -> Combined:
    """(K, C) logits with row 0 = mix -> one logit per class, and the channel that won.

    ``mix_only``: the mix. ``separated_only``: the max over the separated channels.
    ``mix_and_separated``: ``max(mix, (1 - w) * mix + w * (best separated + offset))`` with the
    policy's ``w`` and ``offset`` (the plain max over all channels for :data:`PAPER_MAX`), lifted
    only where the mix's logit is >= ``min_mix_logit``; a separated channel wins where it lifts.
    ``mix_only_classes`` (e.g. ``unknown``) always take the mix's logit, as the paper's code
    does. Ties go to the lowest channel index (the mix before separated channels).
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
    if mode == "mix_and_separated" and not policy.is_paper_max:
        cols = np.arange(logits.shape[1])
        best_sep = 1 + np.argmax(logits[1:], axis=0)  # (C,)
        sep = logits[best_sep, cols] + policy.offset
        blended = (1.0 - policy.weight) * logits[0] + policy.weight * sep
        lifted = blended > logits[0]
        if policy.min_mix_logit is not None:
            lifted &= logits[0] >= policy.min_mix_logit
        combined = np.where(lifted, blended, logits[0])
        winner = np.where(lifted, best_sep, 0)
    else:
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
