"""Ring buffer + windower: turn a stream of chunks into overlapping fixed-length windows.

Time comes from the sample clock only: a window's UTC start is computed from its integer sample
index and the stream's start time, so timestamps stay exact (to the microsecond) over days of
audio and never drift with wall-clock jitter.

Non-finite samples (NaN, +-Inf: a broken decoder, a float WAV written by a crashed recorder) are
a gap, like a lost device: no window ever contains one, the window in progress is discarded, and
the stream resumes at the next finite sample. A model fed NaN does not fail, it answers with a
constant (an int8 input quantizes NaN to one fixed value), so this is the only place that can
keep such audio from becoming a confident detection.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from datetime import datetime, timedelta

import numpy as np

from agent.audio.chunk import AudioChunk


def sample_time(start_utc: datetime, sample_index: int, sample_rate_hz: int) -> datetime:
    """UTC time of ``sample_index``, from integers only (no accumulated float error)."""
    whole_s, rest = divmod(sample_index, sample_rate_hz)
    micro = (rest * 1_000_000 + sample_rate_hz // 2) // sample_rate_hz  # rounded to 1 us
    return start_utc + timedelta(seconds=whole_s, microseconds=micro)


@dataclass(frozen=True)
class Window:
    """One analysis window. ``samples`` is zero-padded past ``valid_samples`` at a stream's end."""

    index: int  # running number within the stream
    samples: np.ndarray  # (window_samples,) float32
    start_sample_index: int
    valid_samples: int
    sample_rate_hz: int
    stream_start_utc: datetime

    @property
    def start_s(self) -> float:
        """Offset of the window start from the stream start, in seconds."""
        return self.start_sample_index / self.sample_rate_hz

    @property
    def end_s(self) -> float:
        """Offset of the end of the *real* audio in this window."""
        return (self.start_sample_index + self.valid_samples) / self.sample_rate_hz

    @property
    def start_utc(self) -> datetime:
        return sample_time(self.stream_start_utc, self.start_sample_index, self.sample_rate_hz)

    @property
    def end_utc(self) -> datetime:
        end_index = self.start_sample_index + self.valid_samples
        return sample_time(self.stream_start_utc, end_index, self.sample_rate_hz)


class RingBuffer:
    """Fixed-capacity float32 ring addressed by absolute sample index.

    Holds the most recent ``capacity`` samples written. Reading an index range that was already
    overwritten or not yet written raises ``IndexError``.
    """

    def __init__(self, capacity: int) -> None:
        if capacity <= 0:
            raise ValueError("capacity must be > 0")
        self._data = np.zeros(capacity, dtype=np.float32)
        self._capacity = capacity
        self._end = 0  # absolute index one past the newest sample
        self._start = 0  # absolute index of the oldest sample held

    @property
    def start_index(self) -> int:
        return self._start

    @property
    def end_index(self) -> int:
        return self._end

    def reset(self, index: int) -> None:
        """Drop everything and continue at absolute ``index`` (after a gap)."""
        self._start = self._end = index

    def write(self, samples: np.ndarray) -> None:
        n = int(samples.shape[0])
        if n > self._capacity:  # only the newest `capacity` samples can survive
            samples = samples[-self._capacity :]
        m = int(samples.shape[0])
        pos = (self._end + n - m) % self._capacity  # ring slot of the first sample kept
        first = min(m, self._capacity - pos)
        self._data[pos : pos + first] = samples[:first]
        self._data[: m - first] = samples[first:]
        self._end += n
        self._start = max(self._start, self._end - self._capacity)

    def read(self, start: int, length: int) -> np.ndarray:
        if start < self._start or start + length > self._end:
            raise IndexError(
                f"samples [{start}, {start + length}) not in buffer [{self._start}, {self._end})"
            )
        pos = start % self._capacity
        first = min(length, self._capacity - pos)
        out = np.empty(length, dtype=np.float32)
        out[:first] = self._data[pos : pos + first]
        out[first:] = self._data[: length - first]
        return out


