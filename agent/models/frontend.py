"""The classifier frontend in numpy/scipy: STFT magnitude -> 160 mel bands -> PCEN -> whitening.

The same definition as ``modeltools.classifier.frontend`` (ALGORITHMS.md §2.1-2.3), written for
the device (no TensorFlow). Per channel: one ``numpy.fft.rfft`` call over all frames in
**float64** (numpy's pocketfft is vectorised over rows only in double precision: its float32
path is ~2.5x slower here), magnitudes only up to the highest bin a mel filter uses (929 of 1025
at a 10 kHz top edge), the mel projection as one float32 matrix product and PCEN with the
**exact** recursive smoother (M_0 = E_0). No SciPy: even ``scipy.fft`` costs the agent ~28 MB of
resident memory on import (its array-API layer), a fifth of the 150 MB budget
(docs/performance.md).
Training uses the 256-tap FIR form of that smoother, which equals the recursion to float32
rounding; ``tests/unit/test_frontend_numpy.py`` bounds the difference to the TensorFlow
definition, so there is no silent train/serve skew.

It is several times cheaper than the frontend graph in TFLite (RFFT2D and a dense 1025 x 160
matmul per frame); the agent runs it once per window on all channels and feeds every ensemble
member from it (docs/performance.md has the figures).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

KIND = "mel-pcen-whiten"
FFT_BLOCK_FRAMES = 64  # frames per FFT call (transient memory; see NumpyFrontend.melspec)


@dataclass(frozen=True)
class FrontendParams:
    sample_rate_hz: int = 22050
    hop_samples: int = 220
    frame_samples: int = 1764
    fft_length: int = 2048
    front_pad_samples: int = 772
    mel_bands: int = 160
    lower_edge_hz: float = 60.0
    upper_edge_hz: float = 10000.0
    pcen_alpha: float = 0.5
    pcen_smooth_coef: float = 0.1
    pcen_delta: float = 2.0
    pcen_root: float = 2.0
    pcen_floor: float = 1e-6
    channel_norm: bool = True
    clean_thresh: float = 1.0

    @classmethod
    def from_manifest(cls, params: Mapping[str, Any]) -> FrontendParams:
        """The parameters a bundle's ``frontend`` object names (unknown keys are ignored)."""
        known = cls.__dataclass_fields__
        return cls(**{k: v for k, v in params.items() if k in known})

    def num_frames(self, num_samples: int) -> int:
        padded = num_samples + self.front_pad_samples
        n_stft = -(-padded // self.hop_samples)
        rate = round(self.sample_rate_hz / self.hop_samples)
        return min(padded // self.sample_rate_hz * rate + 1, n_stft)


def supports(params: Mapping[str, Any] | None) -> bool:
    """Whether a bundle's frontend description is one this module computes."""
    return bool(params) and str(params.get("kind", "")).startswith(KIND)  # type: ignore[union-attr]


def _hz_to_mel(f: Any) -> Any:
    return 1127.0 * np.log1p(f / 700.0)  # HTK


def mel_weights(p: FrontendParams) -> np.ndarray:
    """(fft_length // 2 + 1, mel_bands) triangular filters, as tf.signal.linear_to_mel_weight_matrix
    (HTK mel, peak 1, no area normalisation, DC row zero)."""
    bins = p.fft_length // 2 + 1
    freqs = np.linspace(0.0, p.sample_rate_hz / 2.0, bins)[1:]
    spec_mel = _hz_to_mel(freqs)[:, None]
    edges = np.linspace(
        _hz_to_mel(np.float64(p.lower_edge_hz)),
        _hz_to_mel(np.float64(p.upper_edge_hz)),
        p.mel_bands + 2,
    )
    lower, center, upper = edges[:-2], edges[1:-1], edges[2:]
    w = np.maximum(
        0.0,
        np.minimum((spec_mel - lower) / (center - lower), (upper - spec_mel) / (upper - center)),
    )
    return np.vstack([np.zeros((1, p.mel_bands)), w]).astype(np.float32)


class NumpyFrontend:
    """``features(window (N,)) -> (1, frames, mel_bands)`` and ``features_batch(windows (K, N))
    -> (K, frames, mel_bands)``, float32, for one fixed window length ``num_samples``."""

    def __init__(self, params: FrontendParams, num_samples: int) -> None:
        self.p = params
        self.num_samples = num_samples
        self.frames = params.num_frames(num_samples)
        self.need = (self.frames - 1) * params.hop_samples + params.frame_samples
        n = params.frame_samples
        # float64: the frames are windowed straight into the FFT's (double) input.
        self.window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n) / n)
        w = mel_weights(params)
        used = np.nonzero(w.any(axis=1))[0]
        # Bins above the last filter's upper edge feed nothing: skip their magnitudes.
        self.bins = int(used.max()) + 1 if used.size else 1
        self._mel = np.ascontiguousarray(w[: self.bins])  # (bins, bands)

    @property
    def output_shape(self) -> tuple[int, int, int]:
        return (1, self.frames, self.p.mel_bands)

    def melspec(self, x: np.ndarray) -> np.ndarray:
        """(N,) -> (frames, bands) or (K, N) -> (K, frames, bands) mel magnitudes."""
        p = self.p
        x = np.asarray(x, np.float32)
        lead = x.shape[:-1]
        x = x.reshape(-1, x.shape[-1])
        back = max(self.need - p.front_pad_samples - x.shape[1], 0)
        padded = np.pad(x, ((0, 0), (p.front_pad_samples, back)))[:, : self.need]
        frames = np.lib.stride_tricks.sliding_window_view(padded, p.frame_samples, axis=1)[
            :, :: p.hop_samples
        ][:, : self.frames]
        mel = np.empty((frames.shape[0], self.frames, p.mel_bands), np.float32)
        # Blocks of frames: the double-precision FFT of a whole window is 8 MB of input and
        # 8 MB of spectrum; in blocks the transient memory (the agent's RSS peak) is a quarter
        # of that and the blocks stay in cache.
        for k in range(frames.shape[0]):
            for a in range(0, self.frames, FFT_BLOCK_FRAMES):
                block = frames[k, a : a + FFT_BLOCK_FRAMES] * self.window
                spec = np.fft.rfft(block, n=p.fft_length, axis=-1)[:, : self.bins]
                mel[k, a : a + FFT_BLOCK_FRAMES] = np.abs(spec).astype(np.float32) @ self._mel
        return mel.reshape(*lead, self.frames, p.mel_bands)

    def pcen(self, energy: np.ndarray) -> np.ndarray:
        """PCEN along the frame axis (-2) of (frames, bands) or (K, frames, bands)."""
        p = self.p
        s = np.float32(p.pcen_smooth_coef)
        frames = np.moveaxis(energy, -2, 0)
        smooth = np.empty_like(frames)
        m = frames[0].copy()
        smooth[0] = m
        for t in range(1, frames.shape[0]):  # the exact recursion, M_0 = E_0
            m *= 1 - s
            m += s * frames[t]
            smooth[t] = m
        gain = np.power(p.pcen_floor + np.moveaxis(smooth, 0, -2), p.pcen_alpha)
        inv_root = 1.0 / p.pcen_root
        out = np.power(energy / gain + p.pcen_delta, inv_root) - p.pcen_delta**inv_root
        return out.astype(np.float32)

    def whiten(self, x: np.ndarray) -> np.ndarray:
        """Two-stage whitening per band over the frame axis (-2)."""
        thr = self.p.clean_thresh
        mu = x.mean(axis=-2, keepdims=True)
        sigma = np.sqrt(np.mean((x - mu) ** 2, axis=-2, keepdims=True))
        keep = (np.abs(x - mu) <= thr * sigma + 1e-4).astype(np.float32)
        n = keep.sum(axis=-2, keepdims=True)
        mu2 = (keep * x).sum(axis=-2, keepdims=True) / (n + 1.0)
        var2 = (keep * (x - mu2) ** 2).sum(axis=-2, keepdims=True) / (n + 1.0)
        return ((x - mu2) / (np.sqrt(var2) + 1.0)).astype(np.float32)

    def features_batch(self, windows: np.ndarray) -> np.ndarray:
        """(K, N) windows -> (K, frames, mel_bands) features, all channels in one pass."""
        windows = np.asarray(windows, np.float32)
        if windows.ndim != 2:
            raise ValueError(f"features_batch wants (channels, samples), got {windows.shape}")
        # One channel at a time: a whole window's frames are 3.5 MB, five of them no longer fit
        # the cache and the batch is ~25 % slower than the loop (docs/performance.md).
        out = np.empty((windows.shape[0], self.frames, self.p.mel_bands), np.float32)
        for k, w in enumerate(windows):
            x = self.pcen(self.melspec(w))
            out[k] = self.whiten(x) if self.p.channel_norm else x
        return out

    def features(self, window: np.ndarray) -> np.ndarray:
        """One window (N,) -> (1, frames, mel_bands)."""
        return self.features_batch(np.asarray(window, np.float32).reshape(1, -1))
