"""Placing vocalisations in a scene: distance effects, mixing, event bookkeeping, SNR.

Level model: a species of loudness L sings with peak amplitude ``L * REF_PEAK`` at
``REF_DISTANCE_M``; spherical spreading scales it by ``REF_DISTANCE_M / d``. Distance also
takes the highs away (air and foliage absorption, modelled as a 2nd-order Butterworth
low-pass whose cutoff falls with distance) and adds reverberation (a decaying noise tail
whose share grows with distance).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy.signal import butter, fftconvolve, sosfilt, welch

REF_DISTANCE_M = 10.0
REF_PEAK = 0.25
MIN_LABEL_SNR_DB = -10.0  # quieter events are not placed (they would be inaudible labels)


@dataclass
class Event:
    """One vocalisation placed in a recording (seconds, Hz)."""

    code: str
    start_s: float
    end_s: float
    low_hz: float
    high_hz: float
    kind: str  # song / call
    distance_m: float
    role: str  # primary / background / chorus
    snr_db: float = float("nan")
    extra: dict[str, str] = field(default_factory=dict)


def lowpass_cutoff_hz(distance_m: float, sample_rate_hz: int) -> float | None:
    """Cutoff of the distance low-pass; None when it would be above 0.45 * sr (no filter)."""
    fc = 11000.0 * (20.0 / max(distance_m, 20.0)) ** 0.7
    return None if fc >= 0.45 * sample_rate_hz else fc


def apply_distance(
    x: np.ndarray, distance_m: float, sample_rate_hz: int, rng: np.random.Generator
) -> np.ndarray:
    """Gain (1/r), low-pass and reverberation for a source ``distance_m`` away."""
    y = np.asarray(x, dtype=np.float64) * (REF_DISTANCE_M / max(distance_m, 1.0))
    fc = lowpass_cutoff_hz(distance_m, sample_rate_hz)
    if fc is not None:
        y = sosfilt(butter(2, fc, btype="low", fs=sample_rate_hz, output="sos"), y)
    wet = float(np.clip(0.05 + distance_m / 300.0, 0.05, 0.6))
    rt60_s = rng.uniform(0.3, 1.0)
    n_ir = int(min(rt60_s, 0.6) * sample_rate_hz)
    t = np.arange(n_ir) / sample_rate_hz
    ir = rng.standard_normal(n_ir) * np.exp(-6.9 * t / rt60_s)  # -60 dB at rt60
    ir /= np.sqrt(np.sum(ir**2)) + 1e-12
    tail = fftconvolve(y, ir)
    out = np.zeros(tail.shape[0])
    out[: y.shape[0]] = (1 - wet) * y
    return out + wet * tail


def add_at(track: np.ndarray, x: np.ndarray, start: int) -> tuple[int, int]:
    """Add ``x`` into ``track`` at sample ``start`` (clipped to the track); return the span."""
    a, b = max(start, 0), min(start + x.shape[0], track.shape[0])
    if b > a:
        track[a:b] += x[a - start : b - start]
    return a, b


def band_power(x: np.ndarray, sample_rate_hz: int, band_hz: tuple[float, float]) -> float:
    """Mean power of ``x`` in ``band_hz`` (Welch PSD summed over the band's bins)."""
    if x.shape[0] < 64:
        return 0.0
    nper = min(1024, x.shape[0])
    f, p = welch(x, sample_rate_hz, nperseg=nper)
    sel = (f >= band_hz[0]) & (f <= band_hz[1])
    if not np.any(sel):
        return 0.0
    return float(np.sum(p[sel]) * (f[1] - f[0]))


def snr_db(
    signal: np.ndarray, noise: np.ndarray, sample_rate_hz: int, band: tuple[float, float]
) -> float:
    """In-band SNR of ``signal`` over ``noise`` (same span), in dB."""
    ps = band_power(signal, sample_rate_hz, band)
    pn = band_power(noise, sample_rate_hz, band)
    if ps <= 0:
        return -np.inf
    return float(10 * np.log10(ps / max(pn, 1e-20)))


def schedule(
    rng: np.random.Generator,
    span_s: tuple[float, float],
    interval_s: tuple[float, float],
    first_delay_s: float = 0.0,
) -> list[float]:
    """Start times in ``span_s`` with pauses drawn from U(interval_s) (a singing bout)."""
    t = span_s[0] + first_delay_s
    out = []
    while t < span_s[1]:
        out.append(t)
        t += rng.uniform(*interval_s)
    return out
