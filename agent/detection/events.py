"""Scores -> detections: thresholds, include/exclude lists, and merging windows into events.

With hop < window, a bird singing for 8 s lights up several overlapping windows. With merging
on, consecutive windows (each overlapping or touching the previous) in which a species passes
its threshold become one event from the first window's start to the last window's end, with
the highest confidence seen and the channel that produced it. An event closes when a window
without the species arrives, when it reaches ``max_event_s`` (so live streams report a long
chorus periodically instead of never), or at the end of the stream.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

import numpy as np

from agent.config import DetectionConfig
from agent.detection.combine import Combined, sigmoid
from agent.detection.types import Detection
from agent.models.manifest import Label
from agent.windowing import Window, sample_time


@dataclass(frozen=True)
class DetectionContext:
    """Fields every detection of one stream shares."""

    classifier: str
    bundle_name: str
    bundle_version: str
    device_id: str
    source: str
    channel_names: tuple[str, ...]


@dataclass
class _OpenEvent:
    start_index: int  # sample indices (stream clock)
    end_index: int
    first_window: int
    last_window: int
    windows: int
    logit: float
    channel: int
    best_window: int  # index of the window that gave the max logit (its audio is the clip)


class EventDetector:
    """Per stream and per classifier state: turns each window's combined scores into events."""

    def __init__(
        self,
        labels: tuple[Label, ...],
        config: DetectionConfig,
        context: DetectionContext,
        sample_rate_hz: int,
        stream_start_utc: datetime,
    ) -> None:
        self.labels = labels
        self.context = context
        self.config = config
        self.sample_rate_hz = sample_rate_hz
        self.stream_start_utc = stream_start_utc
        codes = [lab.species_code for lab in labels]
        self.thresholds = np.array(
            [config.species_thresholds.get(c, config.threshold) for c in codes], dtype=np.float64
        )
        include = set(config.include) or set(codes)
        self.active = np.array([c in include and c not in set(config.exclude) for c in codes])
        self.max_event_samples = round(config.max_event_s * sample_rate_hz)
        self._open: dict[int, _OpenEvent] = {}
        # detection id -> index of its best window, for clip saving; popped by the consumer.
        self.best_window_of: dict[str, int] = {}

    def process(
        self, window: Window, scores: Combined, allowed: np.ndarray | None = None
    ) -> list[Detection]:
        """Feed one window's combined scores; return the events that closed (oldest first).

        ``allowed`` (C,) bool, when given, masks species out for this window (location filter).
        """
        confidence = sigmoid(scores.logits.astype(np.float64))
        hits = self.active & (confidence >= self.thresholds)
        if allowed is not None:
            hits &= allowed
        start = window.start_sample_index
        end = start + window.valid_samples
        closed: list[Detection] = []
        for c in list(self._open):
            if not hits[c]:
                closed.append(self._close(c))
        for c in (int(i) for i in np.flatnonzero(hits)):
            logit, channel = float(scores.logits[c]), int(scores.winner[c])
            ev = self._open.get(c)
            if not self.config.merge:
                ev = _OpenEvent(
                    start, end, window.index, window.index, 1, logit, channel, window.index
                )
                closed.append(self._to_detection(c, ev))
                continue
            if ev is not None and (
                start > ev.end_index
                or window.index != ev.last_window + 1
                or end - ev.start_index > self.max_event_samples
            ):
                closed.append(self._close(c))
                ev = None
            if ev is None:
                self._open[c] = _OpenEvent(
                    start, end, window.index, window.index, 1, logit, channel, window.index
                )
            else:
                ev.end_index, ev.last_window, ev.windows = end, window.index, ev.windows + 1
                if logit > ev.logit:
                    ev.logit, ev.channel, ev.best_window = logit, channel, window.index
        return sorted(closed, key=lambda d: (d.start_s, d.species_code))

    def open_windows(self) -> set[int]:
        """Indices of the windows that open events would take their clip from."""
        return {ev.best_window for ev in self._open.values()}

    def shift_clock(self, delta: timedelta) -> None:
        """Re-anchor after a wall-clock jump: later detections are stamped ``delta`` later."""
        self.stream_start_utc += delta

    def flush(self) -> list[Detection]:
        """End of stream: close every open event."""
        closed = [self._close(c) for c in list(self._open)]
        return sorted(closed, key=lambda d: (d.start_s, d.species_code))

    def _close(self, c: int) -> Detection:
        return self._to_detection(c, self._open.pop(c))

    def _to_detection(self, c: int, ev: _OpenEvent) -> Detection:
        lab, ctx, sr = self.labels[c], self.context, self.sample_rate_hz
        det = Detection(
            species_code=lab.species_code,
            scientific_name=lab.scientific_name,
            common_name=lab.common_name,
            confidence=float(sigmoid(np.array([ev.logit]))[0]),
            logit=ev.logit,
            start_utc=sample_time(self.stream_start_utc, ev.start_index, sr),
            end_utc=sample_time(self.stream_start_utc, ev.end_index, sr),
            start_s=ev.start_index / sr,
            end_s=ev.end_index / sr,
            channel=ctx.channel_names[ev.channel],
            classifier=ctx.classifier,
            bundle_name=ctx.bundle_name,
            bundle_version=ctx.bundle_version,
            device_id=ctx.device_id,
            source=ctx.source,
            windows=ev.windows,
        )
        self.best_window_of[det.id] = ev.best_window
        return det
