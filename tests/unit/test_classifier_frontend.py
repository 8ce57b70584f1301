"""Classifier frontend (ALGORITHMS.md §2.1-2.3) against computations written from the formulas."""

from __future__ import annotations

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")

from modeltools.classifier import frontend as fe  # noqa: E402

pytestmark = pytest.mark.needs_tf
SR = 22050


def test_constants_follow_the_released_loader() -> None:
    assert fe.HOP_SAMPLES == 220
    assert fe.FRAME_SAMPLES == 1764
    assert fe.FFT_LENGTH == 2048
    assert fe.FRONT_PAD_SAMPLES == 772
    assert fe.num_frames(5 * SR) == 501
    # 505 STFT frames exist with pad_end; the truncation rule keeps (padded // sr) * 100 + 1.
    assert -(-(5 * SR + 772) // 220) == 505


def _htk_mel_matrix() -> np.ndarray:
    """Triangles on the HTK mel scale, written out per band (no library helper)."""
    bins = 1025
    freqs = np.array([k * (SR / 2) / (bins - 1) for k in range(bins)])
    mel = 1127.0 * np.log(1.0 + freqs / 700.0)
    lo, hi = 1127.0 * np.log(1 + 60 / 700), 1127.0 * np.log(1 + 10000 / 700)
    edges = [lo + i * (hi - lo) / 161 for i in range(162)]
    w = np.zeros((bins, 160))
    for b in range(160):
        left, centre, right = edges[b], edges[b + 1], edges[b + 2]
        for k in range(1, bins):  # the DC row stays zero
            if left < mel[k] <= centre:
                w[k, b] = (mel[k] - left) / (centre - left)
            elif centre < mel[k] < right:
                w[k, b] = (right - mel[k]) / (right - centre)
    return w


def _numpy_melspec(x: np.ndarray) -> np.ndarray:
    padded = np.concatenate([np.zeros(772), x, np.zeros(4000)])
    n = np.arange(1764)
    hann = 0.5 - 0.5 * np.cos(2 * np.pi * n / 1764)  # periodic
    frames = [padded[t * 220 : t * 220 + 1764] * hann for t in range(501)]
    mag = np.abs(np.fft.rfft(np.stack(frames), n=2048, axis=1))
    return mag @ _htk_mel_matrix()


def test_melspec_matches_an_independent_stft_and_htk_mel() -> None:
    rng = np.random.default_rng(0)
    t = np.arange(5 * SR) / SR
    a = 0.3 * np.sin(2 * np.pi * (1000 + 300 * t) * t) + 0.05 * rng.standard_normal(t.size)
    b = 0.1 * rng.standard_normal(t.size)
    out = np.asarray(fe.melspec(np.stack([a, b]).astype(np.float32)))
    assert out.shape == (2, 501, 160)
    for got, x in zip(out, (a, b), strict=True):
        ref = _numpy_melspec(x)
        assert np.max(np.abs(got - ref)) <= 1e-3 * np.max(ref)
    # The matrix itself (tf.signal) equals the written-out triangles.
    w = tf.signal.linear_to_mel_weight_matrix(160, 1025, SR, 60.0, 10000.0).numpy()
    np.testing.assert_allclose(w, _htk_mel_matrix(), atol=2e-5)


def _pcen_loop(e: np.ndarray, alpha=0.5, s=0.1, delta=2.0, root=2.0, eps=1e-6) -> np.ndarray:
    out = np.zeros_like(e, dtype=np.float64)
    for b in range(e.shape[0]):
        for c in range(e.shape[2]):
            m = e[b, 0, c]  # the smoother starts at the first frame
            for t in range(e.shape[1]):
                if t > 0:
                    m = (1 - s) * m + s * e[b, t, c]
                out[b, t, c] = (e[b, t, c] / (eps + m) ** alpha + delta) ** (1 / root) - delta ** (
                    1 / root
                )
    return out


def _energies(t: int = 300, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    e = 10.0 ** rng.uniform(-4, 2, size=(2, t, 3))
    e[:, t // 3 : t // 3 + 20] *= 100.0  # a loud event: the smoother has to follow jumps
    return e


def test_pcen_matches_the_direct_recursion_including_the_first_frame() -> None:
    e = _energies(120)
    np.testing.assert_allclose(
        np.asarray(fe.pcen(e.astype(np.float32))), _pcen_loop(e), rtol=2e-5, atol=2e-6
    )
    # Constant input: M_t = E for every t (not a ramp from zero).
    const = np.full((1, 10, 1), 4.0, np.float32)
    expected = np.sqrt(4.0 / np.sqrt(1e-6 + 4.0) + 2.0) - np.sqrt(2.0)
    np.testing.assert_allclose(np.asarray(fe.pcen(const)), expected, rtol=1e-6)


def test_fir_smoother_is_exact_for_the_first_taps_minus_one_frames_in_float64() -> None:
    e = _energies(600)[0, :, 0]
    h = fe.ema_fir_taps(0.1).astype(np.float64)
    assert h.sum() == pytest.approx(1.0, abs=1e-6)
    w = len(h)
    fir = np.convolve(np.concatenate([np.full(w - 1, e[0]), e]), h[::-1], mode="valid")
    m, rec = e[0], []
    for x in e:
        m = 0.9 * m + 0.1 * x if rec else m
        rec.append(m)
    rel = np.abs(fir - np.array(rec)) / np.array(rec)
    assert rel[: w - 1].max() < 1e-5  # float32 taps: exact up to their rounding
    assert rel.max() < 1e-5


def test_convertible_pcen_stays_within_its_parity_bound() -> None:
    rng = np.random.default_rng(3)
    audio = (0.2 * rng.standard_normal((1, 5 * SR))).astype(np.float32)
    mel = fe.melspec(audio)
    cases = [mel, tf.constant(_energies(501).astype(np.float32))]
    for e in cases:
        diff = np.abs(np.asarray(fe.pcen_fir(e)) - np.asarray(fe.pcen(e)))
        assert diff.max() <= fe.PCEN_FIR_MAX_ABS_DIFF


def _whiten_by_hand(x: np.ndarray, thr: float = 1.0) -> np.ndarray:
    out = np.zeros_like(x, dtype=np.float64)
    for b in range(x.shape[0]):
        for c in range(x.shape[2]):
            v = x[b, :, c].astype(np.float64)
            mu = v.mean()
            sigma = np.sqrt(((v - mu) ** 2).mean())  # population std
            keep = [abs(xi - mu) <= thr * sigma + 1e-4 for xi in v]  # both tails
            n = sum(keep)
            mu2 = sum(xi for xi, k in zip(v, keep, strict=True) if k) / (n + 1)
            var2 = sum((xi - mu2) ** 2 for xi, k in zip(v, keep, strict=True) if k) / (n + 1)
            out[b, :, c] = (v - mu2) / (np.sqrt(var2) + 1)
    return out


def test_whitening_follows_the_two_stage_recipe() -> None:
    rng = np.random.default_rng(4)
    x = rng.normal(1.0, 0.3, size=(2, 501, 4))
    x[0, 10, 0] = 9.0  # upper tail
    x[0, 20, 0] = -7.0  # lower tail: dropped too (not only values above the mean)
    got = np.asarray(fe.whiten(x.astype(np.float32)))
    np.testing.assert_allclose(got, _whiten_by_hand(x), rtol=1e-4, atol=1e-5)
    # The one-sided reading (drop only the upper tail) differs on channel 0.
    v = x[0, :, 0]
    mu, sd = v.mean(), v.std()
    keep = v - mu <= sd + 1e-4
    mu2 = v[keep].sum() / (keep.sum() + 1)
    assert (
        abs(
            ((v - mu2) / (np.sqrt(((v[keep] - mu2) ** 2).sum() / (keep.sum() + 1)) + 1))[0]
            - got[0, 0, 0]
        )
        > 1e-4
    )


def test_features_apply_the_lowpass_after_pcen_and_before_whitening() -> None:
    rng = np.random.default_rng(5)
    audio = (0.1 * rng.standard_normal((1, 5 * SR))).astype(np.float32)
    env = np.linspace(1.0, 0.1, 160, dtype=np.float32)[None]
    p = fe.pcen_fir(fe.melspec(audio))
    np.testing.assert_allclose(
        np.asarray(fe.features(audio, env)), np.asarray(fe.whiten(p * env[:, None, :])), atol=1e-6
    )
    np.testing.assert_allclose(
        np.asarray(fe.features(audio, channel_norm=False)), np.asarray(p), atol=1e-6
    )
