"""StreamResampler must equal one-shot resample_poly for any chunking."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.signal import resample_poly

from agent.audio.resample import StreamResampler, resample

RATES = [(44100, 22050), (48000, 22050), (16000, 22050), (22050, 22050), (22050, 16000)]


def _reference(x: np.ndarray, in_hz: int, out_hz: int) -> np.ndarray:
    """scipy's own one-shot result, with its default filter design."""
    if in_hz == out_hz:
        return x.astype(np.float32)
    return resample_poly(x.astype(np.float64), out_hz, in_hz).astype(np.float32)


def _stream(x: np.ndarray, in_hz: int, out_hz: int, sizes: list[int]) -> np.ndarray:
    r = StreamResampler(in_hz, out_hz)
    outs, pos, k = [], 0, 0
    while pos < x.shape[0]:
        size = sizes[k % len(sizes)]
        outs.append(r.process(x[pos : pos + size]))
        pos += size
        k += 1
    outs.append(r.flush())
    return np.concatenate(outs)


@settings(max_examples=60, deadline=None)
@given(
    rates=st.sampled_from(RATES),
    n=st.integers(min_value=1, max_value=6000),
    sizes=st.lists(st.integers(min_value=0, max_value=1500), min_size=1, max_size=12).filter(
        lambda s: any(s)
    ),
    seed=st.integers(min_value=0, max_value=2**16),
)
def test_any_chunking_equals_one_shot(
    rates: tuple[int, int], n: int, sizes: list[int], seed: int
) -> None:
    in_hz, out_hz = rates
    x = np.random.default_rng(seed).uniform(-1, 1, n).astype(np.float32)
    y = _stream(x, in_hz, out_hz, sizes)
    ref = _reference(x, in_hz, out_hz)
    assert y.shape == ref.shape
    assert y.dtype == np.float32
    np.testing.assert_allclose(y, ref, rtol=0, atol=1e-6)


@pytest.mark.parametrize(("in_hz", "out_hz"), RATES)
@pytest.mark.parametrize("n", [1, 2, 319, 320, 321, 44100, 48000 + 7])
def test_output_length_is_ceil(in_hz: int, out_hz: int, n: int) -> None:
    x = np.random.default_rng(n).standard_normal(n).astype(np.float32)
    expected = -(-n * out_hz // in_hz)  # ceil(n * up / down); up/down = out/in reduced
    assert resample(x, in_hz, out_hz).shape[0] == expected
    assert _stream(x, in_hz, out_hz, [1000, 3]).shape[0] == expected


@pytest.mark.parametrize(("in_hz", "out_hz"), RATES)
def test_one_second_blocks_match_whole(in_hz: int, out_hz: int) -> None:
    x = np.random.default_rng(1).standard_normal(3 * in_hz + 11).astype(np.float32) * 0.3
    y = _stream(x, in_hz, out_hz, [in_hz])
    np.testing.assert_allclose(y, _reference(x, in_hz, out_hz), rtol=0, atol=1e-6)


@pytest.mark.parametrize(("in_hz", "out_hz"), [(44100, 22050), (48000, 22050), (16000, 22050)])
def test_tone_frequency_is_preserved(in_hz: int, out_hz: int) -> None:
    f_hz = 1000.0
    t = np.arange(2 * in_hz) / in_hz
    x = (0.5 * np.sin(2 * np.pi * f_hz * t)).astype(np.float32)
    y = _stream(x, in_hz, out_hz, [4410])
    spectrum = np.abs(np.fft.rfft(y * np.hanning(y.shape[0])))
    peak_hz = np.argmax(spectrum) * out_hz / y.shape[0]
    assert abs(peak_hz - f_hz) <= out_hz / y.shape[0]  # within one FFT bin (0.5 Hz)
    # the level survives too (pass band), away from the zero-padded edges
    mid = y[out_hz // 4 : -out_hz // 4]
    assert np.sqrt(np.mean(mid**2)) == pytest.approx(0.5 / np.sqrt(2), rel=0.01)


def test_identity_does_not_copy_float32() -> None:
    x = np.arange(100, dtype=np.float32)
    r = StreamResampler(22050, 22050)
    assert r.process(x) is x
    assert r.flush().shape == (0,)
    assert resample(x, 22050, 22050) is x
    y = r.process(np.arange(4, dtype=np.int16))
    assert y.dtype == np.float32


def test_flush_resets_for_a_new_stream() -> None:
    x = np.random.default_rng(3).standard_normal(5000).astype(np.float32)
    r = StreamResampler(48000, 22050)
    first = np.concatenate([r.process(x), r.flush()])
    second = np.concatenate([r.process(x[:1234]), r.process(x[1234:]), r.flush()])
    np.testing.assert_array_equal(first, second)


def test_holds_back_incomplete_outputs() -> None:
    r = StreamResampler(44100, 22050)
    assert r.process(np.ones(5, dtype=np.float32)).shape[0] == 0  # filter support not complete
    assert r.output_samples == 0
    assert r.flush().shape[0] == 3


def test_invalid_rates() -> None:
    with pytest.raises(ValueError):
        StreamResampler(0, 22050)
