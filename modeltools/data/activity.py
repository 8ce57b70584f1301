"""Training-window activity detection, exactly as the paper's code (ALGORITHMS.md §2.8).

P-paper ``audio_ops.FindPeaksFromAudio`` / ``FindPeaks`` / ``MidpointToInterval`` /
``SlicePeakedAudio``, quirks included:

1. log-mel at 100 Hz (0.1*ln(max(mel, 0.01)), 160 bands, 60-10000 Hz, 80 ms frames), then
   ``MixtureDenoise(thresh=0.75)``;
2. energy_t = sum over channels; threshold = 1.5 * mean(energy);
3. ``scipy.signal.find_peaks_cwt(energy, widths=range(50, 200, 15))``; a peak p is kept if
   any energy in ``energy[p - 30 : p + 30]`` reaches the threshold -- a *Python* slice, so
   for p < 30 the start is negative and the slice is usually empty: peaks in the first 0.3 s
   are dropped;
4. peaks sorted by (energy at the peak, peak index) descending, at most ``max_intervals``;
   frame -> sample as p * sr / 100 (220.5 at 22.05 kHz although the hop is 220);
5. an ``interval_s`` window centred on each peak, shifted to stay inside the file, ends
   truncated with ``int()``; duplicates collapse. A file of at most ``interval_s`` is used
   whole.

``find_peaks_cwt`` results can differ between SciPy versions (upstream pinned 1.8.0).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import signal

from modeltools.data.melspec import melspec

MELSPEC_RATE_HZ = 100
DENOISE_THRESH = 0.75
PAPER_INTERVAL_S = 6.0  # dataset_info.example_size_s
MAX_INTERVALS = 5


@dataclass(frozen=True)
class ActivityWindow:
    """One training window: samples ``[start, end)``, centred on a peak where possible."""

    start: int
    end: int
    peak_sample: float  # p * sr / 100
    energy: float  # summed denoised log-mel energy at the peak frame

    @property
    def length(self) -> int:
        return self.end - self.start


def mixture_denoise(x: np.ndarray, thresh: float = DENOISE_THRESH) -> np.ndarray:
    """P-paper ``MixtureDenoise`` on one ``(frames, channels)`` spectrogram."""
    x = np.asarray(x, dtype=np.float64)
    mean = x.mean(axis=0, keepdims=True)
    std = x.std(axis=0, keepdims=True)  # population std, like tf.math.reduce_std
    is_noise = 1.0 - ((x - mean) >= 2.0 * thresh * std)
    count = is_noise.sum(axis=0, keepdims=True)
    noise_mean = (x * is_noise).sum(axis=0, keepdims=True) / (count + 1.0)
    noise_std = np.sqrt((is_noise * (x - noise_mean) ** 2).sum(axis=0, keepdims=True) / (count + 1))
    is_signal = (x - noise_mean) >= thresh * noise_std
    return np.where(is_signal, x, noise_mean) - noise_mean


def peak_widths(stft_fps: int = MELSPEC_RATE_HZ) -> range:
    """``range(50, 200, 15)`` at 100 frames/s (0.5 s to 2 s in 10 steps)."""
    min_w = round(0.5 * stft_fps)
    max_w = round(2 * stft_fps)
    return range(min_w, max_w, round((max_w - min_w) / 10))


def find_peaks(energy: np.ndarray, stft_fps: int = MELSPEC_RATE_HZ) -> list[int]:
    """P-paper ``FindPeaks``: CWT peaks that have an above-threshold frame within +-0.3 s."""
    energy = np.asarray(energy, dtype=np.float64)
    threshold = np.mean(energy) * 1.5
    peaks = signal.find_peaks_cwt(energy, peak_widths(stft_fps))
    margin = round(0.3 * stft_fps)
    kept = []
    for p in peaks:
        p = int(p)
        # Deliberately a Python slice: a negative start wraps (usually to an empty slice).
        window = energy[p - margin : p + margin]
        if np.any(window >= threshold):
            kept.append(p)
    return kept


def activity_energy(audio: np.ndarray, sample_rate_hz: int) -> np.ndarray:
    """Per-frame energy the peak finder works on (summed denoised log-mel, 100 Hz)."""
    mel = melspec(audio, sample_rate_hz, rate_hz=MELSPEC_RATE_HZ, scaling="log")
    return mixture_denoise(mel, DENOISE_THRESH).sum(axis=1)


def find_peaks_from_audio(
    audio: np.ndarray, sample_rate_hz: int, max_peaks: int = -1
) -> list[tuple[float, float]]:
    """``(peak_sample, energy)`` pairs, by descending (energy, frame), at most ``max_peaks``."""
    energy = activity_energy(audio, sample_rate_hz)
    peaks = find_peaks(energy, MELSPEC_RATE_HZ)
    # sorted(zip(energies, peaks), reverse=True): ties broken by the later frame first.
    ranked = sorted(((float(energy[p]), p) for p in peaks), reverse=True)
    if max_peaks > 0:
        ranked = ranked[:max_peaks]
    return [(p * sample_rate_hz / MELSPEC_RATE_HZ, e) for e, p in ranked]


def midpoint_to_interval(midpoint: float, length: float, min_t: int, max_t: int) -> tuple[int, int]:
    """P-paper ``MidpointToInterval``: centre, shift inside ``[min_t, max_t]``, ``int()``."""
    left = midpoint - length / 2
    right = midpoint + length / 2
    left -= max(right - max_t, 0)
    right += max(min_t - left, 0)
    return int(max(min_t, left)), int(min(max_t, right))


def detect_windows(
    audio: np.ndarray,
    sample_rate_hz: int,
    interval_s: float = PAPER_INTERVAL_S,
    max_intervals: int = MAX_INTERVALS,
) -> list[ActivityWindow]:
    """P-paper ``SlicePeakedAudio``: up to ``max_intervals`` windows around the loudest peaks.

    Returned in descending peak energy; duplicate intervals keep their loudest peak. A file of
    at most ``interval_s`` seconds gives one window covering all of it.
    """
    n = int(np.asarray(audio).shape[0])
    if n <= interval_s * sample_rate_hz:
        return [ActivityWindow(0, n, n / 2, float("nan"))]
    interval = int(interval_s * sample_rate_hz)
    out: list[ActivityWindow] = []
    seen: set[tuple[int, int]] = set()
    for peak, energy in find_peaks_from_audio(audio, sample_rate_hz, max_intervals):
        span = midpoint_to_interval(peak, interval, 0, n)
        if span not in seen:
            seen.add(span)
            out.append(ActivityWindow(span[0], span[1], peak, energy))
    return out
