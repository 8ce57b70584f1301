"""Parametric bird-song syllables (numpy only).

Each syllable kind is a frequency contour turned into a phase-continuous sine (plus harmonics
or noise for some kinds) under an amplitude envelope:

* ``sweep``   -- FM sweep from ``f_start_hz`` to ``f_end_hz`` with a curved contour
* ``whistle`` -- near-constant (slightly sloped) tone with sinusoidal vibrato
* ``trill``   -- a train of short repeated notes, each a small sweep, at ``note_rate_hz``
* ``stack``   -- harmonic stack (fundamental + ``n_harmonics`` overtones), slow FM
* ``buzz``    -- carrier with fast FM and AM at ``am_rate_hz`` plus band-limited noise
* ``chip``    -- very short, steep down-sweep with a sharp attack (calls, "tsip", "chip")

A :class:`Syllable` is fully described by its parameters, so a species is a list of them and
individual variation is a small random perturbation (:meth:`Syllable.jittered`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from functools import lru_cache

import numpy as np
from scipy.signal import butter, sosfilt

KINDS = ("sweep", "whistle", "trill", "stack", "buzz", "chip")
NYQUIST_MARGIN = 0.95  # keep components below 0.95 * Nyquist (no aliasing)


@dataclass(frozen=True)
class Syllable:
    """One syllable type. Frequencies in Hz, durations in seconds."""

    kind: str
    duration_s: float
    f_start_hz: float
    f_end_hz: float
    curvature: float = 0.0  # contour warp exponent: 0 linear, >0 late change, <0 early
    vibrato_hz: float = 0.0
    vibrato_depth_hz: float = 0.0
    note_rate_hz: float = 0.0  # trill: notes per second
    note_duty: float = 0.6  # trill: fraction of each note period that sounds
    n_harmonics: int = 0  # stack: overtones above the fundamental
    harmonic_decay: float = 0.5  # stack: amplitude ratio between successive harmonics
    am_rate_hz: float = 0.0  # buzz: FM/AM rate
    noise_mix: float = 0.0  # buzz: fraction of band-limited noise
    attack_frac: float = 0.1
    release_frac: float = 0.2

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown syllable kind {self.kind!r}; expected one of {KINDS}")
        if self.duration_s <= 0 or self.f_start_hz <= 0 or self.f_end_hz <= 0:
            raise ValueError(f"syllable needs positive duration and frequencies: {self}")

    @property
    def band_hz(self) -> tuple[float, float]:
        """Frequency extent of the syllable's energy (fundamental to top partial/vibrato)."""
        lo = min(self.f_start_hz, self.f_end_hz) - self.vibrato_depth_hz
        hi = max(self.f_start_hz, self.f_end_hz) + self.vibrato_depth_hz
        if self.kind == "buzz":
            spread = 0.08 * hi + 150.0
            lo, hi = lo - spread, hi + spread
        if self.kind == "stack":
            hi = hi * (1 + self.n_harmonics)
        return max(lo, 20.0), hi

    def jittered(self, rng: np.random.Generator, amount: float = 1.0) -> Syllable:
        """An individual rendition: +-2 % frequency, +-8 % duration, small rate changes."""
        f = float(np.exp(rng.normal(0.0, 0.02 * amount)))
        d = float(np.exp(rng.normal(0.0, 0.08 * amount)))
        r = float(np.exp(rng.normal(0.0, 0.05 * amount)))
        return replace(
            self,
            duration_s=self.duration_s * d,
            f_start_hz=self.f_start_hz * f,
            f_end_hz=self.f_end_hz * f * float(np.exp(rng.normal(0.0, 0.01 * amount))),
            vibrato_hz=self.vibrato_hz * r,
            note_rate_hz=self.note_rate_hz * r,
            am_rate_hz=self.am_rate_hz * r,
        )


