"""The released classifiers' frontend in TensorFlow (ALGORITHMS.md §2.1-2.3).

``melspec`` (STFT magnitude -> 160 HTK mel bands, 501 frames per 5 s), ``pcen`` (the exact
recursive smoother, M_0 = E_0) and ``whiten`` (two-stage whitening) are the reference
definitions. The model graph uses :func:`pcen_fir` instead of :func:`pcen`: the same smoother
as a 256-tap causal FIR over the sequence left-padded with its first frame. That padding makes
the FIR *exactly* the recursion for the first 255 frames (the taps telescope to (1-s)^t E_0) and
leaves a weight of (1-s)^255 ~ 2e-12 on the clamped tail afterwards, so the two agree to float32
rounding (``PCEN_FIR_MAX_ABS_DIFF``, pinned by a test) while the FIR converts to TFLite as one
depthwise convolution (no WHILE op). Training and export use the same :class:`Frontend` layer,
so there is no train/serve skew.

All functions take time on axis 1: waveforms ``(batch, samples)``, features ``(batch, frames,
channels)``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

SAMPLE_RATE_HZ = 22050
RATE_HZ = 100
HOP_SAMPLES = int(SAMPLE_RATE_HZ / RATE_HZ)  # 220 (100.23 Hz)
FRAME_SAMPLES = int(SAMPLE_RATE_HZ * 0.08)  # 1764
FFT_LENGTH = 1 << (FRAME_SAMPLES - 1).bit_length()  # 2048
FRONT_PAD_SAMPLES = int(0.5 * (FRAME_SAMPLES - HOP_SAMPLES))  # 772
MEL_BANDS = 160
LOWER_EDGE_HZ = 60.0
UPPER_EDGE_HZ = 10000.0
WINDOW_SAMPLES = 5 * SAMPLE_RATE_HZ  # 110250
PCEN_FIR_TAPS = 256
# Bound on |pcen_fir - pcen| over the PCEN output for inputs in the range of real mel
# magnitudes (checked in tests/unit/test_classifier_frontend.py); float32 rounding dominates.
PCEN_FIR_MAX_ABS_DIFF = 1e-4


def num_frames(num_samples: int, sample_rate_hz: int = SAMPLE_RATE_HZ) -> int:
    """Frames kept for a waveform of ``num_samples``: (padded // sr) * 100 + 1 (501 for 5 s)."""
    padded = num_samples + FRONT_PAD_SAMPLES
    n_stft = -(-padded // HOP_SAMPLES)
    return min(padded // sample_rate_hz * RATE_HZ + 1, n_stft)


def melspec(audio: Any, sample_rate_hz: int = SAMPLE_RATE_HZ) -> Any:
    """Mel filterbank magnitudes ``(batch, frames, 160)`` of waveforms ``(batch, samples)``.

    STFT magnitude (periodic Hann 1764, hop 220, FFT 2048, 772 zeros in front), then
    ``tf.signal.linear_to_mel_weight_matrix(160, 1025, sr, 60, 10000)``. Only the kept frames
    are computed: framing without ``pad_end`` over exactly the samples they need gives the same
    values as upstream's ``pad_end=True`` followed by truncation, and a static frame count.
    """
    import tensorflow as tf

    if sample_rate_hz != SAMPLE_RATE_HZ:
        raise ValueError(f"the classifier frontend is defined at {SAMPLE_RATE_HZ} Hz")
    x = tf.convert_to_tensor(audio, dtype=tf.float32)
    n = int(x.shape[-1])
    frames = num_frames(n, sample_rate_hz)
    need = (frames - 1) * HOP_SAMPLES + FRAME_SAMPLES
    back = max(need - FRONT_PAD_SAMPLES - n, 0)
    x = tf.pad(x, [[0, 0], [FRONT_PAD_SAMPLES, back]])
    x = x[:, :need]
    stft = tf.signal.stft(
        x,
        frame_length=FRAME_SAMPLES,
        frame_step=HOP_SAMPLES,
        fft_length=FFT_LENGTH,
        window_fn=tf.signal.hann_window,  # periodic by default
        pad_end=False,
    )
    weights = tf.signal.linear_to_mel_weight_matrix(
        MEL_BANDS, FFT_LENGTH // 2 + 1, sample_rate_hz, LOWER_EDGE_HZ, UPPER_EDGE_HZ
    )
    return tf.tensordot(tf.abs(stft), weights, axes=1)


def _pcen_out(
    energy: Any, smooth: Any, alpha: float, delta: float, root: float, floor: float
) -> Any:
    import tensorflow as tf

    gain = tf.pow(floor + smooth, alpha)
    return tf.pow(energy / gain + delta, 1.0 / root) - delta ** (1.0 / root)


def pcen(
    energy: Any,
    alpha: float = 0.5,
    smooth_coef: float = 0.1,
    delta: float = 2.0,
    root: float = 2.0,
    floor: float = 1e-6,
) -> Any:
    """Fixed PCEN with the exact recursive smoother (time on axis 1).

    M_0 = E_0, M_t = (1 - s) M_{t-1} + s E_t;
    PCEN_t = (E_t / (floor + M_t)^alpha + delta)^(1/root) - delta^(1/root).
    Reference implementation (``tf.scan``); the model uses :func:`pcen_fir`.
    """
    import tensorflow as tf

    e = tf.convert_to_tensor(energy, dtype=tf.float32)
    et = tf.transpose(e, [1, 0, 2])  # time first for scan
    smooth = tf.scan(lambda m, x: (1.0 - smooth_coef) * m + smooth_coef * x, et[1:], et[0])
    smooth = tf.concat([et[:1], smooth], axis=0)
    return _pcen_out(e, tf.transpose(smooth, [1, 0, 2]), alpha, delta, root, floor)


def ema_fir_taps(smooth_coef: float = 0.1, taps: int = PCEN_FIR_TAPS) -> np.ndarray:
    """FIR taps, oldest first: [(1-s)^(W-1), s(1-s)^(W-2), ..., s(1-s), s]; they sum to 1."""
    s = float(smooth_coef)
    h = s * (1.0 - s) ** np.arange(taps - 1, -1, -1, dtype=np.float64)
    h[0] = (1.0 - s) ** (taps - 1)
    return h.astype(np.float32)


def ema_fir(energy: Any, smooth_coef: float = 0.1, taps: int = PCEN_FIR_TAPS) -> Any:
    """The PCEN smoother as a causal FIR over the input left-padded with its first frame.

    One depthwise convolution with the same taps for every channel; TFLite converts it to
    DEPTHWISE_CONV_2D. Exact for the first ``taps - 1`` frames (see module doc).
    """
    import tensorflow as tf

    e = tf.convert_to_tensor(energy, dtype=tf.float32)
    channels = int(e.shape[-1])
    pad = tf.tile(e[:, 0:1, :], [1, taps - 1, 1])
    x = tf.expand_dims(tf.concat([pad, e], axis=1), 2)  # (B, T + W - 1, 1, C)
    kernel = np.tile(ema_fir_taps(smooth_coef, taps)[:, None, None, None], (1, 1, channels, 1))
    y = tf.nn.depthwise_conv2d(x, tf.constant(kernel), [1, 1, 1, 1], "VALID")
    return tf.squeeze(y, 2)


def pcen_fir(
    energy: Any,
    alpha: float = 0.5,
    smooth_coef: float = 0.1,
    delta: float = 2.0,
    root: float = 2.0,
    floor: float = 1e-6,
    taps: int = PCEN_FIR_TAPS,
) -> Any:
    """:func:`pcen` with the smoother computed by :func:`ema_fir` (TFLite-convertible)."""
    e = energy
    return _pcen_out(e, ema_fir(e, smooth_coef, taps), alpha, delta, root, floor)


def whiten(features: Any, clean_thresh: float = 1.0) -> Any:
    """Two-stage whitening per example and channel over time (axis 1), ALGORITHMS.md §2.3.

    mu, sigma (ddof 0); keep |x - mu| <= thr * sigma + 1e-4 (both tails); n = kept count;
    mu' = sum(kept x) / (n + 1); sigma' = sqrt(sum(kept (x - mu')^2) / (n + 1));
    output (x - mu') / (sigma' + 1).
    """
    import tensorflow as tf

    x = tf.convert_to_tensor(features, dtype=tf.float32)
    mu = tf.reduce_mean(x, axis=1, keepdims=True)
    sigma = tf.sqrt(tf.reduce_mean(tf.square(x - mu), axis=1, keepdims=True))
    keep = tf.cast(tf.abs(x - mu) <= clean_thresh * sigma + 1e-4, tf.float32)
    n = tf.reduce_sum(keep, axis=1, keepdims=True)
    mu2 = tf.reduce_sum(keep * x, axis=1, keepdims=True) / (n + 1.0)
    var2 = tf.reduce_sum(keep * tf.square(x - mu2), axis=1, keepdims=True) / (n + 1.0)
    return (x - mu2) / (tf.sqrt(var2) + 1.0)


def features(
    audio: Any, lowpass: Any | None = None, channel_norm: bool = True, exact_pcen: bool = False
) -> Any:
    """The whole frontend: melspec -> PCEN -> x lowpass envelope -> whitening.

    ``lowpass`` (batch, 160) is the training augmentation's mel envelope (None: none);
    ``channel_norm=False`` is the ablation without whitening.
    """
    import tensorflow as tf

    e = melspec(audio)
    p = pcen(e) if exact_pcen else pcen_fir(e)
    if lowpass is not None:
        p = p * tf.expand_dims(tf.convert_to_tensor(lowpass, tf.float32), 1)
    return whiten(p) if channel_norm else p


def frontend_macs(num_samples: int = WINDOW_SAMPLES) -> dict[str, int]:
    """Approximate multiply-accumulates of the frontend per window (FFT as 2.5 N log2 N / 2)."""
    t = num_frames(num_samples)
    bins = FFT_LENGTH // 2 + 1
    return {
        "stft": int(t * (FRAME_SAMPLES + 1.25 * FFT_LENGTH * np.log2(FFT_LENGTH))),
        "mel": t * bins * MEL_BANDS,
        "pcen_fir": t * PCEN_FIR_TAPS * MEL_BANDS,
    }
