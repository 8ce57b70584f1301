"""The paper's mel spectrogram in numpy (P-paper ``audio_ops.Melspec``; ALGORITHMS.md §2.1).

Used by activity detection (§2.8, ``scaling='log'``) without TensorFlow. It reproduces the
TensorFlow graph step by step: ``int(0.5 * (frame - hop))`` zeros prepended, periodic Hann
window, ``tf.signal.stft`` framing with ``pad_end=True`` and an FFT of the next power of two,
**magnitude** (not power), ``tf.signal.linear_to_mel_weight_matrix`` (HTK mel, DC row zeroed),
then ``(len(padded) // sr) * rate + 1`` frames kept.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

MEL_BANDS = 160
LOWER_EDGE_HZ = 60.0
UPPER_EDGE_HZ = 10000.0
FRAME_LENGTH_S = 0.08


def hz_to_mel(f_hz: np.ndarray | float) -> np.ndarray:
    """HTK mel scale as TensorFlow uses it: 1127 * ln(1 + f / 700)."""
    return 1127.0 * np.log1p(np.asarray(f_hz, dtype=np.float64) / 700.0)


@lru_cache(maxsize=8)
def mel_weight_matrix(
    num_mel_bins: int,
    num_spectrogram_bins: int,
    sample_rate_hz: int,
    lower_edge_hz: float,
    upper_edge_hz: float,
) -> np.ndarray:
    """``tf.signal.linear_to_mel_weight_matrix``: (num_spectrogram_bins, num_mel_bins)."""
    nyquist = sample_rate_hz / 2.0
    linear_hz = np.linspace(0.0, nyquist, num_spectrogram_bins)[1:]  # DC bin excluded
    bins_mel = hz_to_mel(linear_hz)[:, None]
    edges = np.linspace(hz_to_mel(lower_edge_hz), hz_to_mel(upper_edge_hz), num_mel_bins + 2)
    lower, center, upper = edges[:-2][None], edges[1:-1][None], edges[2:][None]
    lower_slopes = (bins_mel - lower) / (center - lower)
    upper_slopes = (upper - bins_mel) / (upper - center)
    weights = np.maximum(0.0, np.minimum(lower_slopes, upper_slopes))
    out = np.concatenate([np.zeros((1, num_mel_bins)), weights], axis=0).astype(np.float32)
    out.setflags(write=False)
    return out


@lru_cache(maxsize=8)
def _periodic_hann(n: int) -> np.ndarray:
    w = (0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(n) / n)).astype(np.float32)
    w.setflags(write=False)
    return w


def melspec(
    audio: np.ndarray,
    sample_rate_hz: int = 22050,
    rate_hz: int = 100,
    scaling: str = "log",
    num_mel_bins: int = MEL_BANDS,
    lower_edge_hz: float = LOWER_EDGE_HZ,
    upper_edge_hz: float = UPPER_EDGE_HZ,
    log_floor: float = 1e-2,
    log_scalar: float = 0.1,
) -> np.ndarray:
    """Mel spectrogram ``(frames, num_mel_bins)`` of a 1-D waveform.

    ``scaling`` is ``'log'`` (``log_scalar * ln(max(mel, log_floor))``) or ``'raw'``
    (filterbank magnitudes).
    """
    x = np.asarray(audio, dtype=np.float32).reshape(-1)
    hop = int(sample_rate_hz / rate_hz)
    frame = int(sample_rate_hz * FRAME_LENGTH_S)
    fft_len = 1 << (frame - 1).bit_length()
    front = int(0.5 * (frame - hop))
    x = np.concatenate([np.zeros(max(front, 0), np.float32), x])
    n_padded = x.shape[0]
    n_stft = -(-n_padded // hop)  # tf.signal.frame(pad_end=True) frame count
    n_keep = min(n_padded // sample_rate_hz * rate_hz + 1, n_stft)
    need = (n_keep - 1) * hop + frame
    if need > n_padded:
        x = np.concatenate([x, np.zeros(need - n_padded, np.float32)])
    frames = np.lib.stride_tricks.as_strided(
        x, shape=(n_keep, frame), strides=(x.strides[0] * hop, x.strides[0]), writeable=False
    )
    spec = np.abs(np.fft.rfft(frames * _periodic_hann(frame), n=fft_len, axis=1))
    weights = mel_weight_matrix(
        num_mel_bins, fft_len // 2 + 1, sample_rate_hz, lower_edge_hz, upper_edge_hz
    )
    mel = spec.astype(np.float32) @ weights
    if scaling == "raw":
        return mel
    if scaling == "log":
        return (log_scalar * np.log(np.maximum(mel, log_floor))).astype(np.float32)
    raise ValueError(f"unsupported scaling {scaling!r} (use 'log' or 'raw')")
