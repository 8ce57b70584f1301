from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.audio.chunk import AudioChunk
from agent.windowing import RingBuffer, Windower, sample_time

T0 = datetime(2026, 5, 1, 4, 30, tzinfo=UTC)


def chunks_of(signal: np.ndarray, sizes: list[int], start: int = 0) -> list[AudioChunk]:
    out, pos = [], 0
    for n in sizes:
        if pos >= len(signal):
            break
        out.append(AudioChunk(signal[pos : pos + n], start + pos))
        pos += n
    if pos < len(signal):
        out.append(AudioChunk(signal[pos:], start + pos))
    return out


def test_ring_buffer_wraps_and_refuses_overwritten_ranges() -> None:
    ring = RingBuffer(10)
    ring.write(np.arange(7, dtype=np.float32))
    ring.write(np.arange(7, 14, dtype=np.float32))
    assert ring.start_index == 4 and ring.end_index == 14
    np.testing.assert_array_equal(ring.read(4, 10), np.arange(4, 14))
    with pytest.raises(IndexError):
        ring.read(3, 2)
    with pytest.raises(IndexError):
        ring.read(10, 5)


def test_ring_buffer_write_larger_than_capacity_keeps_newest() -> None:
    ring = RingBuffer(5)
    ring.write(np.arange(12, dtype=np.float32))
    np.testing.assert_array_equal(ring.read(7, 5), np.arange(7, 12))


@settings(max_examples=60, deadline=None)
@given(
    sizes=st.lists(st.integers(1, 700), min_size=1, max_size=40),
    window=st.integers(50, 400),
    hop_frac=st.floats(0.1, 1.0),
)
def test_windows_are_exact_slices_for_any_chunking(
    sizes: list[int], window: int, hop_frac: float
) -> None:
    hop = max(1, int(window * hop_frac))
    signal = np.arange(sum(sizes), dtype=np.float32)
    w = Windower(window, hop, 1000, T0, min_tail_samples=10**9)
    windows = [x for c in chunks_of(signal, sizes) for x in w.push(c)]
    expected_count = 0 if len(signal) < window else (len(signal) - window) // hop + 1
    assert len(windows) == expected_count
    for i, win in enumerate(windows):
        assert win.index == i and win.start_sample_index == i * hop
        np.testing.assert_array_equal(win.samples, signal[i * hop : i * hop + window])


def test_flush_pads_final_partial_window_and_reports_real_end() -> None:
    sr = 100
    w = Windower(500, 250, sr, T0)  # 5 s windows, 2.5 s hop
    signal = np.ones(1400, dtype=np.float32)  # 14 s
    windows = w.push(AudioChunk(signal, 0)) + w.flush()
    assert [x.start_s for x in windows] == [0.0, 2.5, 5.0, 7.5, 10.0]
    last = windows[-1]
    assert last.valid_samples == 400 and last.end_s == 14.0
    assert last.samples[:400].sum() == 400 and not last.samples[400:].any()


def test_flush_skips_tail_shorter_than_minimum() -> None:
    w = Windower(500, 250, 100, T0, min_tail_samples=100)
    windows = w.push(AudioChunk(np.ones(1050, dtype=np.float32), 0))
    assert windows[-1].start_sample_index + 500 == 1000
    assert w.flush() == []  # only 50 new samples (< 100) beyond the last window


def test_timestamps_exact_after_hours_without_drift() -> None:
    sr = 22050
    hop = int(2.5 * sr)
    w = Windower(5 * sr, hop, sr, T0)
    # Start 10 hours into the stream with a big chunk index, as a long-running agent would be.
    start = 10 * 3600 * sr + 7
    chunk = np.zeros(6 * sr, dtype=np.float32)
    windows = w.push(AudioChunk(chunk, start, discontinuity=True))
    expected = T0 + timedelta(hours=10, microseconds=round(7 * 1e6 / sr))
    assert windows[0].start_utc == expected
    # The integer clock: 1,000,000 hops later the time is exactly hop*n/sr seconds on.
    assert sample_time(T0, 1_000_000 * hop, sr) == T0 + timedelta(seconds=2.5 * 1_000_000)
    assert sample_time(T0, 22049, sr) == T0 + timedelta(microseconds=999955)


def test_discontinuity_restarts_the_grid_and_counts_dropped_audio() -> None:
    w = Windower(100, 50, 100, T0)
    assert len(w.push(AudioChunk(np.zeros(130, dtype=np.float32), 0))) == 1
    after = w.push(AudioChunk(np.ones(100, dtype=np.float32), 1000, discontinuity=True))
    assert [x.start_sample_index for x in after] == [1000]
    assert w.dropped_samples == 30  # samples 100..130 never made it into a window


def test_unflagged_gap_is_an_error() -> None:
    w = Windower(100, 50, 100, T0)
    w.push(AudioChunk(np.zeros(30, dtype=np.float32), 0))
    with pytest.raises(ValueError, match="discontinuities"):
        w.push(AudioChunk(np.zeros(30, dtype=np.float32), 40))


@settings(max_examples=60, deadline=None)
@given(
    sizes=st.lists(st.integers(1, 300), min_size=1, max_size=30),
    stretches=st.lists(st.tuples(st.integers(0, 2000), st.integers(1, 120)), max_size=4),
    value=st.sampled_from([np.nan, np.inf, -np.inf]),
)
def test_nonfinite_samples_are_a_gap_for_any_chunking(
    sizes: list[int], stretches: list[tuple[int, int]], value: float
) -> None:
    """No window ever holds a NaN/Inf sample; every one is counted; windows restart after."""
    signal = np.arange(2000, dtype=np.float32)
    for start, n in stretches:
        signal[start : start + n] = value
    w = Windower(100, 50, 100, T0)
    windows = [x for c in chunks_of(signal, sizes) for x in w.push(c)] + w.flush()
    bad = ~np.isfinite(signal)
    assert w.nonfinite_samples == int(bad.sum())
    assert w.nonfinite_gaps == int(np.count_nonzero(np.diff(bad.astype(int), prepend=0) == 1))
    for win in windows:
        assert np.all(np.isfinite(win.samples))
        real = signal[win.start_sample_index : win.start_sample_index + win.valid_samples]
        np.testing.assert_array_equal(win.samples[: win.valid_samples], real)


def test_nonfinite_stretch_over_chunks_is_one_gap_and_drops_the_window_in_progress() -> None:
    w = Windower(100, 50, 100, T0)
    assert len(w.push(AudioChunk(np.ones(130, dtype=np.float32), 0))) == 1
    assert w.push(AudioChunk(np.full(70, np.nan, dtype=np.float32), 130)) == []
    after = w.push(AudioChunk(np.r_[np.full(20, np.inf), np.ones(120)].astype(np.float32), 200))
    assert [x.start_sample_index for x in after] == [220]  # the grid restarts after the gap
    assert (w.nonfinite_samples, w.nonfinite_gaps) == (90, 1)
    assert w.dropped_samples == 30  # samples 100..130: a partial window before the gap
