"""Evaluation on strongly labelled 5-s soundscape segments (mix-only: no separation).

Metrics are computed on the species head without its class 0 (``unknown``, never a label of
a target segment): CMAP over classes with >= 5 positives, lwlrap and top-1 precision
(:mod:`modeltools.evaluation.metrics`, scikit-learn tie conventions).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from modeltools.classifier import frontend as fe
from modeltools.data.audio_io import read_segment
from modeltools.data.dataset import Dataset, DatasetError

log = logging.getLogger(__name__)


def segment_set(
    datasets: Sequence[Dataset], split: str = "test", limit: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """(audio (N, 110250) float32, species multi-hot (N, C)) of a split's labelled segments.

    Segments with labels outside the taxonomy (``unknown_labels``) are skipped: their label set
    is incomplete. ``limit`` takes an evenly spaced subset (deterministic).
    """
    items = []
    for ds in datasets:
        recs = ds.by_id()
        for seg in ds.segments:
            rec = recs.get(seg.recording_id)
            if rec is None or rec.split != split or seg.unknown_labels:
                continue
            items.append((ds, rec, seg))
    if not items:
        raise DatasetError(f"no labelled segments in split {split!r}")
    if limit is not None and limit < len(items):
        idx = np.linspace(0, len(items) - 1, limit).round().astype(int)
        items = [items[i] for i in idx]
    n = fe.WINDOW_SAMPLES
    audio = np.zeros((len(items), n), np.float32)
    labels = []
    for k, (ds, rec, seg) in enumerate(items):
        start = round(seg.start_s * ds.sample_rate_hz)
        x = read_segment(ds.path(rec), start, min(start + n, rec.num_samples))
        audio[k, : len(x)] = x[:n]
        labels.append(ds.taxonomy.encode(seg.labels)["species"])
    return audio, np.stack(labels)


def predict_logits(model: Any, audio: np.ndarray, batch_size: int = 16) -> dict[str, np.ndarray]:
    """Logits of every head for waveforms (N, 110250), in inference mode (no low-pass)."""
    import tensorflow as tf

    outs: dict[str, list[np.ndarray]] = {}
    names = set(model.input_names) if hasattr(model, "input_names") else {"audio", "lowpass"}
    for i in range(0, len(audio), batch_size):
        a = tf.constant(audio[i : i + batch_size])
        inputs: dict[str, Any] = {"audio": a}
        if "lowpass" in names or len(model.inputs) > 1:
            inputs["lowpass"] = tf.ones((a.shape[0], fe.MEL_BANDS), tf.float32)
        res = model(inputs, training=False)
        for k, v in res.items():
            outs.setdefault(k, []).append(np.asarray(v))
    return {k: np.concatenate(v) for k, v in outs.items()}


def species_metrics(logits: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """CMAP (>= 5 positives), lwlrap and top-1 precision without the ``unknown`` column."""
    from modeltools.evaluation.metrics import cmap, lwlrap, top1_precision

    s, y = np.asarray(logits)[:, 1:], np.asarray(labels)[:, 1:]
    res = {"cmap": cmap(s, y, min_positives=5)[0]}
    try:
        res["lwlrap"] = lwlrap(s, y)
    except ValueError:  # pragma: no cover - no labelled example
        res["lwlrap"] = math.nan
    res["top1"] = top1_precision(s, y, labeled_only=True)
    return res