class Windower:
    """Cuts ``window_samples``-long windows every ``hop_samples`` from pushed chunks."""

    def __init__(
        self,
        window_samples: int,
        hop_samples: int,
        sample_rate_hz: int,
        stream_start_utc: datetime,
        min_tail_samples: int | None = None,
    ) -> None:
        if not 0 < hop_samples <= window_samples:
            raise ValueError("need 0 < hop_samples <= window_samples")
        self.window_samples = window_samples
        self.hop_samples = hop_samples
        self.sample_rate_hz = sample_rate_hz
        self.stream_start_utc = stream_start_utc
        # A final, partly filled window is emitted at flush() only if it adds at least this much
        # audio not covered by an earlier window (default: half a hop).
        self.min_tail_samples = hop_samples // 2 if min_tail_samples is None else min_tail_samples
        self._ring = RingBuffer(window_samples + hop_samples + 1)
        self._next_start: int | None = None  # absolute index of the next window start
        self._covered_end = 0  # end index of the real audio covered by emitted windows
        self._count = 0
        self.dropped_samples = 0  # audio discarded at discontinuities (partial windows)
        self.nonfinite_samples = 0  # NaN/Inf samples skipped as gaps
        self.nonfinite_gaps = 0  # runs of them (one stretch over several chunks counts once)
        self._in_nonfinite = False  # the last sample pushed was non-finite: the next is a gap

    def push(self, chunk: AudioChunk) -> list[Window]:
        """Add a chunk; return the windows it completed (oldest first).

        Non-finite samples are cut out and the audio after them starts a new segment (see the
        module docstring): they never reach a window.
        """
        finite = np.isfinite(chunk.samples)
        if finite.all():
            gap, self._in_nonfinite = self._in_nonfinite, False
            return self._push(chunk, gap)
        windows: list[Window] = []
        for start, stop, ok in _runs(finite):
            if not ok:
                self.nonfinite_samples += stop - start
                self.nonfinite_gaps += 0 if start == 0 and self._in_nonfinite else 1
                self._in_nonfinite = True
                continue
            part = AudioChunk(chunk.samples[start:stop], chunk.first_sample_index + start)
            windows += self._push(part, self._in_nonfinite or (start == 0 and chunk.discontinuity))
            self._in_nonfinite = False
        return windows

    def _push(self, chunk: AudioChunk, after_gap: bool) -> list[Window]:
        if self._next_start is None or chunk.discontinuity or after_gap:
            if self._next_start is not None:
                self.dropped_samples += max(0, self._ring.end_index - self._covered_end)
            self._ring.reset(chunk.first_sample_index)
            self._next_start = chunk.first_sample_index
            self._covered_end = chunk.first_sample_index
        elif chunk.first_sample_index != self._ring.end_index:
            raise ValueError(
                f"chunk starts at sample {chunk.first_sample_index}, expected "
                f"{self._ring.end_index} (gaps must be flagged as discontinuities)"
            )
        windows: list[Window] = []
        samples = chunk.samples
        # Write in pieces no larger than a hop so the ring never overwrites an unread window.
        for offset in range(0, samples.shape[0], self.hop_samples):
            self._ring.write(samples[offset : offset + self.hop_samples])
            while self._next_start + self.window_samples <= self._ring.end_index:
                windows.append(self._emit(self.window_samples))
        return windows

    def flush(self) -> list[Window]:
        """End of stream: emit a zero-padded final window if enough new audio is left."""
        if self._next_start is None:
            return []
        available = self._ring.end_index - self._next_start
        new_audio = self._ring.end_index - self._covered_end
        if available <= 0 or new_audio < max(1, self.min_tail_samples):
            return []
        return [self._emit(available)]

    def _emit(self, valid: int) -> Window:
        assert self._next_start is not None
        samples = self._ring.read(self._next_start, valid)
        if valid < self.window_samples:
            samples = np.pad(samples, (0, self.window_samples - valid))
        window = Window(
            index=self._count,
            samples=samples,
            start_sample_index=self._next_start,
            valid_samples=valid,
            sample_rate_hz=self.sample_rate_hz,
            stream_start_utc=self.stream_start_utc,
        )
        self._count += 1
        self._covered_end = self._next_start + valid
        self._next_start += self.hop_samples
        return window


def _runs(mask: np.ndarray) -> list[tuple[int, int, bool]]:
    """(start, stop, value) of each run of equal values in a 1-D boolean array."""
    edges = np.flatnonzero(mask[1:] != mask[:-1]) + 1
    bounds = [0, *edges.tolist(), int(mask.shape[0])]
    return [(a, b, bool(mask[a])) for a, b in itertools.pairwise(bounds)]