def _envelope(n: int, attack_frac: float, release_frac: float) -> np.ndarray:
    """Raised-cosine attack and release (at least 2 ms each: no clicks)."""
    env = np.ones(n)
    a = max(int(attack_frac * n), min(44, n // 2))
    r = max(int(release_frac * n), min(44, n // 2))
    a, r = min(a, n // 2), min(r, n - min(a, n // 2))
    if a > 0:
        env[:a] = 0.5 - 0.5 * np.cos(np.pi * np.arange(a) / a)
    if r > 0:
        env[n - r :] = 0.5 + 0.5 * np.cos(np.pi * np.arange(1, r + 1) / r)
    return env


def _contour(f0: float, f1: float, u: np.ndarray, curvature: float) -> np.ndarray:
    """Frequency contour from f0 to f1 over u in [0, 1], warped by exp(curvature)."""
    warp = u ** math.exp(curvature)
    return f0 + (f1 - f0) * warp


def _sine(freq_hz: np.ndarray, sample_rate_hz: int, phase0: float) -> np.ndarray:
    return np.sin(2.0 * np.pi * np.cumsum(freq_hz) / sample_rate_hz + phase0)


def render(syl: Syllable, sample_rate_hz: int, rng: np.random.Generator) -> np.ndarray:
    """The syllable as float64 samples with peak amplitude about 1."""
    n = max(round(syl.duration_s * sample_rate_hz), 8)
    t = np.arange(n) / sample_rate_hz
    u = np.linspace(0.0, 1.0, n)
    limit = NYQUIST_MARGIN * sample_rate_hz / 2
    phase0 = rng.uniform(0, 2 * np.pi)
    env = _envelope(n, syl.attack_frac, syl.release_frac)
    if syl.kind == "trill":
        y = _render_trill(syl, n, sample_rate_hz, phase0)
    else:
        f = _contour(syl.f_start_hz, syl.f_end_hz, u, syl.curvature)
        if syl.vibrato_depth_hz > 0 and syl.vibrato_hz > 0:
            f = f + syl.vibrato_depth_hz * np.sin(
                2 * np.pi * syl.vibrato_hz * t + rng.uniform(0, 2 * np.pi)
            )
        if syl.kind == "buzz":
            f = f + 0.06 * f * np.sin(2 * np.pi * syl.am_rate_hz * t)
        f = np.clip(f, 20.0, limit)
        if syl.kind == "stack":
            y = np.zeros(n)
            for k in range(1, syl.n_harmonics + 2):
                if np.max(f) * k >= limit:
                    break
                y += syl.harmonic_decay ** (k - 1) * _sine(f * k, sample_rate_hz, phase0 * k)
        else:
            y = _sine(f, sample_rate_hz, phase0)
        if syl.kind == "buzz":
            am = 0.55 + 0.45 * np.sin(2 * np.pi * syl.am_rate_hz * t)
            noise = _narrow_noise(f, n, sample_rate_hz, rng)
            y = am * ((1 - syl.noise_mix) * y + syl.noise_mix * noise)
    y = y * env
    peak = np.max(np.abs(y))
    return y / peak if peak > 0 else y


def _render_trill(syl: Syllable, n: int, sample_rate_hz: int, phase0: float) -> np.ndarray:
    """Repeated notes: each note period sounds for ``note_duty`` of it, sweeping f_start->f_end."""
    period = max(int(sample_rate_hz / max(syl.note_rate_hz, 1.0)), 16)
    note = max(int(period * syl.note_duty), 8)
    u = np.linspace(0.0, 1.0, note)
    f = _contour(syl.f_start_hz, syl.f_end_hz, u, syl.curvature)
    f = np.clip(f, 20.0, NYQUIST_MARGIN * sample_rate_hz / 2)
    one = _sine(f, sample_rate_hz, phase0) * _envelope(note, 0.25, 0.35)
    y = np.zeros(n)
    for start in range(0, n - note + 1, period):
        y[start : start + note] += one
    return y


@lru_cache(maxsize=4)
def _noise_lowpass(sample_rate_hz: int) -> np.ndarray:
    return butter(4, 300.0, btype="low", fs=sample_rate_hz, output="sos")


def _narrow_noise(
    f_hz: np.ndarray, n: int, sample_rate_hz: int, rng: np.random.Generator
) -> np.ndarray:
    """Noise in a band around the carrier: lowpass noise ring-modulated by the carrier."""
    white = rng.standard_normal(n)
    lp = sosfilt(_noise_lowpass(sample_rate_hz), white)  # +-300 Hz around the carrier
    lp /= np.max(np.abs(lp)) + 1e-12
    return lp * _sine(f_hz, sample_rate_hz, 0.0)
