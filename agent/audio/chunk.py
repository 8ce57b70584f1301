"""The unit of audio that flows from a source to the windower, and the source interface."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

import numpy as np


@dataclass(frozen=True)
class AudioChunk:
    """A block of mono float32 samples at the model sample rate.

    ``first_sample_index`` counts samples since the stream's ``start_utc`` (the sample clock),
    so a chunk's time is ``start_utc + first_sample_index / sample_rate_hz`` — never wall time.
    ``discontinuity`` is True for the first chunk after a gap (device lost, overflow): the
    windower then discards the partial window in progress instead of stitching across the gap.
    """

    samples: np.ndarray  # (n,) float32 in [-1, 1]
    first_sample_index: int
    discontinuity: bool = False

    @property
    def end_sample_index(self) -> int:
        return self.first_sample_index + int(self.samples.shape[0])


@dataclass(frozen=True)
class StreamInfo:
    """What a source tells the pipeline once it is open."""

    name: str  # human-readable, e.g. "file:dawn.wav" or "mic:USB Audio (hw:1,0)"
    sample_rate_hz: int  # rate of the chunks it yields (already resampled to the model rate)
    start_utc: datetime  # UTC time of sample index 0 (timezone-aware)
    duration_s: float | None = None  # known for files, None for live streams


class AudioSource(Protocol):
    """One small interface for every input. ``read`` blocks at most ``timeout_s``.

    Usage: ``info = src.open()``; then ``src.read(timeout_s)`` until it returns None *and*
    ``src.finished`` is True; finally ``src.close()``. ``read`` returning None with
    ``finished`` False just means "no audio yet" (a live stream between callbacks).
    """

    def open(self) -> StreamInfo: ...

    def read(self, timeout_s: float) -> AudioChunk | None: ...

    @property
    def finished(self) -> bool: ...

    def close(self) -> None: ...

    def stats(self) -> dict[str, int | float]:
        """Counters for health reporting (overflows, reconnects, gap seconds...)."""
        ...
