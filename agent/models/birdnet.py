"""A classifier backend for user-supplied BirdNET-Analyzer V2.4-format TFLite models.

The BirdNET model is CC BY-NC-SA: Chorus never ships or downloads it; the user points the config
at their own copy. What we rely on is its I/O contract:

* input float32 ``[1, 144000]``: 3 s of mono audio at 48 kHz;
* output float32 ``[1, C]`` logits, one per line of the labels file
  (``Scientific name_Common name``, split at the first underscore);
* confidence = BirdNET-Analyzer >= 2.0's ``flat_sigmoid`` with ``sensitivity`` as a *shift*:
  ``1 / (1 + exp(-clip(logit + (sensitivity - 1) * 10, -20, 20)))``.

Windowing. The separator works on the pipeline's 5-s windows (22.05 kHz). Each channel of a window
(the mix and every separated channel) is resampled to 48 kHz and cut into 3-s sub-windows that
start at evenly spaced offsets from 0 to 2 s, overlapping by at least ``overlap_s`` (1 s -> offsets
0 and 2 s; 2 s -> 0, 1, 2 s). A channel's logit per species is the max over its sub-windows; then,
exactly as for our own classifier, the max over channels wins and the winning channel is reported.
Consecutive 5-s windows (hop 2.5 s) are merged into events by the usual event detector.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from agent.audio.resample import resample
from agent.errors import ConfigError
from agent.models.manifest import Label
from agent.models.runtime import TFLiteModel

BIRDNET_SAMPLE_RATE_HZ = 48000
BIRDNET_WINDOW_SAMPLES = 144000  # 3 s
LOGIT_CLIP = 20.0  # BirdNET-Analyzer >= 2.0 clips the shifted logit to +/-20


@dataclass(frozen=True)
class BirdNetLabel:
    scientific_name: str
    common_name: str


def parse_birdnet_labels(
    path: str | Path, key: str = "classifier.birdnet.labels"
) -> list[BirdNetLabel]:
    """Read a BirdNET labels file: one ``Scientific name_Common name`` per line.

    The split is at the *first* underscore (scientific names never contain one; common names of
    non-bird classes sometimes do). Commas and other punctuation are kept as they are.
    """
    p = Path(path)
    try:
        lines = p.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise ConfigError([f"{key}: file not found: {p}"]) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError([f"{key}: cannot read {p}: {exc}"]) from None
    labels = []
    for number, line in enumerate(lines, start=1):
        line = line.strip()
        if not line:
            continue
        sci, sep, common = line.partition("_")
        if not sep or not sci.strip():
            raise ConfigError(
                [f"{key}: {p}:{number}: expected 'Scientific name_Common name', got {line!r}"]
            )
        labels.append(BirdNetLabel(sci.strip(), common.strip()))
    if not labels:
        raise ConfigError([f"{key}: {p} holds no labels"])
    return labels


def _code_for(scientific_name: str) -> str:
    """Stable species code for a name absent from our label table: the lower-case scientific
    name with runs of non-alphanumerics as '-' (e.g. ``turdus-migratorius``)."""
    return re.sub(r"[^0-9a-z]+", "-", scientific_name.lower()).strip("-")


def map_labels(backend: Sequence[BirdNetLabel], table: Sequence[Label]) -> tuple[Label, ...]:
    """Species identity across backends: match by scientific name (case-insensitive).

    A backend label found in our table takes our species code, names and taxonomy, so a detection
    carries the same fields whichever backend produced it; others get a code derived from the
    scientific name and BirdNET's common name.
    """
    ours = {lab.scientific_name.strip().lower(): lab for lab in table if lab.scientific_name}
    out = []
    for b in backend:
        match = ours.get(b.scientific_name.lower())
        out.append(
            match
            if match is not None
            else Label(_code_for(b.scientific_name), b.scientific_name, b.common_name)
        )
    return tuple(out)


def shift_logits(logits: np.ndarray, sensitivity: float) -> np.ndarray:
    """Fold BirdNET's sensitivity into the logits, so ``sigmoid`` of the result is exactly
    BirdNET-Analyzer's confidence: ``clip(logit + (sensitivity - 1) * 10, -20, 20)``."""
    return np.clip(logits + (sensitivity - 1.0) * 10.0, -LOGIT_CLIP, LOGIT_CLIP).astype(np.float32)


