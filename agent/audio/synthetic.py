"""A generated test signal: tone bursts over white noise, deterministic by seed.

Burst k starts at ``k * period_s``, lasts ``burst_s`` and uses ``tone_hz[k % len(tone_hz)]``.
Levels: the tone's *peak* amplitude is ``10 ** (tone_dbfs / 20)`` (a full-scale sine is 0 dBFS);
the noise is Gaussian with *RMS* ``10 ** (noise_dbfs / 20)``. Bursts get 5 ms raised-cosine ramps
so they do not click. The signal only depends on the sample index and the seed, not on how it is
cut into chunks: noise comes from one generator per block of ``_NOISE_BLOCK`` samples seeded with
(seed, block number).
"""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np

from agent.audio.chunk import AudioChunk, StreamInfo
from agent.audio.file_source import Pacer
from agent.config import SyntheticConfig

_NOISE_BLOCK = 4096
_RAMP_S = 0.005


class SyntheticSource:
    """Tone bursts over noise as an :class:`~agent.audio.chunk.AudioSource`.

    Finite when ``config.duration_s`` is set, endless otherwise. ``realtime=True`` paces chunks at
    the sample clock. ``start_utc`` defaults to the wall clock at :meth:`open`.
    """

    def __init__(
        self,
        config: SyntheticConfig,
        sample_rate_hz: int,
        realtime: bool = False,
        start_utc: datetime | None = None,
        block_s: float = 0.5,
    ) -> None:
        if sample_rate_hz <= 0 or block_s <= 0:
            raise ValueError("sample_rate_hz and block_s must be > 0")
        self.config = config
        self.sample_rate_hz = int(sample_rate_hz)
        self.realtime = realtime
        self.block_samples = max(1, round(block_s * sample_rate_hz))
        self._start_utc = start_utc
        self._total = (
            None if config.duration_s is None else round(config.duration_s * sample_rate_hz)
        )
        self._next_index = 0
        self._finished = False
        self._opened = False
        self._pacer = Pacer(self.sample_rate_hz)

    def open(self) -> StreamInfo:
        self._opened = True
        start = self._start_utc or datetime.now(UTC)
        self._pacer.start()
        tones = "/".join(f"{f:g}" for f in self.config.tone_hz)
        return StreamInfo(
            name=f"synthetic:{tones}Hz",
            sample_rate_hz=self.sample_rate_hz,
            start_utc=start,
            duration_s=self.config.duration_s,
        )

    @property
    def finished(self) -> bool:
        return self._finished

    def read(self, timeout_s: float) -> AudioChunk | None:
        if self._finished:
            return None
        if not self._opened:
            raise RuntimeError("read() before open()")
        n = self.block_samples
        if self._total is not None:
            n = min(n, self._total - self._next_index)
            if n <= 0:
                self._finished = True
                return None
        start = self._next_index
        if self.realtime and not self._pacer.wait_until(start + n, timeout_s):
            return None
        self._next_index += n
        if self._total is not None and self._next_index >= self._total:
            self._finished = True
        return AudioChunk(self.render(start, n), start)

    def render(self, start: int, n: int) -> np.ndarray:
        """Samples ``[start, start + n)`` of the signal (float32)."""
        return (self._noise(start, n) + self._tones(start, n)).clip(-1.0, 1.0).astype(np.float32)

    def bursts(self, until_s: float) -> list[tuple[float, float, float]]:
        """Ground truth: (start_s, end_s, tone_hz) of every burst starting before ``until_s``."""
        c = self.config
        out = []
        k = 0
        while k * c.period_s < until_s:
            start_s = k * c.period_s
            end_s = start_s + min(c.burst_s, c.period_s)
            out.append((start_s, end_s, c.tone_hz[k % len(c.tone_hz)]))
            k += 1
        return out

    def _noise(self, start: int, n: int) -> np.ndarray:
        rms = 10.0 ** (self.config.noise_dbfs / 20.0)
        first, last = start // _NOISE_BLOCK, (start + n - 1) // _NOISE_BLOCK
        blocks = [
            np.random.default_rng([self.config.seed % 2**64, b]).standard_normal(_NOISE_BLOCK)
            for b in range(first, last + 1)
        ]
        offset = start - first * _NOISE_BLOCK
        return np.concatenate(blocks)[offset : offset + n] * rms

    def _tones(self, start: int, n: int) -> np.ndarray:
        c = self.config
        sr = self.sample_rate_hz
        amp = 10.0 ** (c.tone_dbfs / 20.0)
        out = np.zeros(n)
        period = c.period_s * sr
        burst = min(c.burst_s, c.period_s) * sr  # longer bursts would overlap the next one
        ramp = max(1, round(_RAMP_S * sr))
        k = max(0, int((start - burst) // period))
        while k * period < start + n:
            b0 = round(k * period)
            b1 = round(k * period + burst)
            lo, hi = max(b0, start), min(b1, start + n)
            if lo < hi:
                idx = np.arange(lo, hi)
                t = (idx - b0) / sr  # phase restarts with each burst
                tone = amp * np.sin(2 * np.pi * c.tone_hz[k % len(c.tone_hz)] * t)
                edge = np.minimum(idx - b0, b1 - 1 - idx)  # distance to the nearer burst edge
                tone *= np.where(edge < ramp, 0.5 - 0.5 * np.cos(np.pi * edge / ramp), 1.0)
                out[lo - start : hi - start] += tone
            k += 1
        return out

    def close(self) -> None:
        self._finished = True

    def stats(self) -> dict[str, int | float]:
        return {"samples_out": self._next_index}
