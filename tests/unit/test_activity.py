"""Activity detection (ALGORITHMS.md §2.8): known bursts, the paper's quirks, the frontend."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import signal

from modeltools.data.activity import (
    detect_windows,
    find_peaks,
    find_peaks_from_audio,
    midpoint_to_interval,
    mixture_denoise,
    peak_widths,
)
from modeltools.data.melspec import mel_weight_matrix, melspec

SR = 22050


def bursts(duration_s: float, at: list[tuple[float, float, float]], seed: int = 0) -> np.ndarray:
    """Low noise with 1.5-s warbled tone bursts: (centre_s, freq_hz, amplitude)."""
    r = np.random.default_rng(seed)
    x = 0.003 * r.standard_normal(int(duration_s * SR))
    n = int(1.5 * SR)
    t = np.arange(n) / SR
    env = np.sin(np.pi * t / 1.5) ** 2
    for centre, f, amp in at:
        y = amp * env * np.sin(2 * np.pi * (f * t + 40 * np.sin(2 * np.pi * 7 * t)))
        start = int((centre - 0.75) * SR)
        x[start : start + n] += y
    return x.astype(np.float32)


def test_windows_are_centred_on_the_bursts_loudest_first() -> None:
    # Same song at four levels: the peak energy (summed denoised log-mel) orders them.
    centres = [(5.0, 3500, 0.05), (12.0, 3500, 0.5), (20.0, 3500, 0.2), (27.0, 3500, 0.1)]
    x = bursts(33.0, centres)
    wins = detect_windows(x, SR)
    assert 1 <= len(wins) <= 5
    assert all(w.length == 6 * SR for w in wins)
    found = [w.peak_sample / SR for w in wins]
    for c, _, _ in centres:  # every burst has a window whose peak is on it
        assert min(abs(c - p) for p in found) < 0.5, (c, found)
    assert all(abs(p - min(centres, key=lambda c: abs(c[0] - p))[0]) < 0.5 for p in found)
    energies = [w.energy for w in wins]
    assert energies == sorted(energies, reverse=True)
    assert [round(p) for p in found] == [12, 20, 27, 5]  # loudest first
    for w in wins:  # windows stay inside the file and are centred unless at an edge
        assert 0 <= w.start < w.end <= x.shape[0]


def test_at_most_max_intervals_windows() -> None:
    centres = [(4.0 + 5 * k, 3000 + 300 * k, 0.1 + 0.05 * k) for k in range(8)]
    x = bursts(45.0, centres)
    assert len(detect_windows(x, SR, max_intervals=5)) == 5
    assert len(detect_windows(x, SR, max_intervals=3)) == 3


def test_file_no_longer_than_the_interval_is_used_whole() -> None:
    x = bursts(6.0, [(3.0, 3000, 0.3)])
    (w,) = detect_windows(x, SR, interval_s=6.0)
    assert (w.start, w.end) == (0, x.shape[0])
    assert len(detect_windows(bursts(5.0, [(2.5, 3000, 0.3)]), SR, 6.0)) == 1


def test_peaks_in_the_first_03_s_are_dropped_by_the_slice_quirk() -> None:
    spikes = np.zeros(600)
    spikes[[15, 300, 450]] = 100.0
    energy = np.convolve(spikes, np.ones(41) / 41, mode="same")
    energy += 0.1 * np.random.default_rng(0).random(600)
    raw = signal.find_peaks_cwt(energy, peak_widths())
    early = [int(p) for p in raw if p < 30]
    assert early, raw  # the CWT does see the first bump ...
    threshold = 1.5 * energy.mean()
    assert np.any(energy[: early[0] + 30] >= threshold)  # ... and it is loud enough ...
    kept = find_peaks(energy)
    assert not any(p < 30 for p in kept)  # ... but energy[p-30:p+30] is empty: dropped
    assert any(abs(p - 300) <= 5 for p in kept) and any(abs(p - 450) <= 5 for p in kept)


def test_peak_widths_are_the_papers() -> None:
    assert list(peak_widths(100)) == list(range(50, 200, 15))
    assert len(peak_widths(100)) == 10


def test_frame_to_sample_uses_220_5_samples_per_frame() -> None:
    x = bursts(20.0, [(10.0, 3000, 0.3)])
    (peak, _), *_ = find_peaks_from_audio(x, SR, max_peaks=1)
    assert (peak * 100 / SR) == pytest.approx(round(peak * 100 / SR))  # integer frame
    assert peak % 220.5 == pytest.approx(0.0, abs=1e-6) or peak % 220.5 == pytest.approx(220.5)


@pytest.mark.parametrize(
    ("mid", "length", "lo", "hi", "expected"),
    [
        (50_000.0, 20_000, 0, 100_000, (40_000, 60_000)),
        (5_000.0, 20_000, 0, 100_000, (0, 20_000)),  # shifted right at the start
        (99_000.5, 20_000, 0, 100_000, (80_000, 100_000)),  # shifted left at the end
        (50_000.7, 20_001, 0, 100_000, (40_000, 60_001)),  # int() truncation of both ends
        (500.0, 20_000, 0, 1_000, (0, 1_000)),  # shorter file: clipped to it
    ],
)
def test_midpoint_to_interval(mid, length, lo, hi, expected) -> None:
    assert midpoint_to_interval(mid, length, lo, hi) == expected


def test_duplicate_intervals_collapse() -> None:
    # Two bursts near the end both give the interval that ends at the file end.
    x = bursts(14.0, [(3.0, 3000, 0.3), (12.0, 3000, 0.3), (13.2, 5000, 0.3)])
    wins = detect_windows(x, SR)
    spans = [(w.start, w.end) for w in wins]
    assert len(spans) == len(set(spans))
    assert (x.shape[0] - 6 * SR, x.shape[0]) in spans


def _denoise_reference(x: np.ndarray, thresh: float) -> np.ndarray:
    """MixtureDenoise written out channel by channel with plain Python sums."""
    x = np.asarray(x, dtype=np.float64)
    out = np.empty_like(x)
    for c in range(x.shape[1]):
        col = list(x[:, c])
        n = len(col)
        mean = sum(col) / n
        std = (sum((v - mean) ** 2 for v in col) / n) ** 0.5
        noise = [v for v in col if not (v - mean >= 2 * thresh * std)]
        nm = sum(noise) / (len(noise) + 1)
        ns = (sum((v - nm) ** 2 for v in noise) / (len(noise) + 1)) ** 0.5
        out[:, c] = [(v if v - nm >= thresh * ns else nm) - nm for v in col]
    return out


def test_mixture_denoise_matches_a_plain_reference() -> None:
    r = np.random.default_rng(1)
    x = r.standard_normal((300, 6))
    x[100:120, 2] += 5.0
    np.testing.assert_allclose(mixture_denoise(x, 0.75), _denoise_reference(x, 0.75), atol=1e-12)


def test_melspec_frame_count_follows_the_truncation_rule() -> None:
    assert melspec(np.zeros(110250), SR).shape == (501, 160)  # 5 s -> 501
    assert melspec(np.zeros(int(2.7 * SR)), SR).shape == (201, 160)  # (2.7 s + pad) // 1 s
    assert melspec(np.zeros(1000), SR).shape == (1, 160)


@pytest.mark.needs_tf
def test_numpy_frontend_matches_tensorflow() -> None:
    tf = pytest.importorskip("tensorflow")
    w = tf.signal.linear_to_mel_weight_matrix(160, 1025, SR, 60.0, 10000.0).numpy()
    np.testing.assert_allclose(mel_weight_matrix(160, 1025, SR, 60.0, 10000.0), w, atol=2e-5)
    x = bursts(3.4, [(1.5, 3000, 0.3)], seed=3)
    # The P-paper Melspec graph (scaling 'log'), written with tf ops.
    padded = tf.concat([tf.zeros([1, 772]), x[None, :]], axis=1)
    stft = tf.signal.stft(padded, frame_length=1764, frame_step=220, pad_end=True)
    mel = tf.tensordot(tf.abs(stft), w, 1)
    logmel = 0.1 * tf.math.log(tf.maximum(mel, 1e-2))
    n_frames = padded.shape[1] // SR * 100 + 1
    expected = logmel[0, :n_frames].numpy()
    got = melspec(x, SR)
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, atol=2e-4)