def subwindow_offsets(total_samples: int, sub_samples: int, overlap_samples: int) -> list[int]:
    """Start offsets of sub-windows covering ``total_samples`` with at least ``overlap_samples``
    of overlap, evenly spaced from 0 to ``total - sub`` (one window at 0 if it does not fit)."""
    if total_samples <= sub_samples:
        return [0]
    span = total_samples - sub_samples
    step = max(1, sub_samples - overlap_samples)
    count = math.ceil(span / step) + 1
    return [round(i * span / (count - 1)) for i in range(count)]


def check_io(
    model: TFLiteModel, key: str, input_shape: tuple[int, ...], outputs: int, what: str
) -> None:
    """Refuse a file whose I/O signature is not the expected one, naming the config key."""
    problems = []
    if model.input.shape != input_shape or model.input.dtype != np.float32:
        problems.append(
            f"input is {model.input.dtype} {list(model.input.shape)}, {what} takes "
            f"float32 {list(input_shape)}"
        )
    if model.output.shape != (1, outputs):
        problems.append(
            f"output is {list(model.output.shape)}, expected [1, {outputs}] (one per label)"
        )
    if problems:
        raise ConfigError([f"{key}: {model.path}: " + "; ".join(problems)])


class BirdNetClassifier:
    """Classifier stage with the same interface as the bundle's ``Classifier``."""

    name = "birdnet"
    mix_only_indices: tuple[int, ...] = ()

    def __init__(
        self,
        model_path: str | Path,
        labels_path: str | Path,
        sensitivity: float,
        overlap_s: float,
        pipeline_rate_hz: int,
        window_samples: int,
        label_table: Sequence[Label] = (),
        num_threads: int = 1,
    ) -> None:
        backend_labels = parse_birdnet_labels(labels_path)
        if not Path(model_path).is_file():
            raise ConfigError([f"classifier.birdnet.model: file not found: {model_path}"])
        self.model = TFLiteModel(model_path, num_threads)
        check_io(
            self.model,
            "classifier.birdnet.model",
            (1, BIRDNET_WINDOW_SAMPLES),
            len(backend_labels),
            "BirdNET V2.4",
        )
        self.labels = map_labels(backend_labels, label_table)
        self.sensitivity = sensitivity
        self.pipeline_rate_hz = pipeline_rate_hz
        total = math.ceil(window_samples * BIRDNET_SAMPLE_RATE_HZ / pipeline_rate_hz)
        self.offsets = subwindow_offsets(
            total, BIRDNET_WINDOW_SAMPLES, round(overlap_s * BIRDNET_SAMPLE_RATE_HZ)
        )

    def channel_logits(self, channel: np.ndarray) -> np.ndarray:
        """(N,) at the pipeline rate -> (C,) raw logits: max over the 3-s sub-windows."""
        x = resample(channel, self.pipeline_rate_hz, BIRDNET_SAMPLE_RATE_HZ)
        need = self.offsets[-1] + BIRDNET_WINDOW_SAMPLES
        if x.shape[0] < need:
            x = np.pad(x, (0, need - x.shape[0]))
        subs = [
            self.model.run(x[np.newaxis, o : o + BIRDNET_WINDOW_SAMPLES])[0] for o in self.offsets
        ]
        return np.max(np.stack(subs), axis=0)

    def classify(self, channels: np.ndarray) -> np.ndarray:
        """(K, N) channels -> (K, C) sensitivity-shifted logits."""
        raw = np.stack([self.channel_logits(ch) for ch in channels])
        return shift_logits(raw, self.sensitivity)
