"""SyntheticSource: tone bursts over noise, deterministic, finite or endless."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import pytest

from agent.audio.synthetic import SyntheticSource
from agent.config import SyntheticConfig

RATE = 22050


def _collect(src: SyntheticSource, max_chunks: int = 10_000) -> np.ndarray:
    chunks = []
    for _ in range(max_chunks):
        c = src.read(1.0)
        if c is None:
            break
        chunks.append(c)
    expected = 0
    for c in chunks:
        assert c.first_sample_index == expected and not c.discontinuity
        expected = c.end_sample_index
    return np.concatenate([c.samples for c in chunks])


def _peak_hz(x: np.ndarray) -> float:
    spectrum = np.abs(np.fft.rfft(x * np.hanning(x.shape[0])))
    return float(np.argmax(spectrum) * RATE / x.shape[0])


def _rms_dbfs(x: np.ndarray) -> float:
    return float(20 * np.log10(np.sqrt(np.mean(x.astype(np.float64) ** 2))))


def test_finite_length_and_bursts() -> None:
    cfg = SyntheticConfig(
        duration_s=6.0,
        tone_hz=[1000.0, 3000.0],
        burst_s=1.0,
        period_s=2.0,
        noise_dbfs=-60.0,
        tone_dbfs=-20.0,
        seed=1,
    )
    start = datetime(2024, 5, 1, tzinfo=UTC)
    src = SyntheticSource(cfg, RATE, start_utc=start, block_s=0.3)
    info = src.open()
    assert info.start_utc == start and info.sample_rate_hz == RATE and info.duration_s == 6.0
    x = _collect(src)
    assert src.finished and src.read(0.0) is None
    assert x.shape == (6 * RATE,) and x.dtype == np.float32
    # bursts at 0, 2, 4 s cycle through the tones; the gaps hold only the noise floor
    truth = src.bursts(6.0)
    assert [(b[0], b[1], b[2]) for b in truth] == [(0, 1, 1000.0), (2, 3, 3000.0), (4, 5, 1000.0)]
    for start_s, end_s, f_hz in truth:
        burst = x[round((start_s + 0.1) * RATE) : round((end_s - 0.1) * RATE)]
        assert _peak_hz(burst) == pytest.approx(f_hz, abs=2.0)
        # a sine of peak -20 dBFS has an RMS of -23 dBFS
        assert _rms_dbfs(burst) == pytest.approx(-23.0, abs=0.2)
        gap = x[round((end_s + 0.1) * RATE) : round((end_s + 0.9) * RATE)]
        assert _rms_dbfs(gap) == pytest.approx(-60.0, abs=0.5)


def test_deterministic_and_independent_of_chunking() -> None:
    cfg = SyntheticConfig(duration_s=2.0, seed=7)
    a = _collect(_opened(SyntheticSource(cfg, RATE, block_s=0.5)))
    b = _collect(_opened(SyntheticSource(cfg, RATE, block_s=0.137)))
    np.testing.assert_array_equal(a, b)
    other = _collect(_opened(SyntheticSource(SyntheticConfig(duration_s=2.0, seed=8), RATE)))
    assert not np.array_equal(a, other)


def _opened(src: SyntheticSource) -> SyntheticSource:
    src.open()
    return src


def test_endless_when_duration_is_none() -> None:
    src = _opened(SyntheticSource(SyntheticConfig(duration_s=None), RATE, block_s=1.0))
    for _ in range(20):
        assert src.read(0.0) is not None
    assert not src.finished
    assert src.open().duration_s is None
    src.close()
    assert src.finished


def test_realtime_does_not_run_ahead() -> None:
    src = _opened(
        SyntheticSource(SyntheticConfig(duration_s=1.0), RATE, realtime=True, block_s=0.5)
    )
    assert src.read(0.0) is None  # first block not due yet
    assert not src.finished


def test_levels_are_clipped_to_full_scale() -> None:
    cfg = SyntheticConfig(duration_s=1.0, tone_dbfs=0.0, noise_dbfs=0.0, burst_s=1.0)
    x = _collect(_opened(SyntheticSource(cfg, RATE)))
    assert np.max(np.abs(x)) <= 1.0


def test_factory_synthetic() -> None:
    from agent.audio.factory import make_source, make_sources
    from agent.config import AudioConfig

    audio = AudioConfig(
        source="synthetic", realtime=True, synthetic=SyntheticConfig(duration_s=1.0, seed=3)
    )
    sources = list(make_sources(audio, RATE, realtime_override=False))
    assert len(sources) == 1
    src = sources[0]
    assert isinstance(src, SyntheticSource) and not src.realtime and src.config.seed == 3
    assert isinstance(make_source(audio, RATE), SyntheticSource)
