"""The agent's numpy frontend against the TensorFlow definition training uses (no skew)."""

from __future__ import annotations

import numpy as np
import pytest

from agent.models.frontend import FrontendParams, NumpyFrontend, mel_weights, supports

tf = pytest.importorskip("tensorflow")
pytestmark = pytest.mark.needs_tf

from modeltools.classifier import frontend as fe  # noqa: E402

N = fe.WINDOW_SAMPLES


def _audio(seed: int) -> np.ndarray:
    """A bird-like chirp train over pink-ish noise, at a realistic level."""
    rng = np.random.default_rng(seed)
    t = np.arange(N) / 22050
    x = 0.02 * np.cumsum(rng.standard_normal(N)) / np.sqrt(N)
    x += 0.01 * rng.standard_normal(N)
    for start in rng.uniform(0, 4.5, 6):
        seg = (t >= start) & (t < start + 0.3)
        f0 = rng.uniform(2000, 7000)
        x[seg] += 0.2 * np.sin(2 * np.pi * (f0 + 3000 * (t[seg] - start)) * t[seg])
    return x.astype(np.float32)


def test_mel_weights_equal_tensorflow() -> None:
    ours = mel_weights(FrontendParams())
    ref = tf.signal.linear_to_mel_weight_matrix(160, 1025, 22050, 60.0, 10000.0).numpy()
    np.testing.assert_allclose(ours, ref, atol=5e-5)  # TensorFlow computes the mel scale in f32


def test_melspec_and_pcen_match_the_tensorflow_reference() -> None:
    front = NumpyFrontend(FrontendParams(), N)
    x = _audio(0)
    mel = front.melspec(x)
    ref_mel = fe.melspec(x[np.newaxis]).numpy()[0]
    assert mel.shape == ref_mel.shape == (501, 160)
    np.testing.assert_allclose(mel, ref_mel, rtol=1e-4, atol=1e-5 * ref_mel.max())
    # Exact recursion against TensorFlow's exact recursion (tf.scan), same input.
    np.testing.assert_allclose(
        front.pcen(ref_mel), fe.pcen(ref_mel[np.newaxis]).numpy()[0], atol=1e-5
    )


@pytest.mark.parametrize("channel_norm", [True, False])
def test_features_match_the_training_frontend(channel_norm: bool) -> None:
    front = NumpyFrontend(FrontendParams(channel_norm=channel_norm), N)
    for seed in range(3):
        x = _audio(seed)
        ours = front.features(x)
        ref = fe.features(x[np.newaxis], channel_norm=channel_norm).numpy()
        assert ours.shape == ref.shape == (1, 501, 160)
        # FIR (training) vs exact recursion (here) + float32 rounding of the STFT.
        assert np.max(np.abs(ours - ref)) < 2e-3


def test_silence_gives_finite_features() -> None:
    out = NumpyFrontend(FrontendParams(), N).features(np.zeros(N, np.float32))
    assert np.all(np.isfinite(out))


def test_supports_only_its_own_kind() -> None:
    assert supports({"kind": "mel-pcen-whiten (frontend.tflite, float32)"})
    assert not supports({"kind": "leaf"}) and not supports(None) and not supports({})


def test_pcen_filter_is_the_exact_recursion() -> None:
    """lfilter with initial state (1 - s) E_0 equals M_t = (1 - s) M_{t-1} + s E_t, M_0 = E_0."""
    p = FrontendParams()
    front = NumpyFrontend(p, 22050)
    energy = np.random.default_rng(3).random((40, 7)).astype(np.float32) * 5
    s = p.pcen_smooth_coef
    m = energy[0].astype(np.float64)
    smooth = [m]
    for e in energy[1:]:
        m = (1 - s) * m + s * e
        smooth.append(m)
    gain = (p.pcen_floor + np.array(smooth)) ** p.pcen_alpha
    r = 1 / p.pcen_root
    want = (energy / gain + p.pcen_delta) ** r - p.pcen_delta**r
    np.testing.assert_allclose(front.pcen(energy), want, rtol=1e-5, atol=1e-6)


def test_batch_equals_one_channel_at_a_time() -> None:
    front = NumpyFrontend(FrontendParams(), 22050)
    x = (np.random.default_rng(4).standard_normal((3, 22050)) * [[0.3], [0.01], [0.0]]).astype(
        np.float32
    )
    batch = front.features_batch(x)
    assert batch.shape == (3, *front.output_shape[1:])
    for k in range(3):
        np.testing.assert_array_equal(batch[k : k + 1], front.features(x[k]))
    assert not np.allclose(batch[0], batch[1])  # the channels really are different
    with pytest.raises(ValueError, match="channels, samples"):
        front.features_batch(x[0])
