"""The classifier frontend in numpy: STFT magnitude -> 160 mel bands -> PCEN -> whitening.

The same definition as ``modeltools.classifier.frontend`` (ALGORITHMS.md §2.1-2.3), written for
the device: numpy only (no TensorFlow, no scipy), the mel projection as a sparse product (each
FFT bin feeds at most two triangular filters, so ~1,900 of the 164,000 weights are non-zero)
and PCEN with the **exact** recursive smoother (M_0 = E_0). Training uses the 256-tap FIR form of
that smoother, which equals the recursion to float32 rounding; ``tests/unit/test_frontend_numpy.py``
bounds the difference to the TensorFlow definition, so there is no silent train/serve skew.

It is several times cheaper than the frontend graph in TFLite (RFFT2D and a dense 1025 x 160
matmul per frame), and the agent runs it once per channel for every ensemble member.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

KIND = "mel-pcen-whiten"


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
    """``features(window (N,)) -> (1, frames, mel_bands)`` float32, for one fixed window length."""

    def __init__(self, params: FrontendParams, num_samples: int) -> None:
        self.p = params
        self.num_samples = num_samples
        self.frames = params.num_frames(num_samples)
        self.need = (self.frames - 1) * params.hop_samples + params.frame_samples
        n = params.frame_samples
        self.window = (0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n) / n)).astype(np.float32)
        w = mel_weights(params)
        # Sparse mel: for band j, the bins with non-zero weight, flattened band after band.
        cols: list[int] = []
        vals: list[float] = []
        starts: list[int] = []
        for j in range(w.shape[1]):
            nz = np.nonzero(w[:, j])[0]
            if nz.size == 0:  # cannot happen for sane edges; keep the band (all zeros)
                nz = np.array([0])
            starts.append(len(cols))
            cols.extend(nz.tolist())
            vals.extend(w[nz, j].tolist())
        self._cols = np.asarray(cols)
        self._vals = np.asarray(vals, np.float32)
        self._starts = np.asarray(starts)

    @property
    def output_shape(self) -> tuple[int, int, int]:
        return (1, self.frames, self.p.mel_bands)

    def melspec(self, x: np.ndarray) -> np.ndarray:
        p = self.p
        back = max(self.need - p.front_pad_samples - x.shape[0], 0)
        padded = np.pad(x.astype(np.float32), (p.front_pad_samples, back))[: self.need]
        frames = np.lib.stride_tricks.sliding_window_view(padded, p.frame_samples)[
            :: p.hop_samples
        ][: self.frames]
        mag = np.abs(np.fft.rfft(frames * self.window, n=p.fft_length, axis=1)).astype(np.float32)
        prod = mag[:, self._cols] * self._vals
        return np.add.reduceat(prod, self._starts, axis=1)

    def pcen(self, energy: np.ndarray) -> np.ndarray:
        p = self.p
        s = np.float32(p.pcen_smooth_coef)
        smooth = np.empty_like(energy)
        m = energy[0].copy()
        smooth[0] = m
        for t in range(1, energy.shape[0]):  # the exact recursion, M_0 = E_0
            m = (1 - s) * m + s * energy[t]
            smooth[t] = m
        gain = np.power(p.pcen_floor + smooth, p.pcen_alpha)
        inv_root = 1.0 / p.pcen_root
        out = np.power(energy / gain + p.pcen_delta, inv_root) - p.pcen_delta**inv_root
        return out.astype(np.float32)

    def whiten(self, x: np.ndarray) -> np.ndarray:
        thr = self.p.clean_thresh
        mu = x.mean(axis=0, keepdims=True)
        sigma = np.sqrt(np.mean((x - mu) ** 2, axis=0, keepdims=True))
        keep = (np.abs(x - mu) <= thr * sigma + 1e-4).astype(np.float32)
        n = keep.sum(axis=0, keepdims=True)
        mu2 = (keep * x).sum(axis=0, keepdims=True) / (n + 1.0)
        var2 = (keep * (x - mu2) ** 2).sum(axis=0, keepdims=True) / (n + 1.0)
        return ((x - mu2) / (np.sqrt(var2) + 1.0)).astype(np.float32)

    def features(self, window: np.ndarray) -> np.ndarray:
        """One window (N,) -> (1, frames, mel_bands)."""
        x = self.pcen(self.melspec(np.asarray(window, np.float32).reshape(-1)))
        if self.p.channel_norm:
            x = self.whiten(x)
        return x[np.newaxis]
