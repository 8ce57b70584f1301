"""Noise beds: synthetic noise and real ambience recordings from ``../shared/data``.

Synthetic kinds (all returned at unit RMS): ``pink`` and ``brown`` (1/f and 1/f^2 power),
``wind`` (low rumble with slow gusts), ``rain`` (hiss plus random drops) and ``insects``
(steady or pulsed high tones, like crickets and cicadas).

Real noise comes from the CC0 / public-domain ambience folders and the near-empty night files
of the scikit-maad series (files where BirdNET found no bird at >= 0.1). Recordings with
birds in them (``forest.mp3``: hoopoe, oriole) or voices are left out. Every real file is
assigned to one pool: ``train`` (used by the train and validation generators) or ``test``
(held out: only the test soundscapes hear it). Either pool uses only a file's training span
(:mod:`modeltools.data.real_split`): the first half of a noise-folder file (its second half is
the real-audio benchmark's noise), a scikit-maad file whole. Corpora generated before
2026-12 used whole files.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from scipy.fft import next_fast_len
from scipy.signal import butter, sosfilt

from modeltools.data.audio_io import AudioDecodeError, decode_audio
from modeltools.data.real_split import shared_file

log = logging.getLogger(__name__)

SYNTHETIC_KINDS = ("pink", "brown", "wind", "rain", "insects")
_MAAD = "scikit-maad/indices/S4A03895_20190522_"
# (path relative to shared/data, pool)
REAL_NOISE: tuple[tuple[str, str], ...] = (
    ("freesound-cc0-ambience/wind.mp3", "train"),
    ("freesound-cc0-ambience/waves.mp3", "train"),
    ("freesound-cc0-ambience/thunder.mp3", "train"),
    ("freesound-cc0-ambience/fireplace.mp3", "train"),
    ("freesound-cc0-ambience/rain.mp3", "train"),
    (_MAAD + "000000.wav", "train"),
    (_MAAD + "003000.wav", "train"),
    (_MAAD + "040000.wav", "train"),
    ("opengameart-cc0-ambience/rain_kenney.mp3", "test"),
    ("opengameart-cc0-ambience/crickets_jaggedstone.mp3", "test"),
    (_MAAD + "183000.wav", "test"),
    (_MAAD + "224500.wav", "test"),
    (_MAAD + "233000.wav", "test"),
    (_MAAD + "234500.wav", "test"),
)
NOISE_POOLS = ("train", "test")


def default_shared_data_dir() -> Path | None:
    """``$CHORUS_SHARED_DATA``, else ``<repo>/../shared/data`` if it exists, else None."""
    env = os.environ.get("CHORUS_SHARED_DATA")
    if env:
        return Path(env) if Path(env).is_dir() else None
    guess = Path(__file__).resolve().parents[2].parent / "shared" / "data"
    return guess if guess.is_dir() else None


def _unit_rms(x: np.ndarray) -> np.ndarray:
    rms = float(np.sqrt(np.mean(x**2)))
    return x / rms if rms > 0 else x


def colored_noise(n: int, exponent: float, rng: np.random.Generator) -> np.ndarray:
    """Gaussian noise with power spectrum ~ 1/f**exponent (0 white, 1 pink, 2 brown)."""
    m = next_fast_len(n, real=True)  # arbitrary lengths can make the FFT 100x slower
    spec = np.fft.rfft(rng.standard_normal(m))
    f = np.arange(spec.shape[0], dtype=np.float64)
    f[0] = 1.0
    spec *= f ** (-exponent / 2.0)
    spec[0] = 0.0
    return _unit_rms(np.fft.irfft(spec, m)[:n])


@lru_cache(maxsize=16)
def _sos(kind: str, cutoff_hz: float | tuple[float, float], sr: int, order: int) -> np.ndarray:
    return butter(order, cutoff_hz, btype=kind, fs=sr, output="sos")


def _slow_envelope(n: int, rng: np.random.Generator, sr: int, rate_hz: float) -> np.ndarray:
    """A smooth positive random envelope varying at about ``rate_hz``."""
    k = max(int(n * rate_hz / sr) + 2, 3)
    knots = rng.uniform(0.2, 1.0, size=k)
    return np.interp(np.linspace(0, k - 1, n), np.arange(k), knots)


def wind_noise(n: int, rng: np.random.Generator, sr: int) -> np.ndarray:
    rumble = sosfilt(_sos("low", rng.uniform(150, 600), sr, 2), colored_noise(n, 1.5, rng))
    gusts = _slow_envelope(n, rng, sr, rng.uniform(0.1, 0.5)) ** 2
    return _unit_rms(_unit_rms(rumble) * gusts + 0.05 * colored_noise(n, 1.0, rng))


def rain_noise(n: int, rng: np.random.Generator, sr: int) -> np.ndarray:
    hiss = sosfilt(_sos("high", rng.uniform(800, 2500), sr, 2), rng.standard_normal(n))
    drops = np.zeros(n)
    count = int(n / sr * rng.uniform(40, 300))
    drops[rng.integers(0, n, size=count)] = rng.uniform(0.2, 1.0, size=count)
    k = int(0.004 * sr)
    kernel = rng.standard_normal(k) * np.exp(-np.arange(k) / (0.0008 * sr))
    drops = np.convolve(drops, kernel, mode="same")
    return _unit_rms(0.6 * _unit_rms(hiss) + _unit_rms(drops))


def insect_noise(n: int, rng: np.random.Generator, sr: int) -> np.ndarray:
    t = np.arange(n) / sr
    y = np.zeros(n)
    for _ in range(int(rng.integers(1, 4))):
        f = rng.uniform(3500, min(9500, 0.45 * sr))
        tone = np.sin(2 * np.pi * f * t + rng.uniform(0, 2 * np.pi))
        if rng.random() < 0.6:  # cricket: pulses grouped into chirps
            pulses = 0.5 + 0.5 * np.sign(np.sin(2 * np.pi * rng.uniform(20, 60) * t))
            chirps = np.sin(2 * np.pi * rng.uniform(0.8, 4) * t + rng.uniform(0, 6)) > 0.2
            am = pulses * chirps
        else:  # cicada-like steady buzz
            am = 0.6 + 0.4 * np.sin(2 * np.pi * rng.uniform(80, 200) * t)
        y += rng.uniform(0.3, 1.0) * am * tone
    return _unit_rms(y + 0.02 * rng.standard_normal(n))


def synthetic_noise(kind: str, n: int, rng: np.random.Generator, sr: int = 22050) -> np.ndarray:
    """``n`` samples of synthetic noise of ``kind`` at unit RMS."""
    if kind == "pink":
        return colored_noise(n, 1.0, rng)
    if kind == "brown":
        return colored_noise(n, 2.0, rng)
    if kind == "wind":
        return wind_noise(n, rng, sr)
    if kind == "rain":
        return rain_noise(n, rng, sr)
    if kind == "insects":
        return insect_noise(n, rng, sr)
    raise ValueError(f"unknown noise kind {kind!r}; expected one of {SYNTHETIC_KINDS}")


@dataclass(frozen=True)
class RealNoise:
    name: str  # path relative to shared/data
    pool: str
    samples: np.ndarray  # float32 mono at the bank's rate, unit RMS
    span_s: tuple[float, float] = (0.0, 0.0)  # the part of the file kept (its training span)


def _training_part(rel: str, pool: str, audio: np.ndarray, sample_rate_hz: int) -> RealNoise:
    """The training span of shared file ``rel`` (REAL-AUDIO.md), at unit RMS."""
    f = shared_file(rel)
    duration_s = audio.shape[0] / sample_rate_hz
    start_s, end_s = f.training_span(duration_s, "a noise bed") if f else (0.0, duration_s)
    part = audio[round(start_s * sample_rate_hz) : round(end_s * sample_rate_hz)]
    return RealNoise(rel, pool, _unit_rms(part.astype(np.float64)), (start_s, round(end_s, 3)))


class NoiseBank:
    """Noise beds for one pool: real recordings of that pool plus synthetic noise."""

    def __init__(
        self,
        pool: str,
        shared_data_dir: Path | None,
        sample_rate_hz: int = 22050,
        real_probability: float = 0.6,
    ) -> None:
        if pool not in NOISE_POOLS:
            raise ValueError(f"noise pool must be one of {NOISE_POOLS}, got {pool!r}")
        self.pool = pool
        self.sample_rate_hz = sample_rate_hz
        self.real: list[RealNoise] = []
        if shared_data_dir is not None:
            for rel, p in REAL_NOISE:
                if p != pool:
                    continue
                try:
                    audio = decode_audio(shared_data_dir / rel, sample_rate_hz).samples
                except AudioDecodeError as exc:
                    log.warning("noise bed not available: %s", exc)
                    continue
                self.real.append(_training_part(rel, pool, audio, sample_rate_hz))
        self.real_probability = real_probability if self.real else 0.0

    @property
    def real_names(self) -> list[str]:
        return [r.name for r in self.real]

    def real_segment(self, n: int, rng: np.random.Generator) -> tuple[np.ndarray, str]:
        """``n`` samples from a random real recording (looped with crossfades if short)."""
        src = self.real[int(rng.integers(len(self.real)))]
        x = src.samples
        if x.shape[0] >= n:
            start = int(rng.integers(0, x.shape[0] - n + 1))
            return _unit_rms(x[start : start + n].astype(np.float64)), src.name
        fade = min(int(0.05 * self.sample_rate_hz), x.shape[0] // 4)
        out = np.zeros(n)
        pos = -int(rng.integers(0, x.shape[0]))
        ramp = np.linspace(0.0, 1.0, fade) if fade > 0 else np.zeros(0)
        while pos < n:
            piece = x.astype(np.float64).copy()
            if fade > 0:
                piece[:fade] *= ramp
                piece[-fade:] *= ramp[::-1]
            a, b = max(pos, 0), min(pos + piece.shape[0], n)
            out[a:b] += piece[a - pos : b - pos]
            pos += piece.shape[0] - fade
        return _unit_rms(out), src.name

    def bed(self, n: int, rng: np.random.Generator) -> tuple[np.ndarray, list[str]]:
        """A unit-RMS noise bed: real or synthetic, sometimes with a second layer."""
        layers: list[tuple[np.ndarray, str]] = []
        if self.real and rng.random() < self.real_probability:
            layers.append(self.real_segment(n, rng))
        else:
            kind = str(rng.choice(SYNTHETIC_KINDS))
            layers.append((synthetic_noise(kind, n, rng, self.sample_rate_hz), f"synthetic:{kind}"))
        if rng.random() < 0.35:
            kind = str(rng.choice(SYNTHETIC_KINDS))
            extra = synthetic_noise(kind, n, rng, self.sample_rate_hz)
            layers.append((extra * rng.uniform(0.2, 0.7), f"synthetic:{kind}"))
        # A broadband pink floor under every bed (air, leaves, microphone self-noise): without
        # it, beds like brown noise leave the bird bands unrealistically silent.
        floor = colored_noise(n, 1.0, rng) * rng.uniform(0.1, 0.3)
        y = np.sum([x for x, _ in layers], axis=0) + floor
        return _unit_rms(y), [name for _, name in layers]
